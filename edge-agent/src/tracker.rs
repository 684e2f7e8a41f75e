//! Multi-object tracking by box overlap, ByteTrack-style.
//!
//! Each update associates the frame's detections with live tracks in two
//! rounds: confident detections first, then low-score ones (often the same
//! object partly hidden) against the tracks still unmatched. Matching is
//! greedy on IoU between a detection and the track's box predicted forward
//! with its smoothed velocity, same class only. Unmatched confident
//! detections start tentative tracks, confirmed after `min_hits` frames; a
//! track not seen for `max_age` (wall time, because the motion gate skips
//! frames) ends.
//!
//! Track ids count up from 1 per camera and are never reused while the
//! agent runs.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::detect::ObjectBox;
pub use edgeqi_shared::geometry::iou;

/// `[tracker]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerConfig {
    /// Minimum IoU between a track's predicted box and a detection.
    pub iou_threshold: f32,
    /// Detections at or above this score start tracks and match first.
    pub high_score: f32,
    /// Detections below this are ignored altogether.
    pub low_score: f32,
    /// Frames a new track must be seen in before it is reported.
    pub min_hits: u32,
    /// A track unseen this long has left.
    pub max_age: Duration,
}

pub const fn default_iou_threshold() -> f32 {
    0.3
}
pub const fn default_high_score() -> f32 {
    0.5
}
pub const fn default_low_score() -> f32 {
    0.1
}
pub const fn default_min_hits() -> u32 {
    2
}
pub const fn default_max_age() -> Duration {
    Duration::from_secs(3)
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            iou_threshold: default_iou_threshold(),
            high_score: default_high_score(),
            low_score: default_low_score(),
            min_hits: default_min_hits(),
            max_age: default_max_age(),
        }
    }
}

/// One tracked object.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: u64,
    pub class_id: Option<u32>,
    pub label: String,
    /// Last matched box, source-frame pixels.
    pub bbox: [f32; 4],
    pub score: f32,
    pub hits: u32,
    pub confirmed: bool,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Box change per second, smoothed.
    velocity: [f32; 4],
}

impl Track {
    /// Where the track should be at `at`, cut to the camera's `view` when
    /// known: detections never reach past the picture's edge, so a track
    /// leaving it (walking off, or pushed off by a pan) is compared by the
    /// part that can still be seen, and one wholly outside matches nothing.
    fn predicted(&self, at: DateTime<Utc>, view: Option<[f32; 2]>) -> [f32; 4] {
        let dt = seconds(self.last_seen, at).min(1.0);
        let mut b = self.bbox;
        for (c, v) in b.iter_mut().zip(self.velocity) {
            *c += v * dt;
        }
        if let Some([w, h]) = view {
            for (i, c) in b.iter_mut().enumerate() {
                *c = c.clamp(0.0, if i % 2 == 0 { w } else { h });
            }
        }
        b
    }
}

/// What changed in one update.
#[derive(Debug, Default, PartialEq)]
pub struct TrackUpdate {
    /// For each input detection, the confirmed track it belongs to.
    pub assigned: Vec<Option<u64>>,
    /// Tracks confirmed in this update.
    pub appeared: Vec<u64>,
    /// Tracks that ended in this update (not seen for `max_age`), confirmed ones only.
    pub left: Vec<Track>,
}

/// See the module doc.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
    /// The camera picture's size in source pixels, once known.
    view: Option<[f32; 2]>,
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f32 {
    (to - from).num_microseconds().unwrap_or(0).max(0) as f32 / 1e6
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            tracks: Vec::new(),
            next_id: 1,
            view: None,
        }
    }

    /// Live tracks, confirmed or not.
    #[cfg(test)]
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Whether any track is live, tentative ones included: the motion gate
    /// then keeps refreshing them, so an object that was already standing
    /// still when the camera started (a parked bus) is confirmed by the
    /// refreshes instead of waiting for something to move.
    pub fn is_tracking(&self) -> bool {
        !self.tracks.is_empty()
    }

    /// The camera moved the picture by `(dx, dy)` source pixels (a pan the
    /// motion gate measured): every track's box moves along, so the next
    /// detections still overlap their tracks. The gate only reports a pan
    /// when nothing moved within the picture, so the tracks' own velocities
    /// are zero now; keeping the old ones (which may hold the pan's start)
    /// would move the boxes twice.
    pub fn shift(&mut self, dx: f32, dy: f32) {
        for t in &mut self.tracks {
            t.bbox[0] += dx;
            t.bbox[1] += dy;
            t.bbox[2] += dx;
            t.bbox[3] += dy;
            t.velocity = [0.0; 4];
        }
    }

    /// The camera picture is `width` × `height` source pixels (see
    /// [`Track::predicted`]).
    pub fn set_view(&mut self, width: f32, height: f32) {
        self.view = (width > 0.0 && height > 0.0).then_some([width, height]);
    }

    pub fn get(&self, id: u64) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Associates `detections` seen at `now` with the tracks.
    pub fn update(&mut self, detections: &[ObjectBox], now: DateTime<Utc>) -> TrackUpdate {
        let mut out = TrackUpdate {
            assigned: vec![None; detections.len()],
            ..TrackUpdate::default()
        };
        let mut det_track: Vec<Option<usize>> = vec![None; detections.len()];
        let mut track_taken = vec![false; self.tracks.len()];
        let predicted: Vec<[f32; 4]> = self
            .tracks
            .iter()
            .map(|t| t.predicted(now, self.view))
            .collect();

        let high: Vec<usize> = (0..detections.len())
            .filter(|&i| detections[i].score >= self.config.high_score)
            .collect();
        let low: Vec<usize> = (0..detections.len())
            .filter(|&i| {
                let s = detections[i].score;
                s >= self.config.low_score && s < self.config.high_score
            })
            .collect();
        for round in [&high, &low] {
            let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
            for &d in round.iter() {
                for (t, track) in self.tracks.iter().enumerate() {
                    if track_taken[t] || track.label != detections[d].label {
                        continue;
                    }
                    let o = iou(&predicted[t], &detections[d].bbox);
                    if o >= self.config.iou_threshold {
                        pairs.push((o, d, t));
                    }
                }
            }
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (_, d, t) in pairs {
                if det_track[d].is_none() && !track_taken[t] {
                    det_track[d] = Some(t);
                    track_taken[t] = true;
                }
            }
        }

        for (d, t) in det_track.iter().enumerate() {
            let Some(t) = *t else { continue };
            let det = &detections[d];
            let track = &mut self.tracks[t];
            let dt = seconds(track.last_seen, now);
            if dt > 0.0 {
                for k in 0..4 {
                    let v = (det.bbox[k] - track.bbox[k]) / dt;
                    track.velocity[k] = if track.hits == 1 {
                        v
                    } else {
                        0.5 * track.velocity[k] + 0.5 * v
                    };
                }
            }
            track.bbox = det.bbox;
            track.score = det.score;
            track.class_id = det.class_id;
            track.last_seen = now;
            track.hits += 1;
            if !track.confirmed && track.hits >= self.config.min_hits {
                track.confirmed = true;
                out.appeared.push(track.id);
            }
            if track.confirmed {
                out.assigned[d] = Some(track.id);
            }
        }

        for &d in &high {
            if det_track[d].is_some() {
                continue;
            }
            let det = &detections[d];
            let confirmed = self.config.min_hits <= 1;
            let id = self.next_id;
            self.next_id += 1;
            self.tracks.push(Track {
                id,
                class_id: det.class_id,
                label: det.label.clone(),
                bbox: det.bbox,
                score: det.score,
                hits: 1,
                confirmed,
                first_seen: now,
                last_seen: now,
                velocity: [0.0; 4],
            });
            if confirmed {
                out.appeared.push(id);
                out.assigned[d] = Some(id);
            }
        }

        out.left = self.expire(now);
        out
    }

    /// Ends tracks unseen for `max_age`; returns the confirmed ones.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Vec<Track> {
        let max_age = self.config.max_age.as_secs_f32();
        let mut left = Vec::new();
        self.tracks.retain(|t| {
            if seconds(t.last_seen, now) > max_age {
                if t.confirmed {
                    left.push(t.clone());
                }
                false
            } else {
                true
            }
        });
        left
    }

    /// Ends every track (end of stream or shutdown); returns the confirmed ones.
    pub fn finish(&mut self) -> Vec<Track> {
        std::mem::take(&mut self.tracks)
            .into_iter()
            .filter(|t| t.confirmed)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms)
    }

    fn obj(label: &str, x: f32, y: f32, score: f32) -> ObjectBox {
        ObjectBox {
            class_id: None,
            label: label.into(),
            score,
            bbox: [x, y, x + 40.0, y + 80.0],
        }
    }

    #[test]
    fn iou_basics() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
        assert!((iou(&a, &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn two_walkers_keep_their_ids_and_leave() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let mut ids = Vec::new();
        for f in 0..20 {
            let x = f as f32 * 6.0;
            let dets = [
                obj("person", 10.0 + x, 100.0, 0.9),
                obj("person", 400.0 - x, 120.0, 0.8),
            ];
            let u = tr.update(&dets, at(f * 100));
            if f == 0 {
                assert_eq!(u.assigned, [None, None], "tentative at first sight");
            }
            if f == 1 {
                assert_eq!(u.appeared.len(), 2);
            }
            if f >= 1 {
                ids.push((u.assigned[0].expect("a"), u.assigned[1].expect("b")));
            }
        }
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "stable ids: {ids:?}");
        assert_ne!(ids[0].0, ids[0].1);
        // Gone: both leave once max_age passes.
        assert!(tr.update(&[], at(2000 + 2500)).left.is_empty());
        let left = tr.update(&[], at(2000 + 3500)).left;
        assert_eq!(left.len(), 2);
        assert!(!tr.is_tracking());
    }

    #[test]
    fn low_score_detections_keep_a_track_alive_but_start_none() {
        let mut tr = Tracker::new(TrackerConfig::default());
        tr.update(&[obj("car", 0.0, 0.0, 0.9)], at(0));
        let id = tr.update(&[obj("car", 2.0, 0.0, 0.9)], at(100)).assigned[0].expect("confirmed");
        // Partly hidden: a weak detection still belongs to the track.
        let u = tr.update(&[obj("car", 4.0, 0.0, 0.2)], at(200));
        assert_eq!(u.assigned, [Some(id)]);
        // A weak detection elsewhere starts nothing.
        let u = tr.update(&[obj("car", 500.0, 0.0, 0.2)], at(300));
        assert_eq!(u.assigned, [None]);
        assert_eq!(tr.tracks().len(), 1);
        // Other classes never match.
        let u = tr.update(&[obj("person", 6.0, 0.0, 0.9)], at(400));
        assert_eq!(u.assigned, [None]);
        assert_eq!(tr.tracks().len(), 2);
    }

    #[test]
    fn tracks_follow_a_camera_pan() {
        let mut tr = Tracker::new(TrackerConfig::default());
        tr.update(&[obj("bus", 0.0, 0.0, 0.9)], at(0));
        // The pan's first frame is a jump the gate cannot explain: the
        // detector sees the bus 30 px lower, which the track takes for speed.
        let id = tr.update(&[obj("bus", 0.0, 30.0, 0.9)], at(100)).assigned[0].expect("confirmed");
        // The view moves on 60 px in frames the detector skips: without the
        // shift the box (80 px tall) would hardly overlap its track, and with
        // the old speed on top it would overshoot.
        for _ in 0..6 {
            tr.shift(0.0, 10.0);
        }
        let u = tr.update(&[obj("bus", 0.0, 90.0, 0.9)], at(800));
        assert_eq!(u.assigned, [Some(id)]);
    }

    #[test]
    fn a_track_pushed_off_the_picture_by_a_pan_is_found_when_it_returns() {
        // Returns whether the person kept its id.
        let run = |view: Option<[f32; 2]>| {
            let mut tr = Tracker::new(TrackerConfig::default());
            if let Some([w, h]) = view {
                tr.set_view(w, h);
            }
            // A person standing at the bottom edge of a 640×360 picture.
            tr.update(&[obj("person", 0.0, 280.0, 0.9)], at(0));
            let id = tr
                .update(&[obj("person", 0.0, 280.0, 0.9)], at(100))
                .assigned[0];
            // A preset jump pushes the content 124 px down, off the picture:
            // nothing there to match, and the track waits.
            tr.shift(0.0, 124.0);
            assert!(tr.update(&[], at(200)).left.is_empty());
            // The tilt brings it back 4 px a frame; the track box is at
            // y 340..420, and the detector sees the 20 rows still inside.
            for _ in 0..16 {
                tr.shift(0.0, -4.0);
            }
            let visible = ObjectBox {
                bbox: [0.0, 340.0, 40.0, 360.0],
                ..obj("person", 0.0, 0.0, 0.7)
            };
            let u = tr.update(&[visible], at(1800));
            id.is_some() && u.assigned == [id]
        };
        assert!(
            run(Some([640.0, 360.0])),
            "cut to the view, the track matches"
        );
        // Uncut, the prediction overlaps the visible part by 20/80 < 0.3.
        assert!(!run(None));
    }

    #[test]
    fn fast_mover_is_followed_through_prediction() {
        let mut tr = Tracker::new(TrackerConfig::default());
        // 12 px, then 24 px per frame on a 40 px wide box: IoU with the
        // last box alone would be 0.25, under the threshold; prediction keeps it.
        let mut ids = Vec::new();
        for f in 0..10i64 {
            let x = if f == 0 {
                0.0
            } else {
                12.0 + (f - 1) as f32 * 24.0
            };
            let u = tr.update(&[obj("car", x, 0.0, 0.9)], at(f * 100));
            ids.push(u.assigned[0]);
        }
        let first = ids[1].expect("confirmed");
        assert!(ids[1..].iter().all(|i| *i == Some(first)), "{ids:?}");
    }
}

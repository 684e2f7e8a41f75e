//! Zones (polygons) and counting lines of one camera, and what tracked
//! objects do with them.
//!
//! Geometry is in normalised frame coordinates (`0..1` on both axes, `y`
//! down), so a config survives a resolution change. An object's position is
//! its box's bottom centre, where it touches the ground.
//!
//! Line crossings use hysteresis: a track's side of a line only counts once
//! it is at least `margin` away from it, and a crossing is a change between
//! two such confirmed sides along a path that passes through the segment.
//! A box jittering on the line therefore never counts, and crossing back
//! for real counts in the other direction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use edgeqi_shared::camera::{LineSpec, ZoneSpec};
use edgeqi_shared::protocol::line_direction;

/// `[x, y]` in normalised frame coordinates.
pub type Point = [f32; 2];

/// A named polygon.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub id: String,
    pub polygon: Vec<Point>,
}

impl From<&ZoneSpec> for Zone {
    fn from(z: &ZoneSpec) -> Self {
        Self {
            id: z.id.clone(),
            polygon: z
                .polygon
                .iter()
                .map(|p| [p[0] as f32, p[1] as f32])
                .collect(),
        }
    }
}

impl Zone {
    /// Even-odd rule; points on an edge may go either way.
    pub fn contains(&self, p: Point) -> bool {
        polygon_contains(&self.polygon, p)
    }
}

/// Even-odd point-in-polygon test.
pub fn polygon_contains(polygon: &[Point], [x, y]: Point) -> bool {
    let mut inside = false;
    let n = polygon.len();
    for i in 0..n {
        let [xi, yi] = polygon[i];
        let [xj, yj] = polygon[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

/// A named counting line from `from` to `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub id: String,
    pub from: Point,
    pub to: Point,
}

impl From<&LineSpec> for Line {
    fn from(l: &LineSpec) -> Self {
        Self {
            id: l.id.clone(),
            from: [l.from[0] as f32, l.from[1] as f32],
            to: [l.to[0] as f32, l.to[1] as f32],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

impl Line {
    /// Signed distance of `p` from the infinite line; positive on the right
    /// when looking from `from` to `to` (with `y` pointing down).
    fn signed_distance(&self, [px, py]: Point) -> f32 {
        let [ax, ay] = self.from;
        let [bx, by] = self.to;
        let (dx, dy) = (bx - ax, by - ay);
        let len = (dx * dx + dy * dy).sqrt().max(f32::EPSILON);
        (dx * (py - ay) - dy * (px - ax)) / len
    }

    /// Whether the path `p -> q` passes through the segment (not just the
    /// infinite line through it).
    fn crossed_by(&self, p: Point, q: Point) -> bool {
        let d1 = self.signed_distance(p);
        let d2 = self.signed_distance(q);
        if d1 == d2 {
            return false;
        }
        let t = d1 / (d1 - d2);
        let x = [p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])];
        let [ax, ay] = self.from;
        let [bx, by] = self.to;
        let (dx, dy) = (bx - ax, by - ay);
        let along = ((x[0] - ax) * dx + (x[1] - ay) * dy) / (dx * dx + dy * dy).max(f32::EPSILON);
        (0.0..=1.0).contains(&along)
    }
}

/// A zone or line event for one track.
#[derive(Debug, Clone, PartialEq)]
pub enum GeoEvent {
    ZoneEntered {
        zone: String,
    },
    ZoneLeft {
        zone: String,
        dwell_s: f64,
    },
    LineCrossed {
        line: String,
        direction: &'static str,
    },
}

#[derive(Debug, Default)]
struct TrackGeo {
    /// Zones the track is in, and since when.
    zones: BTreeMap<String, DateTime<Utc>>,
    /// Per line index: the last confirmed side and where the track was then.
    sides: HashMap<usize, (Side, Point)>,
}

/// Zones and lines of one camera with the per-track state and line counts.
#[derive(Debug)]
pub struct ZoneLines {
    zones: Vec<Zone>,
    lines: Vec<Line>,
    margin: f32,
    tracks: HashMap<u64, TrackGeo>,
    /// `(line, label, direction)` → crossings.
    counts: BTreeMap<(String, String, &'static str), u64>,
    /// Keys of `counts` changed since [`ZoneLines::take_changed_counts`].
    changed: BTreeSet<(String, String, &'static str)>,
}

/// Default hysteresis margin: 1% of the frame.
pub const DEFAULT_LINE_MARGIN: f32 = 0.01;

impl ZoneLines {
    pub fn new(zones: Vec<Zone>, lines: Vec<Line>, margin: f32) -> Self {
        Self {
            zones,
            lines,
            margin,
            tracks: HashMap::new(),
            counts: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty() && self.lines.is_empty()
    }

    /// Swaps in a new zone and line set while objects are being tracked
    /// (a remote config applied at runtime), keeping what still holds:
    ///
    /// - a track stays in a zone whose id remains (if the polygon moved, its
    ///   next position decides, as for any move); zones that are gone are
    ///   left now, and those exits are returned with their dwell;
    /// - a track's confirmed side of a line is kept when a line with the same
    ///   id and the same end points remains, and forgotten otherwise (the
    ///   next position confirms a side afresh, so no crossing is invented);
    /// - line totals are kept for line ids that remain (they count since the
    ///   agent started) and dropped for lines that are gone.
    pub fn replace(
        &mut self,
        zones: Vec<Zone>,
        lines: Vec<Line>,
        ts: DateTime<Utc>,
    ) -> Vec<(u64, GeoEvent)> {
        let mut left = Vec::new();
        // Old line index -> new index, for lines that did not move.
        let kept: HashMap<usize, usize> = self
            .lines
            .iter()
            .enumerate()
            .filter_map(|(i, old)| lines.iter().position(|new| new == old).map(|j| (i, j)))
            .collect();
        let mut track_ids: Vec<u64> = self.tracks.keys().copied().collect();
        track_ids.sort_unstable();
        for id in track_ids {
            let Some(geo) = self.tracks.get_mut(&id) else {
                continue;
            };
            let gone: Vec<String> = geo
                .zones
                .keys()
                .filter(|z| !zones.iter().any(|n| &n.id == *z))
                .cloned()
                .collect();
            for zone in gone {
                if let Some(since) = geo.zones.remove(&zone) {
                    left.push((
                        id,
                        GeoEvent::ZoneLeft {
                            zone,
                            dwell_s: dwell(since, ts),
                        },
                    ));
                }
            }
            geo.sides = std::mem::take(&mut geo.sides)
                .into_iter()
                .filter_map(|(i, side)| kept.get(&i).map(|j| (*j, side)))
                .collect();
        }
        let remains = |key: &(String, String, &'static str)| lines.iter().any(|l| l.id == key.0);
        self.counts.retain(|k, _| remains(k));
        self.changed.retain(|k| remains(k));
        self.zones = zones;
        self.lines = lines;
        left
    }

    /// The first zone (config order) holding `p`.
    pub fn zone_of(&self, p: Point) -> Option<&str> {
        self.zones
            .iter()
            .find(|z| z.contains(p))
            .map(|z| z.id.as_str())
    }

    /// Moves track `track_id` (class `label`) to `p` at `ts`; returns what happened.
    pub fn update(
        &mut self,
        track_id: u64,
        label: &str,
        p: Point,
        ts: DateTime<Utc>,
    ) -> Vec<GeoEvent> {
        let mut events = Vec::new();
        let geo = self.tracks.entry(track_id).or_default();
        for zone in &self.zones {
            let inside = zone.contains(p);
            let was = geo.zones.contains_key(&zone.id);
            if inside && !was {
                geo.zones.insert(zone.id.clone(), ts);
                events.push(GeoEvent::ZoneEntered {
                    zone: zone.id.clone(),
                });
            } else if !inside && was {
                if let Some(since) = geo.zones.remove(&zone.id) {
                    events.push(GeoEvent::ZoneLeft {
                        zone: zone.id.clone(),
                        dwell_s: dwell(since, ts),
                    });
                }
            }
        }
        for (i, line) in self.lines.iter().enumerate() {
            let d = line.signed_distance(p);
            if d.abs() < self.margin {
                continue; // too close to tell: keep the last confirmed side
            }
            let side = if d > 0.0 { Side::Right } else { Side::Left };
            match geo.sides.insert(i, (side, p)) {
                Some((prev, prev_p)) if prev != side && line.crossed_by(prev_p, p) => {
                    let direction = match side {
                        Side::Right => line_direction::LEFT_TO_RIGHT,
                        Side::Left => line_direction::RIGHT_TO_LEFT,
                    };
                    let key = (line.id.clone(), label.to_owned(), direction);
                    *self.counts.entry(key.clone()).or_insert(0) += 1;
                    self.changed.insert(key);
                    events.push(GeoEvent::LineCrossed {
                        line: line.id.clone(),
                        direction,
                    });
                }
                _ => {}
            }
        }
        events
    }

    /// The track ended: it leaves every zone it was in.
    pub fn remove(&mut self, track_id: u64, ts: DateTime<Utc>) -> Vec<GeoEvent> {
        let Some(geo) = self.tracks.remove(&track_id) else {
            return Vec::new();
        };
        geo.zones
            .into_iter()
            .map(|(zone, since)| GeoEvent::ZoneLeft {
                zone,
                dwell_s: dwell(since, ts),
            })
            .collect()
    }

    /// Crossings of `line` by `label` in `direction` so far.
    #[cfg(test)]
    pub fn count(&self, line: &str, label: &str, direction: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((l, c, d), _)| l == line && c == label && *d == direction)
            .map(|(_, n)| *n)
            .sum()
    }

    /// `(line, label, direction, total)` for every count that changed since the last call.
    pub fn take_changed_counts(&mut self) -> Vec<(String, String, &'static str, u64)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|k| {
                let n = self.counts.get(&k).copied().unwrap_or(0);
                (k.0, k.1, k.2, n)
            })
            .collect()
    }
}

fn dwell(since: DateTime<Utc>, until: DateTime<Utc>) -> f64 {
    (until - since).num_milliseconds().max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::milliseconds(ms)
    }

    /// A horizontal line across the middle, from left to right: "right" of
    /// it (looking along it) is below it, since y points down.
    fn mid_line() -> ZoneLines {
        ZoneLines::new(
            vec![],
            vec![Line {
                id: "mid".into(),
                from: [0.1, 0.5],
                to: [0.9, 0.5],
            }],
            DEFAULT_LINE_MARGIN,
        )
    }

    fn walk(z: &mut ZoneLines, id: u64, label: &str, ys: &[f32]) -> Vec<GeoEvent> {
        ys.iter()
            .enumerate()
            .flat_map(|(i, y)| z.update(id, label, [0.5, *y], t(i as i64 * 100)))
            .collect()
    }

    #[test]
    fn crossing_in_both_directions_counts_per_class_and_direction() {
        let mut z = mid_line();
        let down = walk(&mut z, 1, "car", &[0.2, 0.3, 0.45, 0.55, 0.7]);
        assert_eq!(
            down,
            [GeoEvent::LineCrossed {
                line: "mid".into(),
                direction: line_direction::LEFT_TO_RIGHT
            }]
        );
        let up = walk(&mut z, 2, "car", &[0.8, 0.6, 0.4, 0.1]);
        assert_eq!(
            up,
            [GeoEvent::LineCrossed {
                line: "mid".into(),
                direction: line_direction::RIGHT_TO_LEFT
            }]
        );
        walk(&mut z, 3, "person", &[0.1, 0.9]);
        assert_eq!(z.count("mid", "car", line_direction::LEFT_TO_RIGHT), 1);
        assert_eq!(z.count("mid", "car", line_direction::RIGHT_TO_LEFT), 1);
        assert_eq!(z.count("mid", "person", line_direction::LEFT_TO_RIGHT), 1);
        let changed = z.take_changed_counts();
        assert_eq!(changed.len(), 3);
        assert!(z.take_changed_counts().is_empty(), "reported once");
    }

    #[test]
    fn jitter_at_the_line_counts_once_or_not_at_all() {
        let mut z = mid_line();
        // Wobbles across the line within the margin: never confirmed on the other side.
        let ev = walk(
            &mut z,
            1,
            "car",
            &[0.3, 0.495, 0.505, 0.497, 0.503, 0.499, 0.3],
        );
        assert!(ev.is_empty(), "{ev:?}");
        // Crosses, then jitters around the line on the far side: one crossing.
        let ev = walk(
            &mut z,
            2,
            "car",
            &[0.3, 0.52, 0.505, 0.495, 0.503, 0.52, 0.6],
        );
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(z.count("mid", "car", line_direction::LEFT_TO_RIGHT), 1);
        assert_eq!(z.count("mid", "car", line_direction::RIGHT_TO_LEFT), 0);
    }

    #[test]
    fn passing_beside_the_segment_is_not_a_crossing() {
        let mut z = mid_line();
        let ev: Vec<_> = [0.3f32, 0.7]
            .iter()
            .enumerate()
            .flat_map(|(i, y)| z.update(1, "car", [0.95, *y], t(i as i64)))
            .collect();
        assert!(ev.is_empty(), "x=0.95 is past the end of the line: {ev:?}");
    }

    #[test]
    fn replacing_keeps_what_still_holds() {
        let mut z = ZoneLines::new(
            vec![
                Zone {
                    id: "top".into(),
                    polygon: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 0.4], [0.0, 0.4]],
                },
                Zone {
                    id: "all".into(),
                    polygon: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
                },
            ],
            vec![Line {
                id: "mid".into(),
                from: [0.1, 0.5],
                to: [0.9, 0.5],
            }],
            DEFAULT_LINE_MARGIN,
        );
        walk(&mut z, 1, "car", &[0.2, 0.3]);
        walk(&mut z, 2, "car", &[0.3, 0.7]); // crossed once already
        assert_eq!(z.count("mid", "car", line_direction::LEFT_TO_RIGHT), 1);
        // "top" goes away, "all" stays; "mid" stays as it was, "low" is new.
        let left = z.replace(
            vec![Zone {
                id: "all".into(),
                polygon: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
            }],
            vec![
                Line {
                    id: "low".into(),
                    from: [0.1, 0.8],
                    to: [0.9, 0.8],
                },
                Line {
                    id: "mid".into(),
                    from: [0.1, 0.5],
                    to: [0.9, 0.5],
                },
            ],
            t(1000),
        );
        assert_eq!(
            left,
            [(
                1,
                GeoEvent::ZoneLeft {
                    zone: "top".into(),
                    dwell_s: 1.0
                }
            )]
        );
        assert_eq!(
            z.count("mid", "car", line_direction::LEFT_TO_RIGHT),
            1,
            "totals of remaining lines are kept"
        );
        // Track 1 was confirmed above "mid" before the swap: crossing it now
        // counts (its side survived the re-indexing), and no zone is re-entered.
        let ev = z.update(1, "car", [0.5, 0.6], t(2000));
        assert_eq!(
            ev,
            [GeoEvent::LineCrossed {
                line: "mid".into(),
                direction: line_direction::LEFT_TO_RIGHT
            }]
        );
        // A moved line forgets sides: its first sighting on either side is no crossing.
        z.replace(
            vec![],
            vec![Line {
                id: "mid".into(),
                from: [0.1, 0.65],
                to: [0.9, 0.65],
            }],
            t(3000),
        );
        assert!(z.update(1, "car", [0.5, 0.7], t(4000)).is_empty());
        assert!(z.take_changed_counts().iter().all(|c| c.0 == "mid"));
    }

    #[test]
    fn zones_enter_leave_and_dwell() {
        let mut z = ZoneLines::new(
            vec![Zone {
                id: "crossing".into(),
                polygon: vec![[0.2, 0.2], [0.6, 0.2], [0.6, 0.6], [0.2, 0.6]],
            }],
            vec![],
            DEFAULT_LINE_MARGIN,
        );
        assert_eq!(z.zone_of([0.4, 0.4]), Some("crossing"));
        assert_eq!(z.zone_of([0.7, 0.4]), None);
        assert!(z.update(1, "person", [0.1, 0.4], t(0)).is_empty());
        assert_eq!(
            z.update(1, "person", [0.3, 0.4], t(1000)),
            [GeoEvent::ZoneEntered {
                zone: "crossing".into()
            }]
        );
        assert!(z.update(1, "person", [0.4, 0.4], t(2000)).is_empty());
        assert_eq!(
            z.update(1, "person", [0.8, 0.4], t(3500)),
            [GeoEvent::ZoneLeft {
                zone: "crossing".into(),
                dwell_s: 2.5
            }]
        );
        // A track that ends inside a zone leaves it.
        z.update(2, "person", [0.3, 0.3], t(0));
        assert_eq!(
            z.remove(2, t(4000)),
            [GeoEvent::ZoneLeft {
                zone: "crossing".into(),
                dwell_s: 4.0
            }]
        );
        assert!(z.remove(2, t(5000)).is_empty());
    }
}

//! Snapshots: the best look at each tracked object.
//!
//! While a track lives, its highest-scoring detection's crop is kept (a JPEG,
//! a few KiB, encoded when the score improves, with some padding around the
//! box); when the track ends the crop becomes a [`Snapshot`] payload tied to
//! the track's `left` event. The full frame is kept too when configured.

use std::collections::HashMap;
use std::io::Cursor;

use base64::Engine;
use chrono::{DateTime, Utc};
use edgeqi_shared::protocol::Snapshot;
use edgeqi_shared::PROTOCOL_VERSION;
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder};

use crate::frame::Frame;

/// `[snapshots]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotConfig {
    pub enabled: bool,
    /// Also send the whole frame the best crop came from.
    pub full_frame: bool,
    pub jpeg_quality: u8,
    /// Crops are scaled down so their longer side is at most this.
    pub max_side: u32,
}

pub const fn default_snapshots_enabled() -> bool {
    true
}
pub const fn default_snapshot_quality() -> u8 {
    80
}
pub const fn default_snapshot_max_side() -> u32 {
    320
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: default_snapshots_enabled(),
            full_frame: false,
            jpeg_quality: default_snapshot_quality(),
            max_side: default_snapshot_max_side(),
        }
    }
}

#[derive(Debug)]
struct Best {
    score: f32,
    ts: DateTime<Utc>,
    bbox: [f32; 4],
    crop: Vec<u8>,
    frame: Option<Vec<u8>>,
}

/// The best crop per live track of one camera.
#[derive(Debug)]
pub struct SnapshotKeeper {
    config: SnapshotConfig,
    best: HashMap<u64, Best>,
}

/// Everything a snapshot payload needs besides the pictures.
#[derive(Debug)]
pub struct SnapshotMeta<'a> {
    pub node_id: &'a str,
    pub camera_id: &'a str,
    pub track_id: u64,
    pub track_key: &'a str,
    pub event_id: &'a str,
    pub class_id: Option<u32>,
    pub label: &'a str,
}

impl SnapshotKeeper {
    pub fn new(config: SnapshotConfig) -> Self {
        Self {
            config,
            best: HashMap::new(),
        }
    }

    /// Offers track `track_id`'s detection in `frame`; keeps it if it is the best so far.
    pub fn offer(&mut self, track_id: u64, score: f32, bbox: [f32; 4], frame: &Frame) {
        if !self.config.enabled || self.best.get(&track_id).is_some_and(|b| b.score >= score) {
            return;
        }
        let Some(crop) = crop_jpeg(frame, bbox, self.config.max_side, self.config.jpeg_quality)
        else {
            return;
        };
        let full = if self.config.full_frame {
            encode_jpeg(
                &frame.rgb,
                frame.width,
                frame.height,
                self.config.jpeg_quality,
            )
        } else {
            None
        };
        self.best.insert(
            track_id,
            Best {
                score,
                ts: frame.ts,
                bbox,
                crop,
                frame: full,
            },
        );
    }

    /// The track ended: its snapshot, if any crop was kept.
    pub fn finish(&mut self, meta: SnapshotMeta<'_>) -> Option<Snapshot> {
        let best = self.best.remove(&meta.track_id)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Some(Snapshot {
            v: PROTOCOL_VERSION,
            node_id: meta.node_id.to_owned(),
            camera_id: meta.camera_id.to_owned(),
            track_id: meta.track_id,
            track_key: meta.track_key.to_owned(),
            event_id: meta.event_id.to_owned(),
            ts: best.ts,
            class_id: meta.class_id,
            label: meta.label.to_owned(),
            score: best.score,
            bbox: best.bbox,
            content_type: "image/jpeg".into(),
            jpeg_b64: b64.encode(&best.crop),
            frame_jpeg_b64: best.frame.map(|f| b64.encode(f)),
        })
    }
}

fn encode_jpeg(rgb: &[u8], w: u32, h: u32, quality: u8) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut out), quality.clamp(1, 100))
        .write_image(rgb, w, h, ExtendedColorType::Rgb8)
        .ok()?;
    Some(out)
}

/// The box plus 10% padding, clamped to the frame, scaled so its longer
/// side is at most `max_side`, as JPEG.
pub fn crop_jpeg(frame: &Frame, bbox: [f32; 4], max_side: u32, quality: u8) -> Option<Vec<u8>> {
    let (fw, fh) = (frame.width as f32, frame.height as f32);
    let pad_x = (bbox[2] - bbox[0]) * 0.1;
    let pad_y = (bbox[3] - bbox[1]) * 0.1;
    let x1 = (bbox[0] - pad_x).clamp(0.0, fw) as u32;
    let y1 = (bbox[1] - pad_y).clamp(0.0, fh) as u32;
    let x2 = (bbox[2] + pad_x).clamp(0.0, fw) as u32;
    let y2 = (bbox[3] + pad_y).clamp(0.0, fh) as u32;
    if x2 <= x1 + 1 || y2 <= y1 + 1 || frame.rgb.len() < (frame.width * frame.height * 3) as usize {
        return None;
    }
    let img = image::RgbImage::from_raw(frame.width, frame.height, frame.rgb.clone())?;
    let mut crop = image::imageops::crop_imm(&img, x1, y1, x2 - x1, y2 - y1).to_image();
    let longer = crop.width().max(crop.height());
    if longer > max_side {
        let scale = max_side as f32 / longer as f32;
        crop = image::imageops::resize(
            &crop,
            ((crop.width() as f32 * scale) as u32).max(1),
            ((crop.height() as f32 * scale) as u32).max(1),
            image::imageops::FilterType::Triangle,
        );
    }
    encode_jpeg(crop.as_raw(), crop.width(), crop.height(), quality)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        let (w, h) = (200u32, 100u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        for (i, px) in rgb.chunks_mut(3).enumerate() {
            let x = (i as u32) % w;
            px.copy_from_slice(if x >= 100 {
                &[250, 10, 10]
            } else {
                &[10, 10, 250]
            });
        }
        Frame {
            camera_id: "c".into(),
            ts: Utc::now(),
            seq: 0,
            width: w,
            height: h,
            rgb,
        }
    }

    fn meta(track_id: u64) -> SnapshotMeta<'static> {
        SnapshotMeta {
            node_id: "n",
            camera_id: "c",
            track_id,
            track_key: "r-c-1",
            event_id: "r-c-1-2",
            class_id: None,
            label: "bus",
        }
    }

    #[test]
    fn keeps_the_best_scoring_crop_and_hands_it_over_once() {
        let mut k = SnapshotKeeper::new(SnapshotConfig::default());
        let f = frame();
        k.offer(1, 0.4, [10.0, 10.0, 60.0, 90.0], &f); // blue half
        k.offer(1, 0.9, [120.0, 10.0, 180.0, 90.0], &f); // red half, better
        k.offer(1, 0.5, [10.0, 10.0, 60.0, 90.0], &f); // worse: ignored
        let s = k.finish(meta(1)).expect("snapshot");
        assert_eq!(s.score, 0.9);
        assert_eq!(s.bbox, [120.0, 10.0, 180.0, 90.0]);
        assert!(s.frame_jpeg_b64.is_none());
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(&s.jpeg_b64)
            .expect("base64");
        let img = image::load_from_memory(&jpeg).expect("jpeg").to_rgb8();
        let px = img.get_pixel(img.width() / 2, img.height() / 2);
        assert!(px[0] > 200 && px[2] < 60, "the red crop, got {px:?}");
        assert!(k.finish(meta(1)).is_none());
    }

    #[test]
    fn full_frame_when_asked_and_nothing_when_disabled() {
        let f = frame();
        let mut k = SnapshotKeeper::new(SnapshotConfig {
            full_frame: true,
            ..SnapshotConfig::default()
        });
        k.offer(2, 0.7, [0.0, 0.0, 50.0, 50.0], &f);
        assert!(k
            .finish(meta(2))
            .expect("snapshot")
            .frame_jpeg_b64
            .is_some());
        let mut off = SnapshotKeeper::new(SnapshotConfig {
            enabled: false,
            ..SnapshotConfig::default()
        });
        off.offer(3, 0.7, [0.0, 0.0, 50.0, 50.0], &f);
        assert!(off.finish(meta(3)).is_none());
    }
}

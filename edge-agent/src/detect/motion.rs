//! The motion-blob detector: what changed since the previous frame.
//!
//! Steps, on a grayscale copy scaled down to `analysis_width`: absolute
//! difference with the previous frame, threshold, 3x3 dilation (joins the
//! ragged edges of one moving object), 8-connected components found with an
//! explicit stack (a big blob must not overflow the call stack), blobs under
//! `min_area` dropped, boxes scaled back to source pixels.

use super::{DetectError, Detector, ObjectBox};
use crate::config::MotionConfig;
use crate::frame::Frame;

/// See the module doc.
#[derive(Debug)]
pub struct MotionBlobDetector {
    config: MotionConfig,
    /// Previous analysis image and its size.
    previous: Option<(u32, u32, Vec<u8>)>,
}

impl MotionBlobDetector {
    pub fn new(config: MotionConfig) -> Self {
        Self {
            config,
            previous: None,
        }
    }
}

/// Box-filtered grayscale at `out_w` x `out_h`.
fn downscale_gray(frame: &Frame, out_w: u32, out_h: u32) -> Vec<u8> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let mut out = Vec::with_capacity(ow * oh);
    for oy in 0..oh {
        let y0 = oy * h / oh;
        let y1 = ((oy + 1) * h / oh).max(y0 + 1).min(h);
        for ox in 0..ow {
            let x0 = ox * w / ow;
            let x1 = ((ox + 1) * w / ow).max(x0 + 1).min(w);
            let mut sum = 0u32;
            for y in y0..y1 {
                for x in x0..x1 {
                    let i = (y * w + x) * 3;
                    let (r, g, b) = (
                        u32::from(frame.rgb[i]),
                        u32::from(frame.rgb[i + 1]),
                        u32::from(frame.rgb[i + 2]),
                    );
                    // ITU-R BT.601 luma in integer arithmetic.
                    sum += (299 * r + 587 * g + 114 * b) / 1000;
                }
            }
            out.push((sum / ((y1 - y0) * (x1 - x0)) as u32) as u8);
        }
    }
    out
}

fn dilate3x3(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    for y in 0..h {
        for x in 0..w {
            if !mask[y * w + x] {
                continue;
            }
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    out[ny * w + nx] = true;
                }
            }
        }
    }
    out
}

/// A connected region: its box (inclusive, analysis pixels) and pixel count.
struct Blob {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
    area: usize,
}

fn components(mask: &[bool], w: usize, h: usize) -> Vec<Blob> {
    let mut seen = vec![false; mask.len()];
    let mut blobs = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut b = Blob {
            x0: usize::MAX,
            y0: usize::MAX,
            x1: 0,
            y1: 0,
            area: 0,
        };
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            b.x0 = b.x0.min(x);
            b.y0 = b.y0.min(y);
            b.x1 = b.x1.max(x);
            b.y1 = b.y1.max(y);
            b.area += 1;
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        blobs.push(b);
    }
    blobs
}

impl Detector for MotionBlobDetector {
    fn name(&self) -> &str {
        "motion"
    }

    fn detect(&mut self, frame: &Frame) -> Result<Vec<ObjectBox>, DetectError> {
        let expected = frame.width as usize * frame.height as usize * 3;
        if frame.rgb.len() != expected || frame.width == 0 || frame.height == 0 {
            return Err(DetectError::BadFrame {
                width: frame.width,
                height: frame.height,
                got: frame.rgb.len(),
                expected,
            });
        }
        // Never upscale: a small frame is analysed as is.
        let aw = self.config.analysis_width.min(frame.width);
        let ah = ((u64::from(frame.height) * u64::from(aw) / u64::from(frame.width)) as u32).max(1);
        let gray = downscale_gray(frame, aw, ah);
        let previous = self.previous.replace((aw, ah, gray));
        let Some((pw, ph, prev)) = previous else {
            return Ok(Vec::new());
        };
        // A source that changes resolution starts over rather than diffing
        // unrelated pixels.
        if (pw, ph) != (aw, ah) {
            return Ok(Vec::new());
        }
        let Some((_, _, gray)) = &self.previous else {
            return Ok(Vec::new());
        };
        let threshold = self.config.threshold;
        let changed: Vec<bool> = gray
            .iter()
            .zip(&prev)
            .map(|(a, b)| a.abs_diff(*b) >= threshold)
            .collect();
        let (w, h) = (aw as usize, ah as usize);
        let mask = dilate3x3(&changed, w, h);
        let sx = frame.width as f32 / aw as f32;
        let sy = frame.height as f32 / ah as f32;
        let mut boxes = Vec::new();
        for b in components(&mask, w, h) {
            if b.area < self.config.min_area as usize {
                continue;
            }
            let mut hits = 0usize;
            for y in b.y0..=b.y1 {
                hits += changed[y * w + b.x0..=y * w + b.x1]
                    .iter()
                    .filter(|c| **c)
                    .count();
            }
            let box_area = (b.x1 - b.x0 + 1) * (b.y1 - b.y0 + 1);
            let score = (hits as f32 / box_area as f32).clamp(0.0, 1.0);
            boxes.push(ObjectBox {
                class_id: None,
                label: "motion".to_owned(),
                score,
                bbox: [
                    b.x0 as f32 * sx,
                    b.y0 as f32 * sy,
                    ((b.x1 + 1) as f32 * sx).min(frame.width as f32),
                    ((b.y1 + 1) as f32 * sy).min(frame.height as f32),
                ],
            });
        }
        Ok(boxes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    /// 640x480 textured background with a bright 40x40 checkered square at
    /// (x, y); checkered so that its inside changes when it moves a little,
    /// as a real object's texture does.
    fn frame_with_square(x: usize, y: usize) -> Frame {
        let (w, h) = (640usize, 480usize);
        let mut rgb = Vec::with_capacity(w * h * 3);
        for py in 0..h {
            for px in 0..w {
                let bg = (60 + ((px / 8 + py / 8) % 4) * 10) as u8;
                let v = if (x..x + 40).contains(&px) && (y..y + 40).contains(&py) {
                    if ((px - x) / 8 + (py - y) / 8) % 2 == 0 {
                        250
                    } else {
                        180
                    }
                } else {
                    bg
                };
                rgb.extend_from_slice(&[v, v, v]);
            }
        }
        Frame {
            camera_id: "c".into(),
            ts: Utc::now(),
            seq: 0,
            width: w as u32,
            height: h as u32,
            rgb,
        }
    }

    #[test]
    fn a_square_that_jumps_is_two_blobs_where_it_left_and_arrived() {
        let mut d = MotionBlobDetector::new(MotionConfig::default());
        assert!(d
            .detect(&frame_with_square(100, 200))
            .expect("ok")
            .is_empty());
        let boxes = d.detect(&frame_with_square(300, 200)).expect("ok");
        // Motion covers where the square left and where it arrived: two
        // separate blobs, 200 px apart, each about 40 px wide.
        assert_eq!(boxes.len(), 2, "{boxes:?}");
        let mut xs: Vec<f32> = boxes.iter().map(|b| b.bbox[0]).collect();
        xs.sort_by(f32::total_cmp);
        assert!(
            (xs[0] - 100.0).abs() <= 6.0 && (xs[1] - 300.0).abs() <= 6.0,
            "{boxes:?}"
        );
        for b in &boxes {
            assert_eq!(b.label, "motion");
            assert_eq!(b.class_id, None);
            assert!(
                (b.bbox[1] - 200.0).abs() <= 6.0 && (b.bbox[3] - 240.0).abs() <= 6.0,
                "{b:?}"
            );
            assert!((0.5..=1.0).contains(&b.score), "{b:?}");
        }
    }

    #[test]
    fn a_moving_square_is_one_blob_in_the_right_place() {
        let mut d = MotionBlobDetector::new(MotionConfig::default());
        d.detect(&frame_with_square(100, 100)).expect("ok");
        let boxes = d.detect(&frame_with_square(112, 100)).expect("ok");
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let [x1, y1, x2, y2] = boxes[0].bbox;
        assert!(
            (x1 - 100.0).abs() <= 6.0 && (x2 - 152.0).abs() <= 6.0,
            "{:?}",
            boxes[0]
        );
        assert!(
            (y1 - 100.0).abs() <= 6.0 && (y2 - 140.0).abs() <= 6.0,
            "{:?}",
            boxes[0]
        );
    }

    #[test]
    fn identical_frames_give_nothing() {
        let mut d = MotionBlobDetector::new(MotionConfig::default());
        for _ in 0..3 {
            assert!(d.detect(&frame_with_square(50, 50)).expect("ok").is_empty());
        }
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_a_panic() {
        let mut d = MotionBlobDetector::new(MotionConfig::default());
        let mut f = frame_with_square(0, 0);
        f.rgb.truncate(10);
        assert!(d.detect(&f).is_err());
    }
}

//! The motion gate: skip inference on frames where nothing moves.
//!
//! Each sampled frame is scaled down to a small greyscale image and compared
//! with a running-average background model; the fraction of unmasked pixels
//! that differ by more than `pixel_threshold` is the frame's motion. Below
//! `min_changed_fraction` the frame is "still" and the detector is skipped,
//! except that while objects are tracked the detector still runs every
//! `refresh_interval` so their tracks are refreshed and do not expire.
//! Masks (normalised polygons) exclude areas such as swaying trees or a
//! clock from the comparison.

use std::time::Duration;

use crate::frame::Frame;
use crate::zones::{polygon_contains, Point};

/// `[motion_gate]` settings (masks are per camera).
#[derive(Debug, Clone, PartialEq)]
pub struct MotionGateConfig {
    pub enabled: bool,
    pub analysis_width: u32,
    pub pixel_threshold: u8,
    pub min_changed_fraction: f32,
    /// Weight of a new frame in the background model.
    pub background_rate: f32,
    pub refresh_interval: Duration,
}

pub const fn default_gate_enabled() -> bool {
    true
}
pub const fn default_gate_analysis_width() -> u32 {
    160
}
pub const fn default_gate_pixel_threshold() -> u8 {
    20
}
pub const fn default_gate_min_changed_fraction() -> f32 {
    0.002
}
pub const fn default_gate_background_rate() -> f32 {
    0.3
}
pub const fn default_gate_refresh_interval() -> Duration {
    Duration::from_secs(1)
}

impl Default for MotionGateConfig {
    fn default() -> Self {
        Self {
            enabled: default_gate_enabled(),
            analysis_width: default_gate_analysis_width(),
            pixel_threshold: default_gate_pixel_threshold(),
            min_changed_fraction: default_gate_min_changed_fraction(),
            background_rate: default_gate_background_rate(),
            refresh_interval: default_gate_refresh_interval(),
        }
    }
}

/// The gate's verdict on one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateVerdict {
    /// Run the detector on this frame.
    pub infer: bool,
    /// Fraction of unmasked analysis pixels that changed.
    pub changed: f32,
}

/// See the module doc.
#[derive(Debug)]
pub struct MotionGate {
    config: MotionGateConfig,
    masks: Vec<Vec<Point>>,
    /// Analysis size the background and `ignore` were built for.
    size: (usize, usize),
    background: Vec<f32>,
    /// True where a mask hides the pixel.
    ignore: Vec<bool>,
    /// Media time of the last inference, for the refresh rule.
    last_infer: Option<Duration>,
}

impl MotionGate {
    pub fn new(config: MotionGateConfig, masks: Vec<Vec<Point>>) -> Self {
        Self {
            config,
            masks,
            size: (0, 0),
            background: Vec::new(),
            ignore: Vec::new(),
            last_infer: None,
        }
    }

    /// Decides for `frame` at stream time `now`; `tracking` says whether
    /// objects are being tracked (they get refreshed even when still).
    pub fn check(&mut self, frame: &Frame, now: Duration, tracking: bool) -> GateVerdict {
        let changed = self.changed_fraction(frame);
        let mut infer = !self.config.enabled || changed >= self.config.min_changed_fraction;
        if !infer && tracking {
            infer = self
                .last_infer
                .is_none_or(|t| now.saturating_sub(t) >= self.config.refresh_interval);
        }
        if infer {
            self.last_infer = Some(now);
        }
        GateVerdict { infer, changed }
    }

    fn changed_fraction(&mut self, frame: &Frame) -> f32 {
        let (fw, fh) = (frame.width as usize, frame.height as usize);
        if fw == 0 || fh == 0 || frame.rgb.len() < fw * fh * 3 {
            return 1.0; // let the detector report the bad frame
        }
        let w = (self.config.analysis_width as usize).clamp(8, fw);
        let h = (fh * w / fw).max(1);
        if self.size != (w, h) {
            self.size = (w, h);
            self.background.clear();
            self.ignore = (0..w * h)
                .map(|i| {
                    let p = [
                        ((i % w) as f32 + 0.5) / w as f32,
                        ((i / w) as f32 + 0.5) / h as f32,
                    ];
                    self.masks.iter().any(|m| polygon_contains(m, p))
                })
                .collect();
        }
        let grey = downscale_grey(frame, w, h);
        if self.background.is_empty() {
            self.background = grey.iter().map(|&g| f32::from(g)).collect();
            return 1.0; // first frame: everything is new
        }
        let threshold = f32::from(self.config.pixel_threshold);
        let rate = self.config.background_rate;
        let (mut changed, mut counted) = (0usize, 0usize);
        for ((bg, &g), &ignored) in self.background.iter_mut().zip(&grey).zip(&self.ignore) {
            let g = f32::from(g);
            if !ignored {
                counted += 1;
                if (g - *bg).abs() > threshold {
                    changed += 1;
                }
            }
            *bg += rate * (g - *bg);
        }
        if counted == 0 {
            0.0
        } else {
            changed as f32 / counted as f32
        }
    }
}

/// Nearest-neighbour greyscale at `w` x `h`: the gate needs speed, not beauty.
fn downscale_grey(frame: &Frame, w: usize, h: usize) -> Vec<u8> {
    let (fw, fh) = (frame.width as usize, frame.height as usize);
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let sy = (y * fh + fh / (2 * h)) / h;
        for x in 0..w {
            let sx = (x * fw + fw / (2 * w)) / w;
            let i = (sy.min(fh - 1) * fw + sx.min(fw - 1)) * 3;
            let (r, g, b) = (
                u32::from(frame.rgb[i]),
                u32::from(frame.rgb[i + 1]),
                u32::from(frame.rgb[i + 2]),
            );
            out.push(((299 * r + 587 * g + 114 * b) / 1000) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn frame(square_x: Option<u32>) -> Frame {
        let (w, h) = (320u32, 240u32);
        let mut rgb = vec![60u8; (w * h * 3) as usize];
        if let Some(sx) = square_x {
            for y in 100..140 {
                for x in sx..sx + 40 {
                    let i = ((y * w + x) * 3) as usize;
                    rgb[i..i + 3].copy_from_slice(&[250, 250, 250]);
                }
            }
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn still_frames_skip_moving_ones_pass() {
        let mut g = MotionGate::new(MotionGateConfig::default(), vec![]);
        assert!(g.check(&frame(None), ms(0), false).infer, "first frame");
        for t in 1..5 {
            assert!(!g.check(&frame(None), ms(t * 100), false).infer, "still");
        }
        let v = g.check(&frame(Some(50)), ms(600), false);
        assert!(v.infer && v.changed > 0.01, "{v:?}");
        assert!(g.check(&frame(Some(90)), ms(700), false).infer);
    }

    #[test]
    fn tracked_objects_are_refreshed_at_a_low_rate() {
        let mut g = MotionGate::new(MotionGateConfig::default(), vec![]);
        g.check(&frame(Some(50)), ms(0), true);
        let inferred: Vec<bool> = (1..=30)
            .map(|t| g.check(&frame(Some(50)), ms(t * 100), true).infer)
            .collect();
        // 3 s of a still scene at 10 fps with refresh every 1 s.
        assert_eq!(inferred.iter().filter(|i| **i).count(), 3, "{inferred:?}");
    }

    #[test]
    fn masked_motion_is_ignored_and_the_gate_can_be_disabled() {
        let mask = vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]];
        let mut g = MotionGate::new(MotionGateConfig::default(), vec![mask]);
        g.check(&frame(None), ms(0), false);
        assert!(
            !g.check(&frame(Some(20)), ms(100), false).infer,
            "left half masked"
        );
        assert!(
            g.check(&frame(Some(220)), ms(200), false).infer,
            "right half watched"
        );
        let mut off = MotionGate::new(
            MotionGateConfig {
                enabled: false,
                ..MotionGateConfig::default()
            },
            vec![],
        );
        off.check(&frame(None), ms(0), false);
        assert!(off.check(&frame(None), ms(100), false).infer);
    }
}

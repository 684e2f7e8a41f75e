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
//!
//! Camera motion: when the picture changed but the whole of it moved as one
//! (a PTZ camera panning or tilting), the gate measures the shift against
//! the previous frame at full resolution. If shifting explains every pixel,
//! nothing moved in the scene: the frame is skipped like a still one, the
//! caller moves its tracks by the shift, and the background restarts from
//! the new view. Newly exposed picture may hold new objects, so once the
//! pan has uncovered `pan_new_area` of the view since the last inference,
//! the detector runs again. Zooms, rotations and anything moving inside the
//! picture are not explained by a shift and are inferred as usual.

use std::borrow::Cow;
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
    /// Recognise camera pans (see the module doc).
    pub camera_motion: bool,
    /// Fraction of the view a pan may uncover before the detector runs again.
    pub pan_new_area: f32,
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
pub const fn default_gate_camera_motion() -> bool {
    true
}
pub const fn default_gate_pan_new_area() -> f32 {
    0.1
}

/// Largest pan searched between two sampled frames, as a fraction of the
/// picture's width and height (each side). A PTZ preset jump moves the view
/// by a third of the picture in one frame (street.mp4 jumps 124 of 360
/// rows), so the search is wide; a shift must still leave this much of the
/// picture overlapping to be measured at all.
const MAX_PAN_FRACTION: f32 = 0.45;

/// Coarse level of the pan search: the analysis image shrunk by this factor.
const PAN_PYRAMID: usize = 4;

/// Coarse candidates refined at analysis resolution.
const PAN_CANDIDATES: usize = 3;

/// A pan must change the picture in this many of the 4 × 4 blocks.
const PAN_BLOCKS: usize = 4;
const PAN_MIN_BLOCKS: usize = 12;

impl Default for MotionGateConfig {
    fn default() -> Self {
        Self {
            enabled: default_gate_enabled(),
            analysis_width: default_gate_analysis_width(),
            pixel_threshold: default_gate_pixel_threshold(),
            min_changed_fraction: default_gate_min_changed_fraction(),
            background_rate: default_gate_background_rate(),
            refresh_interval: default_gate_refresh_interval(),
            camera_motion: default_gate_camera_motion(),
            pan_new_area: default_gate_pan_new_area(),
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
    /// The camera moved the picture by this many source pixels (x, y) since
    /// the previous frame, and nothing moved within it: tracked boxes move
    /// along.
    pub camera_shift: Option<(f32, f32)>,
}

/// See the module doc.
#[derive(Debug)]
pub struct MotionGate {
    config: MotionGateConfig,
    masks: Vec<Vec<Point>>,
    /// Analysis size the background and `ignore` were built for.
    size: (usize, usize),
    /// Source frame size of the previous frame.
    frame_size: (usize, usize),
    background: Vec<f32>,
    /// True where a mask hides the pixel.
    ignore: Vec<bool>,
    /// The previous frame: at analysis size, and its RGB (camera motion only).
    prev_small: Vec<u8>,
    prev_rgb: Vec<u8>,
    /// Fraction of the view uncovered by pans since the last inference.
    uncovered: f32,
    /// Media time of the last inference, for the refresh rule.
    last_infer: Option<Duration>,
}

impl MotionGate {
    pub fn new(config: MotionGateConfig, masks: Vec<Vec<Point>>) -> Self {
        Self {
            config,
            masks,
            size: (0, 0),
            frame_size: (0, 0),
            background: Vec::new(),
            ignore: Vec::new(),
            prev_small: Vec::new(),
            prev_rgb: Vec::new(),
            uncovered: 0.0,
            last_infer: None,
        }
    }

    /// Decides for `frame` at stream time `now`; `tracking` says whether
    /// objects are being tracked (they get refreshed even when still).
    pub fn check(&mut self, frame: &Frame, now: Duration, tracking: bool) -> GateVerdict {
        let (changed, camera_shift) = self.analyse(frame);
        let still = changed < self.config.min_changed_fraction || camera_shift.is_some();
        let mut infer =
            !self.config.enabled || !still || self.uncovered >= self.config.pan_new_area;
        if !infer && tracking {
            infer = self
                .last_infer
                .is_none_or(|t| now.saturating_sub(t) >= self.config.refresh_interval);
        }
        if infer {
            self.last_infer = Some(now);
            self.uncovered = 0.0;
        }
        GateVerdict {
            infer,
            changed,
            camera_shift,
        }
    }

    /// The changed fraction against the background, and the camera's shift
    /// when a pan explains the change.
    fn analyse(&mut self, frame: &Frame) -> (f32, Option<(f32, f32)>) {
        let (fw, fh) = (frame.width as usize, frame.height as usize);
        if fw == 0 || fh == 0 || frame.rgb.len() < fw * fh * 3 {
            return (1.0, None); // let the detector report the bad frame
        }
        let w = (self.config.analysis_width as usize).clamp(8, fw);
        let h = (fh * w / fw).max(1);
        if self.size != (w, h) || self.frame_size != (fw, fh) {
            self.size = (w, h);
            self.frame_size = (fw, fh);
            self.background.clear();
            self.prev_small.clear();
            self.prev_rgb.clear();
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
        let grid = Grid::new(fw, fh, w, h);
        let grey = grid.sample(frame);
        let mut shift = None;
        let changed = if self.background.is_empty() {
            self.background = grey.iter().map(|&g| f32::from(g)).collect();
            1.0 // first frame: everything is new
        } else {
            let changed = self.update_background(&grey);
            if changed >= self.config.min_changed_fraction && !self.prev_rgb.is_empty() {
                shift = self.camera_pan(&grid, &grey);
                if let Some((dx, dy)) = shift {
                    // The old background no longer lines up with the view.
                    self.background = grey.iter().map(|&g| f32::from(g)).collect();
                    let (ux, uy) = (
                        dx.unsigned_abs() as f32 / fw as f32,
                        dy.unsigned_abs() as f32 / fh as f32,
                    );
                    self.uncovered += ux + uy - ux * uy;
                }
            }
            changed
        };
        self.prev_small = grey;
        if self.config.camera_motion && self.config.enabled {
            // A copy, not a greyscale conversion: only the pixels a pan
            // search looks at are ever converted.
            self.prev_rgb.clear();
            self.prev_rgb.extend_from_slice(&frame.rgb[..fw * fh * 3]);
        }
        (changed, shift.map(|(dx, dy)| (dx as f32, dy as f32)))
    }

    /// Compares `grey` with the background and blends it in; returns the
    /// changed fraction of unmasked pixels.
    fn update_background(&mut self, grey: &[u8]) -> f32 {
        let threshold = f32::from(self.config.pixel_threshold);
        let rate = self.config.background_rate;
        let (mut changed, mut counted) = (0usize, 0usize);
        for ((bg, &g), &ignored) in self.background.iter_mut().zip(grey).zip(&self.ignore) {
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

    /// The camera's shift (source pixels) since the previous frame when
    /// moving the previous frame by it explains (nearly) every unmasked
    /// analysis pixel of this one; `None` for still frames and real motion.
    /// Coarse to fine: every shift up to [`MAX_PAN_FRACTION`] on a
    /// [`PAN_PYRAMID`]-times smaller image, the best few of those at
    /// analysis resolution, then every source pixel around the best cell.
    /// Only the last step decides; the others just pick where to look, so a
    /// wrong guess costs an inference, never a skipped frame.
    fn camera_pan(&self, grid: &Grid, grey: &[u8]) -> Option<(i32, i32)> {
        let limit = self.config.min_changed_fraction;
        // A pan changes the picture everywhere there is texture; one object
        // moving over a plain background would otherwise look like a pan.
        if !self.changed_all_over(grid, grey) {
            return None;
        }
        let (w, h) = (grid.w, grid.h);
        if w < 8 * PAN_PYRAMID || h < 4 * PAN_PYRAMID {
            return None; // too small a picture to tell a pan from motion
        }
        let now = Pyramid::new(grey, w, h, PAN_PYRAMID);
        let before = Pyramid::new(&self.prev_small, w, h, PAN_PYRAMID);
        let reach = |n: usize| (n as f32 * MAX_PAN_FRACTION) as i32;
        let mut coarse: Vec<(u64, i32, i32)> = Vec::new();
        for cy in -reach(now.h)..=reach(now.h) {
            for cx in -reach(now.w)..=reach(now.w) {
                if let Some(cost) = mean_difference(&now, &before, cx, cy, 1, u64::MAX) {
                    coarse.push((cost, cx, cy));
                }
            }
        }
        coarse.sort_unstable();
        // Refine each coarse candidate to whole analysis cells: the coarse
        // cell and one coarse cell around it.
        let full = Pyramid {
            w,
            h,
            pixels: Cow::Borrowed(grey),
        };
        let prev = Pyramid {
            w,
            h,
            pixels: Cow::Borrowed(&self.prev_small),
        };
        let k = PAN_PYRAMID as i32;
        let mut best = (u64::MAX, 0i32, 0i32);
        for &(_, cx, cy) in coarse.iter().take(PAN_CANDIDATES) {
            for dy in cy * k - k..=cy * k + k {
                for dx in cx * k - k..=cx * k + k {
                    if let Some(cost) = mean_difference(&full, &prev, dx, dy, 2, best.0) {
                        if cost < best.0 {
                            best = (cost, dx, dy);
                        }
                    }
                }
            }
        }
        if best.0 == u64::MAX {
            return None;
        }
        // Refine to source pixels: one cell either side of the best cell.
        let (sx, sy) = (
            grid.fw as f32 / grid.w as f32,
            grid.fh as f32 / grid.h as f32,
        );
        let (rx, ry) = (sx.ceil() as i32 + 1, sy.ceil() as i32 + 1);
        let (bx, by) = (
            (best.1 as f32 * sx).round() as i32,
            (best.2 as f32 * sy).round() as i32,
        );
        let mut found: Option<(f32, i32, i32)> = None;
        for dy in by - ry..=by + ry {
            for dx in bx - rx..=bx + rx {
                if dx == 0 && dy == 0 {
                    continue; // not a pan
                }
                if let Some(f) = self.shifted_change(grid, grey, dx, dy) {
                    if found.is_none_or(|(b, _, _)| f < b) {
                        found = Some((f, dx, dy));
                    }
                }
            }
        }
        found
            .filter(|(f, _, _)| *f < limit)
            .map(|(_, dx, dy)| (dx, dy))
    }

    /// Whether the picture changed since the previous frame in at least
    /// [`PAN_MIN_BLOCKS`] of [`PAN_BLOCKS`]² blocks (each with at least 1% of
    /// its pixels changed).
    fn changed_all_over(&self, grid: &Grid, grey: &[u8]) -> bool {
        let threshold = self.config.pixel_threshold;
        let mut counts = [[0usize; PAN_BLOCKS]; PAN_BLOCKS];
        for y in 0..grid.h {
            for x in 0..grid.w {
                let i = y * grid.w + x;
                if !self.ignore[i] && grey[i].abs_diff(self.prev_small[i]) > threshold {
                    counts[y * PAN_BLOCKS / grid.h][x * PAN_BLOCKS / grid.w] += 1;
                }
            }
        }
        let per_block = grid.w * grid.h / (PAN_BLOCKS * PAN_BLOCKS);
        let busy = counts
            .iter()
            .flatten()
            .filter(|&&n| n * 100 >= per_block.max(1))
            .count();
        busy >= PAN_MIN_BLOCKS
    }

    /// Fraction of unmasked analysis pixels whose source pixel differs from
    /// the previous frame's pixel `(dx, dy)` back; pixels the shift brings
    /// in from outside the previous view are not counted. `None` as soon as
    /// too many differ for the shift to explain the frame.
    fn shifted_change(&self, grid: &Grid, grey: &[u8], dx: i32, dy: i32) -> Option<f32> {
        let threshold = self.config.pixel_threshold;
        let too_many = (self.config.min_changed_fraction * (grid.w * grid.h) as f32) as usize;
        let (fw, fh) = (grid.fw as i32, grid.fh as i32);
        let (mut changed, mut counted) = (0usize, 0usize);
        for y in 0..grid.h {
            let py = grid.ys[y] as i32 - dy;
            if py < 0 || py >= fh {
                continue;
            }
            for x in 0..grid.w {
                let i = y * grid.w + x;
                let px = grid.xs[x] as i32 - dx;
                if px < 0 || px >= fw || self.ignore[i] {
                    continue;
                }
                counted += 1;
                let j = (py * fw + px) as usize * 3;
                if grey[i].abs_diff(luma(&self.prev_rgb[j..j + 3])) > threshold {
                    changed += 1;
                    if changed > too_many {
                        return None;
                    }
                }
            }
        }
        (counted > 0).then(|| changed as f32 / counted as f32)
    }
}

/// A greyscale image at one level of the pan search.
struct Pyramid<'a> {
    w: usize,
    h: usize,
    pixels: Cow<'a, [u8]>,
}

impl Pyramid<'_> {
    /// `grey` (`w` × `h`) shrunk `factor` times by averaging blocks.
    fn new(grey: &[u8], w: usize, h: usize, factor: usize) -> Self {
        let (cw, ch) = (w / factor, h / factor);
        let mut pixels = Vec::with_capacity(cw * ch);
        for y in 0..ch {
            for x in 0..cw {
                let mut sum = 0u32;
                for yy in y * factor..(y + 1) * factor {
                    let row = &grey[yy * w + x * factor..yy * w + (x + 1) * factor];
                    sum += row.iter().map(|&g| u32::from(g)).sum::<u32>();
                }
                pixels.push((sum / (factor * factor) as u32) as u8);
            }
        }
        Self {
            w: cw,
            h: ch,
            pixels: Cow::Owned(pixels),
        }
    }
}

/// Mean absolute difference (×256, so integers compare) between `now` and
/// `before` moved by `(dx, dy)`, over the pixels both hold, sampling every
/// `step`th row and column. `None` when the shift leaves less than
/// `(1 - MAX_PAN_FRACTION)²` of the picture overlapping, or as soon as the
/// mean cannot beat `stop` any more.
fn mean_difference(
    now: &Pyramid,
    before: &Pyramid,
    dx: i32,
    dy: i32,
    step: usize,
    stop: u64,
) -> Option<u64> {
    let (w, h) = (now.w as i32, now.h as i32);
    let (x0, x1) = (dx.max(0), (w + dx).min(w));
    let (y0, y1) = (dy.max(0), (h + dy).min(h));
    let (ow, oh) = (x1 - x0, y1 - y0);
    let min_side = 1.0 - MAX_PAN_FRACTION;
    if (ow as f32) < w as f32 * min_side || (oh as f32) < h as f32 * min_side {
        return None;
    }
    let cols = (ow as usize).div_ceil(step) as u64;
    let rows = (oh as usize).div_ceil(step) as u64;
    let count = cols * rows;
    // Stop once the running sum alone exceeds what the best mean allows.
    let budget = stop.saturating_mul(count) / 256;
    let mut sum = 0u64;
    for y in (y0..y1).step_by(step) {
        let a = &now.pixels[(y * w) as usize..((y + 1) * w) as usize];
        let b = &before.pixels[((y - dy) * w) as usize..((y - dy + 1) * w) as usize];
        for x in (x0..x1).step_by(step) {
            sum += u64::from(a[x as usize].abs_diff(b[(x - dx) as usize]));
        }
        if sum > budget {
            return None;
        }
    }
    Some(sum * 256 / count.max(1))
}

/// Where the analysis pixels sit in the source frame (nearest neighbour).
struct Grid {
    fw: usize,
    fh: usize,
    w: usize,
    h: usize,
    xs: Vec<usize>,
    ys: Vec<usize>,
}

impl Grid {
    fn new(fw: usize, fh: usize, w: usize, h: usize) -> Self {
        Self {
            fw,
            fh,
            w,
            h,
            xs: (0..w)
                .map(|x| ((x * fw + fw / (2 * w)) / w).min(fw - 1))
                .collect(),
            ys: (0..h)
                .map(|y| ((y * fh + fh / (2 * h)) / h).min(fh - 1))
                .collect(),
        }
    }

    /// Greyscale at the grid points: the gate needs speed, not beauty.
    fn sample(&self, frame: &Frame) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.w * self.h);
        for &sy in &self.ys {
            for &sx in &self.xs {
                let i = (sy * self.fw + sx) * 3;
                out.push(luma(&frame.rgb[i..i + 3]));
            }
        }
        out
    }
}

fn luma(rgb: &[u8]) -> u8 {
    let (r, g, b) = (u32::from(rgb[0]), u32::from(rgb[1]), u32::from(rgb[2]));
    ((299 * r + 587 * g + 114 * b) / 1000) as u8
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

    /// A busy street-like texture (3-pixel cells of varied grey) seen
    /// through a camera whose view is moved by `(ox, oy)`, with an optional
    /// bright square that moves on its own at `square`.
    fn textured(ox: i64, oy: i64, square: Option<(u32, u32)>) -> Frame {
        let (w, h) = (320u32, 240u32);
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let (cx, cy) = (
                    (i64::from(x) - ox).div_euclid(3),
                    (i64::from(y) - oy).div_euclid(3),
                );
                let hash =
                    (cx.wrapping_mul(73_856_093) ^ cy.wrapping_mul(19_349_663)).rem_euclid(180);
                let mut v = 40 + hash as u8;
                if let Some((sx, sy)) = square {
                    if (sx..sx + 30).contains(&x) && (sy..sy + 30).contains(&y) {
                        v = 255;
                    }
                }
                rgb.extend_from_slice(&[v, v, v]);
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

    #[test]
    fn a_camera_pan_is_measured_and_skipped_until_enough_new_view_shows() {
        let mut g = MotionGate::new(MotionGateConfig::default(), vec![]);
        assert!(g.check(&textured(0, 0, None), ms(0), false).infer);
        let mut verdicts = Vec::new();
        for k in 1..=6 {
            // The view tilts 5 px a frame: the content moves down 5 px.
            verdicts.push(g.check(&textured(0, 5 * k, None), ms(k as u64 * 100), false));
        }
        for v in &verdicts {
            assert_eq!(v.camera_shift, Some((0.0, 5.0)), "{v:?}");
            assert!(v.changed > 0.1, "the picture did change: {v:?}");
        }
        // 5 of 240 rows uncovered per frame: after 5 frames over 10% of the
        // view is new, and the detector runs again.
        let inferred: Vec<bool> = verdicts.iter().map(|v| v.infer).collect();
        assert_eq!(inferred, [false, false, false, false, true, false]);
        // The camera stops: still frames, no shift.
        let v = g.check(&textured(0, 30, None), ms(700), false);
        assert!(!v.infer && v.camera_shift.is_none(), "{v:?}");
    }

    #[test]
    fn a_jump_of_a_third_of_the_picture_is_measured_and_a_cut_is_not_a_pan() {
        // A PTZ preset jump: the content moves 80 of 240 rows (and 40 of
        // 320 columns) at once, far beyond the few cells a tilt moves.
        let mut g = MotionGate::new(MotionGateConfig::default(), vec![]);
        g.check(&textured(0, 0, None), ms(0), false);
        let v = g.check(&textured(-40, 80, None), ms(100), false);
        assert_eq!(v.camera_shift, Some((-40.0, 80.0)), "{v:?}");
        // A third of the view is new: the detector runs on it.
        assert!(v.infer, "{v:?}");
        // And the tilt goes on from the new view, in the other direction.
        let v = g.check(&textured(-40, 75, None), ms(200), false);
        assert_eq!(v.camera_shift, Some((0.0, -5.0)), "{v:?}");
        // A cut to another scene (no shift within reach explains it).
        let v = g.check(&textured(5_000, 7_000, None), ms(300), false);
        assert!(v.infer && v.camera_shift.is_none(), "{v:?}");
    }

    #[test]
    fn an_object_moving_in_a_still_view_is_not_a_pan() {
        let mut g = MotionGate::new(MotionGateConfig::default(), vec![]);
        g.check(&textured(0, 0, Some((100, 100))), ms(0), false);
        g.check(&textured(0, 0, Some((100, 100))), ms(100), false);
        let v = g.check(&textured(0, 0, Some((106, 100))), ms(200), false);
        assert!(v.infer && v.camera_shift.is_none(), "{v:?}");
        // Nor is a pan with the gate's camera-motion check switched off.
        let mut off = MotionGate::new(
            MotionGateConfig {
                camera_motion: false,
                ..MotionGateConfig::default()
            },
            vec![],
        );
        off.check(&textured(0, 0, None), ms(0), false);
        let v = off.check(&textured(0, 5, None), ms(100), false);
        assert!(v.infer && v.camera_shift.is_none(), "{v:?}");
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

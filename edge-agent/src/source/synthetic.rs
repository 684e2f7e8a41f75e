//! `synthetic://`: a generated scene for demos and tests, no camera needed.
//!
//! A static textured background with N bright rectangles that move and bounce
//! off the edges. Everything derives from `seed`, so two sources with the
//! same parameters yield the same pixels frame for frame.

use chrono::Utc;

use super::{FrameSource, SourceError};
use crate::frame::Frame;

/// Parameters of a synthetic scene.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticParams {
    pub objects: u32,
    /// Stop after this many frames; `None` runs forever.
    pub frames: Option<u64>,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
}

impl Default for SyntheticParams {
    fn default() -> Self {
        Self {
            objects: 3,
            frames: None,
            width: 320,
            height: 240,
            seed: 1,
        }
    }
}

impl SyntheticParams {
    /// Reads `objects`, `frames`, `width`, `height` and `seed` from a URI query.
    pub fn from_query(params: &[(String, String)]) -> Result<Self, String> {
        fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("synthetic:// parameter {k}={v:?} is not a whole number"))
        }
        let mut p = Self::default();
        for (k, v) in params {
            match k.as_str() {
                "objects" => p.objects = num(k, v)?,
                "frames" => p.frames = Some(num(k, v)?),
                "width" => p.width = num(k, v)?,
                "height" => p.height = num(k, v)?,
                "seed" => p.seed = num(k, v)?,
                other => {
                    return Err(format!(
                        "unknown synthetic:// parameter {other:?} (known: objects, frames, width, height, seed, fps)"
                    ))
                }
            }
        }
        if !(16..=4096).contains(&p.width) || !(16..=4096).contains(&p.height) {
            return Err(format!(
                "synthetic:// size {}x{} is outside 16..=4096 pixels per side",
                p.width, p.height
            ));
        }
        if p.objects > 100 {
            return Err(format!(
                "synthetic:// objects={} is more than 100",
                p.objects
            ));
        }
        Ok(p)
    }
}

/// splitmix64: tiny, fast and stable across versions, unlike a library RNG
/// whose stream may change; determinism is the point here.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi` (hi > lo).
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo).max(1) as u64) as i64
    }
}

#[derive(Debug, Clone)]
struct MovingRect {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
    dx: i64,
    dy: i64,
    rgb: [u8; 3],
}

/// See the module doc.
pub struct SyntheticSource {
    camera_id: String,
    params: SyntheticParams,
    background: Vec<u8>,
    rects: Vec<MovingRect>,
    seq: u64,
}

impl std::fmt::Debug for SyntheticSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyntheticSource")
            .field("camera_id", &self.camera_id)
            .field("params", &self.params)
            .field("seq", &self.seq)
            .finish()
    }
}

impl SyntheticSource {
    pub fn new(camera_id: &str, params: SyntheticParams) -> Self {
        let (w, h) = (i64::from(params.width), i64::from(params.height));
        let mut rng = SplitMix(params.seed);
        // Mid-grey 8x8 tiles with noise: texture for the motion detector to
        // ignore, dark enough that the bright rectangles stand out.
        let tile_seed = rng.next();
        let mut background = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let mut t = SplitMix(tile_seed ^ (((x / 8) as u64) << 32) ^ ((y / 8) as u64));
                let base = 60 + (t.next() % 50) as u8;
                for c in 0..3u8 {
                    background.push(base.saturating_add(c * 4));
                }
            }
        }
        let rects = (0..params.objects)
            .map(|_| {
                let rw = rng.range((w / 12).max(2), (w / 5).max(3));
                let rh = rng.range((h / 12).max(2), (h / 5).max(3));
                let speed = |r: &mut SplitMix| {
                    let s = r.range(2, 6);
                    if r.next() % 2 == 0 {
                        s
                    } else {
                        -s
                    }
                };
                MovingRect {
                    x: rng.range(0, (w - rw).max(1)),
                    y: rng.range(0, (h - rh).max(1)),
                    w: rw,
                    h: rh,
                    dx: speed(&mut rng),
                    dy: speed(&mut rng),
                    rgb: [
                        rng.range(200, 256) as u8,
                        rng.range(200, 256) as u8,
                        rng.range(150, 256) as u8,
                    ],
                }
            })
            .collect();
        Self {
            camera_id: camera_id.to_owned(),
            params,
            background,
            rects,
            seq: 0,
        }
    }

    fn step(&mut self) {
        let (w, h) = (i64::from(self.params.width), i64::from(self.params.height));
        for r in &mut self.rects {
            r.x += r.dx;
            r.y += r.dy;
            if r.x < 0 || r.x + r.w > w {
                r.dx = -r.dx;
                r.x = r.x.clamp(0, (w - r.w).max(0));
            }
            if r.y < 0 || r.y + r.h > h {
                r.dy = -r.dy;
                r.y = r.y.clamp(0, (h - r.h).max(0));
            }
        }
    }

    fn render(&self) -> Vec<u8> {
        let w = i64::from(self.params.width);
        let h = i64::from(self.params.height);
        let mut rgb = self.background.clone();
        for r in &self.rects {
            for y in r.y.max(0)..(r.y + r.h).min(h) {
                for x in r.x.max(0)..(r.x + r.w).min(w) {
                    let i = ((y * w + x) * 3) as usize;
                    rgb[i..i + 3].copy_from_slice(&r.rgb);
                }
            }
        }
        rgb
    }
}

impl FrameSource for SyntheticSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.params.frames.is_some_and(|n| self.seq >= n) {
            return Ok(None);
        }
        if self.seq > 0 {
            self.step();
        }
        let frame = Frame {
            camera_id: self.camera_id.clone(),
            ts: Utc::now(),
            seq: self.seq,
            width: self.params.width,
            height: self.params.height,
            rgb: self.render(),
        };
        self.seq += 1;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(p: &SyntheticParams) -> Vec<Frame> {
        let mut s = SyntheticSource::new("c", p.clone());
        std::iter::from_fn(|| s.next_frame().expect("synthetic never fails")).collect()
    }

    #[test]
    fn deterministic_and_finite() {
        let p = SyntheticParams {
            frames: Some(4),
            ..SyntheticParams::default()
        };
        let a = frames(&p);
        let b = frames(&p);
        assert_eq!(a.len(), 4);
        assert_eq!(a[0].rgb.len(), 320 * 240 * 3);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.rgb, y.rgb);
        }
        assert_ne!(a[0].rgb, a[1].rgb, "objects move");
        let other = frames(&SyntheticParams { seed: 2, ..p });
        assert_ne!(a[0].rgb, other[0].rgb, "seed matters");
    }
}

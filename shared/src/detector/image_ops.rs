//! Pre- and post-processing around the network, matching the reference
//! pipeline: letterbox (bilinear resize keeping aspect ratio, grey 114
//! padding centred, RGB / 255), then per-class NMS on plain vectors.

/// How a source image was placed in the model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Source pixels → model pixels.
    pub gain: f32,
    pub pad_x: f32,
    pub pad_y: f32,
}

impl Letterbox {
    /// Maps a box in model pixels back to source pixels (not clipped, like the reference).
    pub fn unmap(&self, b: [f32; 4]) -> [f32; 4] {
        [
            (b[0] - self.pad_x) / self.gain,
            (b[1] - self.pad_y) / self.gain,
            (b[2] - self.pad_x) / self.gain,
            (b[3] - self.pad_y) / self.gain,
        ]
    }
}

/// Letterboxes an RGB8 image into an NHWC f32 `[out_h][out_w][3]` in `[0, 1]`.
pub fn letterbox(
    rgb: &[u8],
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
) -> (Vec<f32>, Letterbox) {
    // In f64 with ties to even, as the reference's Python computes
    // `round(w * r)`, so the resized size agrees even on exact halves.
    let gain = (out_h as f64 / h as f64).min(out_w as f64 / w as f64);
    let new_w = ((w as f64 * gain).round_ties_even() as usize).clamp(1, out_w);
    let new_h = ((h as f64 * gain).round_ties_even() as usize).clamp(1, out_h);
    let gain = gain as f32;
    let dw = (out_w - new_w) as f32 / 2.0;
    let dh = (out_h - new_h) as f32 / 2.0;
    // Ultralytics' rounding: the odd pixel of padding goes right / bottom.
    let left = (dw - 0.1).round().max(0.0) as usize;
    let top = (dh - 0.1).round().max(0.0) as usize;
    let resized = resize_bilinear(rgb, w, h, new_w, new_h);
    let grey = 114.0 / 255.0;
    let mut out = vec![grey; out_w * out_h * 3];
    for y in 0..new_h {
        let src = &resized[y * new_w * 3..(y + 1) * new_w * 3];
        let dst = &mut out[((y + top) * out_w + left) * 3..((y + top) * out_w + left + new_w) * 3];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f32::from(s) / 255.0;
        }
    }
    (
        out,
        Letterbox {
            gain,
            pad_x: left as f32,
            pad_y: top as f32,
        },
    )
}

/// Bilinear resize exactly as Pillow's `Image.resize(…, BILINEAR)`, which
/// produced the reference: a triangle filter widened by the downscale factor
/// (so it antialiases), 22-bit fixed-point weights, horizontal pass then
/// vertical, each rounded to u8. (OpenCV's `INTER_LINEAR` samples without
/// antialiasing; the f32 model barely notices, the int8 one does.)
pub fn resize_bilinear(rgb: &[u8], w: usize, h: usize, nw: usize, nh: usize) -> Vec<u8> {
    if nw == w && nh == h {
        return rgb.to_vec();
    }
    let horiz = resample_pass(rgb, w, h, nw, true);
    resample_pass(&horiz, nw, h, nh, false)
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index and fixed-point weights.
fn pil_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize)
                .saturating_sub(xmin);
            let mut k: Vec<f64> = (0..xmax)
                .map(|x| {
                    let t = ((x + xmin) as f64 - center + 0.5) * ss;
                    (1.0 - t.abs()).max(0.0)
                })
                .collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                for v in &mut k {
                    *v /= total;
                }
            }
            let one = f64::from(1u32 << PRECISION_BITS);
            let kk = k
                .iter()
                .map(|&v| (v * one + if v < 0.0 { -0.5 } else { 0.5 }) as i32)
                .collect();
            (xmin, kk)
        })
        .collect()
}

/// One separable pass over RGB8: along rows (`horizontal`) or columns.
fn resample_pass(src: &[u8], w: usize, h: usize, out_len: usize, horizontal: bool) -> Vec<u8> {
    let (in_len, lines) = if horizontal { (w, h) } else { (h, w) };
    let coeffs = pil_coeffs(in_len, out_len);
    let (ow, oh) = if horizontal {
        (out_len, h)
    } else {
        (w, out_len)
    };
    let mut out = vec![0u8; ow * oh * 3];
    let half = 1i64 << (PRECISION_BITS - 1);
    for line in 0..lines {
        for (o, (start, kk)) in coeffs.iter().enumerate() {
            for c in 0..3 {
                let mut acc = half;
                for (i, &k) in kk.iter().enumerate() {
                    let (x, y) = if horizontal {
                        (start + i, line)
                    } else {
                        (line, start + i)
                    };
                    acc += i64::from(src[(y * w + x) * 3 + c]) * i64::from(k);
                }
                let v = (acc >> PRECISION_BITS).clamp(0, 255) as u8;
                let (x, y) = if horizontal { (o, line) } else { (line, o) };
                out[(y * ow + x) * 3 + c] = v;
            }
        }
    }
    out
}

/// A candidate box before NMS, in model or source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub class_id: usize,
    pub score: f32,
    pub bbox: [f32; 4],
}

pub use crate::geometry::iou;

/// Greedy per-class NMS; returns survivors by descending score.
pub fn nms(mut cands: Vec<Candidate>, iou_threshold: f32) -> Vec<Candidate> {
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Candidate> = Vec::new();
    for c in cands {
        if kept
            .iter()
            .all(|k| k.class_id != c.class_id || iou(&k.bbox, &c.bbox) <= iou_threshold)
        {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_centres_a_wide_image() {
        let rgb = vec![255u8; 200 * 100 * 3];
        let (img, lb) = letterbox(&rgb, 200, 100, 64, 64);
        assert_eq!(lb.gain, 0.32);
        assert_eq!((lb.pad_x, lb.pad_y), (0.0, 16.0));
        assert!((img[0] - 114.0 / 255.0).abs() < 1e-6, "top band is grey");
        assert_eq!(img[(20 * 64 + 5) * 3], 1.0, "picture is white");
        assert_eq!(lb.unmap([0.0, 16.0, 64.0, 48.0]), [0.0, 0.0, 200.0, 100.0]);
    }

    #[test]
    fn nms_is_per_class_and_keeps_the_best() {
        let c = |class_id, score, x: f32| Candidate {
            class_id,
            score,
            bbox: [x, 0.0, x + 10.0, 10.0],
        };
        let kept = nms(
            vec![
                c(0, 0.5, 1.0),
                c(0, 0.9, 0.0),
                c(1, 0.7, 0.0),
                c(0, 0.6, 50.0),
            ],
            0.45,
        );
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        assert_eq!(scores, vec![0.9, 0.7, 0.6]);
    }

    #[test]
    fn nms_survives_nan_scores() {
        let mut c = Candidate {
            class_id: 0,
            score: f32::NAN,
            bbox: [0.0; 4],
        };
        let kept = nms(
            vec![c, {
                c.score = 0.5;
                c
            }],
            0.45,
        );
        assert_eq!(kept.len(), 2);
    }
}

//! f32 convolution on NHWC activations, the detector's hot loop.
//!
//! Each conv is a GEMM over tiles of output pixels: a tile's patches are
//! gathered (im2col, one contiguous copy of `Cin` floats per tap thanks to
//! NHWC; none at all for 1x1 convs), multiplied with the weights by the
//! `gemm` crate on one thread, and bias + SiLU are applied while the tile is
//! still in cache. Tiles are spread over the caller's rayon pool, so the
//! pool's size bounds the threads used.
//!
//! Unsafe is confined to the `gemm` call (raw pointers with strides we
//! computed from checked slice lengths) and the SIMD dispatch of SiLU.
#![allow(unsafe_code)]

use rayon::prelude::*;
use std::cell::RefCell;

/// An NHWC activation (batch 1), possibly a channel slice of a wider one:
/// pixel `p`, channel `c` lives at `data[p * pixel_stride + c]`.
#[derive(Debug, Clone, Copy)]
pub struct ActView<'a> {
    pub data: &'a [f32],
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub pixel_stride: usize,
}

impl<'a> ActView<'a> {
    pub fn contiguous(data: &'a [f32], h: usize, w: usize, c: usize) -> Self {
        Self {
            data,
            h,
            w,
            c,
            pixel_stride: c,
        }
    }

    #[inline]
    pub fn pixel(&self, y: usize, x: usize) -> &'a [f32] {
        let i = (y * self.w + x) * self.pixel_stride;
        &self.data[i..i + self.c]
    }
}

/// Geometry of one conv layer (square kernels, symmetric padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    /// Reduction length: taps times input channels.
    pub fn kdim(&self) -> usize {
        self.k * self.k * self.cin
    }

    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.k) / self.stride + 1,
            (w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }

    /// Whether the input rows can be used as the GEMM's left operand as is.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// f32 weights laid out for the GEMM: `[K][Cout]` with K ordered
/// (ky, kx, cin) to match NHWC patches.
#[derive(Debug, Clone)]
pub struct F32Conv {
    pub shape: ConvShape,
    pub w_kn: Vec<f32>,
    pub bias: Vec<f32>,
    pub silu: bool,
}

impl F32Conv {
    /// From PyTorch's OIHW weight layout.
    pub fn from_oihw(shape: ConvShape, w: &[f32], bias: Vec<f32>, silu: bool) -> Self {
        let ConvShape { cin, cout, k, .. } = shape;
        let kd = shape.kdim();
        let mut w_kn = vec![0f32; kd * cout];
        for o in 0..cout {
            for i in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        let src = ((o * cin + i) * k + ky) * k + kx;
                        let kk = (ky * k + kx) * cin + i;
                        w_kn[kk * cout + o] = w[src];
                    }
                }
            }
        }
        Self {
            shape,
            w_kn,
            bias,
            silu,
        }
    }
}

/// Output pixels per tile: enough tiles for every thread, small enough
/// that a tile's patches and outputs stay in L2.
pub fn tile_rows(m: usize, threads: usize) -> usize {
    let per = m.div_ceil(threads.max(1) * 4);
    per.clamp(16, 192)
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Gathers the patches of output pixels `m0..m0 + rows` into `col` (`rows x K`).
fn gather_f32(x: &ActView<'_>, s: &ConvShape, wo: usize, m0: usize, rows: usize, col: &mut [f32]) {
    let kd = s.kdim();
    let c = s.cin;
    for r in 0..rows {
        let m = m0 + r;
        let (oy, ox) = (m / wo, m % wo);
        let row = &mut col[r * kd..(r + 1) * kd];
        for ky in 0..s.k {
            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
            for kx in 0..s.k {
                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                let dst = &mut row[(ky * s.k + kx) * c..(ky * s.k + kx + 1) * c];
                if iy < 0 || ix < 0 || iy as usize >= x.h || ix as usize >= x.w {
                    dst.fill(0.0);
                } else {
                    dst.copy_from_slice(x.pixel(iy as usize, ix as usize));
                }
            }
        }
    }
}

/// Runs one conv (+bias, +SiLU when `silu`) and returns the NHWC output.
/// Must be called inside the rayon pool that should do the work.
pub fn conv2d_f32(x: &ActView<'_>, conv: &F32Conv, threads: usize) -> (Vec<f32>, usize, usize) {
    let s = conv.shape;
    assert_eq!(x.c, s.cin, "conv input channels");
    let (ho, wo) = s.out_hw(x.h, x.w);
    let (m, n, kd) = (ho * wo, s.cout, s.kdim());
    let mut out = vec![0f32; m * n];
    let tm = tile_rows(m, threads);
    out.par_chunks_mut(tm * n).enumerate().for_each(|(t, dst)| {
        let m0 = t * tm;
        let rows = dst.len() / n;
        if s.is_pointwise() {
            let start = m0 * x.pixel_stride;
            let need = (rows - 1) * x.pixel_stride + kd;
            let lhs = &x.data[start..start + need];
            gemm_f32(rows, n, kd, lhs, x.pixel_stride, &conv.w_kn, dst);
        } else {
            SCRATCH.with(|cell| {
                let mut col = cell.borrow_mut();
                if col.len() < rows * kd {
                    col.resize(rows * kd, 0.0);
                }
                gather_f32(x, &s, wo, m0, rows, &mut col[..rows * kd]);
                gemm_f32(rows, n, kd, &col[..rows * kd], kd, &conv.w_kn, dst);
            });
        }
        bias_act(dst, &conv.bias, conv.silu);
    });
    (out, ho, wo)
}

/// `dst[rows x n] = lhs[rows x k, row stride lhs_rs] * rhs[k x n]`, one thread.
fn gemm_f32(
    rows: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_rs: usize,
    rhs: &[f32],
    dst: &mut [f32],
) {
    assert!(rows == 0 || lhs.len() >= (rows - 1) * lhs_rs + k);
    assert!(rhs.len() >= k * n && dst.len() >= rows * n);
    // SAFETY: the asserts above bound every element gemm reads or writes.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            lhs_rs as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Adds the per-channel bias and applies SiLU in place on a `[rows][n]` tile.
pub fn bias_act(tile: &mut [f32], bias: &[f32], silu: bool) {
    let n = bias.len();
    for row in tile.chunks_exact_mut(n) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
        if silu {
            silu_inplace(row);
        }
    }
}

/// `x * sigmoid(x)` in place, vectorised where the CPU allows.
pub fn silu_inplace(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { silu_avx512(v) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { silu_avx2(v) };
        }
    }
    silu_generic(v);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_avx512(v: &mut [f32]) {
    silu_generic(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_avx2(v: &mut [f32]) {
    silu_generic(v)
}

#[inline(always)]
fn silu_generic(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = *x / (1.0 + fast_exp(-*x));
    }
}

/// exp(x) to about 2 ulp, branch-free so loops over it vectorise
/// (Cephes' polynomial on a ln2 range reduction).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let r2 = r * r;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * r2 + r + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    e * f32::from_bits(bits)
}

/// The obvious six-loop conv with the same semantics, for tests.
pub fn conv2d_naive(
    x: &ActView<'_>,
    shape: &ConvShape,
    w_oihw: &[f32],
    bias: &[f32],
    silu: bool,
) -> Vec<f32> {
    let s = *shape;
    let (ho, wo) = s.out_hw(x.h, x.w);
    let mut out = vec![0f32; ho * wo * s.cout];
    for oy in 0..ho {
        for ox in 0..wo {
            for o in 0..s.cout {
                let mut acc = bias[o] as f64;
                for ky in 0..s.k {
                    for kx in 0..s.k {
                        let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                        let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                        if iy < 0 || ix < 0 || iy as usize >= x.h || ix as usize >= x.w {
                            continue;
                        }
                        let px = x.pixel(iy as usize, ix as usize);
                        for (i, &xv) in px.iter().enumerate() {
                            acc += f64::from(xv)
                                * f64::from(w_oihw[((o * s.cin + i) * s.k + ky) * s.k + kx]);
                        }
                    }
                }
                let mut v = acc as f32;
                if silu {
                    v = v / (1.0 + (-v).exp());
                }
                out[(oy * wo + ox) * s.cout + o] = v;
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers (xorshift), so failures reproduce.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn f32(&mut self) -> f32 {
            (self.next() % 20001) as f32 / 10000.0 - 1.0
        }
        pub(crate) fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    pub(crate) fn random_case(rng: &mut Rng) -> (ConvShape, usize, usize) {
        let k = [1, 3, 5][rng.below(3)];
        let shape = ConvShape {
            cin: 1 + rng.below(37),
            cout: 1 + rng.below(70),
            k,
            stride: 1 + rng.below(2),
            pad: rng.below(k as u64 / 2 + 1),
        };
        (shape, k + rng.below(13), k + rng.below(11))
    }

    #[test]
    fn f32_conv_matches_naive_on_random_shapes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        for case in 0..40 {
            let (s, h, w) = random_case(&mut rng);
            // Every other case reads a channel slice of a wider tensor.
            let extra = if case % 2 == 0 { 0 } else { 1 + rng.below(5) };
            let ps = s.cin + extra;
            let data: Vec<f32> = (0..h * w * ps).map(|_| rng.f32()).collect();
            let x = ActView {
                data: &data[extra.min(1)..],
                h,
                w,
                c: s.cin,
                pixel_stride: ps,
            };
            let wt: Vec<f32> = (0..s.cout * s.kdim()).map(|_| rng.f32()).collect();
            let bias: Vec<f32> = (0..s.cout).map(|_| rng.f32()).collect();
            let silu = case % 3 != 0;
            let conv = F32Conv::from_oihw(s, &wt, bias.clone(), silu);
            let (got, ho, wo) = pool.install(|| conv2d_f32(&x, &conv, 2));
            let want = conv2d_naive(&x, &s, &wt, &bias, silu);
            assert_eq!((ho, wo), s.out_hw(h, w));
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "case {case} {s:?} {h}x{w} at {i}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in -8700..8800 {
            let x = i as f32 / 100.0;
            let (got, want) = (fast_exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn silu_handles_extremes() {
        let mut v = vec![-1000.0, -20.0, 0.0, 20.0, 1000.0, 1.5];
        silu_inplace(&mut v);
        assert!(v[0].abs() < 1e-30);
        assert!(v[1].abs() < 1e-7 && v[2] == 0.0);
        assert!((v[3] - 20.0).abs() < 1e-5 && v[4] == 1000.0);
        assert!((v[5] - 1.5 / (1.0 + (-1.5f32).exp())).abs() < 1e-6);
    }
}

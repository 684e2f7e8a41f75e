//! The int8 path: convolution with u8 activations quantized on the fly and
//! int8 weights, accumulated in i32. Candle has no quantized convolution,
//! and its `QMatMul` is slow on these shapes, so these are our own kernels.
//!
//! Semantics are ONNX `DynamicQuantizeLinear` + `ConvInteger`: each conv's
//! input is quantized per tensor to u8 (scale and zero point from its
//! min/max), weights are u8 with a per-output-channel zero point and scale.
//! The kernels multiply u8 activations by `s = w - 128` (an i8) and the
//! epilogue restores the exact ConvInteger sum:
//!
//! `Σ (x - xz)(w - wz) = Σ x·s + (128 - wz)·Σx - xz·Σ(w - wz)`
//!
//! so weights with any zero point (the Ultralytics export's are 9-bit once
//! centred) stay exact while the inner loop is u8×i8 (`vpdpbusd`).
//!
//! Kernels: scalar, AVX2 (`vpmaddwd` on widened values: `vpmaddubsw` would
//! saturate), AVX-512-VNNI (`vpdpbusd`), and on aarch64 NEON dot product
//! (`sdot`, on activations shifted to i8 with the shift added back from the
//! weights' sums), chosen at run time.
#![allow(unsafe_code)]

use rayon::prelude::*;
use std::cell::RefCell;

use super::conv::{bias_act, tile_rows, ActView, ConvShape};

/// Which inner kernel runs the int8 GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QKernel {
    Scalar,
    Avx2,
    Avx512Vnni,
    NeonDot,
}

impl QKernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512f")
            {
                return Self::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return Self::NeonDot;
            }
        }
        Self::Scalar
    }

    /// Every kernel this CPU can run (for tests and benchmarks).
    pub fn available() -> Vec<Self> {
        let best = Self::detect();
        [Self::Scalar, Self::Avx2, Self::Avx512Vnni, Self::NeonDot]
            .into_iter()
            .filter(|k| match (k, best) {
                (Self::Scalar, _) => true,
                (Self::NeonDot, Self::NeonDot) => true,
                (Self::Avx2, Self::Avx2 | Self::Avx512Vnni) => true,
                (Self::Avx512Vnni, Self::Avx512Vnni) => true,
                _ => false,
            })
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512-vnni",
            Self::NeonDot => "neon-dotprod",
        }
    }

    /// Columns per packed block.
    fn nr(self) -> usize {
        match self {
            Self::Scalar => 1,
            Self::Avx2 => 16,
            Self::Avx512Vnni => 32,
            Self::NeonDot => 16,
        }
    }
}

/// Int8 weights packed for one kernel: `s = w - 128`, K padded to a multiple of 4.
#[derive(Debug, Clone)]
pub struct PackedB {
    kernel: QKernel,
    n: usize,
    kp: usize,
    i8s: Vec<i8>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    i16s: Vec<i16>,
    /// Σ_k s per column (the NEON kernel's correction for its i8 shift).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    ssum: Vec<i32>,
}

impl PackedB {
    /// Packs `w[n][k]` (u8 weights, K ordered as the activations' patches).
    pub fn pack(kernel: QKernel, w: &[u8], n: usize, k: usize) -> Self {
        let kp = k.div_ceil(4) * 4;
        let s = |o: usize, kk: usize| -> i8 {
            if o < n && kk < k {
                (i16::from(w[o * k + kk]) - 128) as i8
            } else {
                0
            }
        };
        let nr = kernel.nr();
        let nb = n.div_ceil(nr);
        let (mut i8s, mut i16s) = (Vec::new(), Vec::new());
        match kernel {
            QKernel::Scalar => {
                i8s = (0..n)
                    .flat_map(|o| (0..kp).map(move |kk| (o, kk)))
                    .map(|(o, kk)| s(o, kk))
                    .collect();
            }
            QKernel::Avx512Vnni | QKernel::NeonDot => {
                i8s.reserve(nb * kp * nr);
                for b in 0..nb {
                    for k4 in 0..kp / 4 {
                        for j in 0..nr {
                            for t in 0..4 {
                                i8s.push(s(b * nr + j, k4 * 4 + t));
                            }
                        }
                    }
                }
            }
            QKernel::Avx2 => {
                i16s.reserve(nb * kp * nr);
                for b in 0..nb {
                    for k2 in 0..kp / 2 {
                        for j in 0..nr {
                            for t in 0..2 {
                                i16s.push(i16::from(s(b * nr + j, k2 * 2 + t)));
                            }
                        }
                    }
                }
            }
        }
        let ssum = (0..n)
            .map(|o| (0..k).map(|kk| i32::from(s(o, kk))).sum())
            .collect();
        Self {
            kernel,
            n,
            kp,
            i8s,
            i16s,
            ssum,
        }
    }

    pub fn kp(&self) -> usize {
        self.kp
    }
}

/// `out[r][o] = Σ_k a[r*lda + k] * s[o][k]` over the padded K, in i32.
/// `a` rows must hold `kp` bytes (zero past the real K).
pub fn qgemm(rows: usize, a: &[u8], lda: usize, b: &PackedB, out: &mut [i32]) {
    let (n, kp) = (b.n, b.kp);
    assert!(rows == 0 || a.len() >= (rows - 1) * lda + kp, "A too short");
    assert!(out.len() >= rows * n, "out too short");
    match b.kernel {
        QKernel::Scalar => qgemm_scalar(rows, a, lda, b, out),
        #[cfg(target_arch = "x86_64")]
        QKernel::Avx2 => {
            assert!(std::arch::is_x86_feature_detected!("avx2"));
            // SAFETY: AVX2 checked above; bounds asserted above and derived from kp, n.
            unsafe { x86::qgemm_avx2(rows, a, lda, b, out) }
        }
        #[cfg(target_arch = "x86_64")]
        QKernel::Avx512Vnni => {
            assert!(
                std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512f")
            );
            // SAFETY: as above for AVX-512-VNNI.
            unsafe { x86::qgemm_vnni(rows, a, lda, b, out) }
        }
        #[cfg(target_arch = "aarch64")]
        QKernel::NeonDot => {
            assert!(std::arch::is_aarch64_feature_detected!("dotprod"));
            // SAFETY: dotprod checked above; bounds asserted above.
            unsafe { arm::qgemm_neon_dot(rows, a, lda, b, out) }
        }
        #[allow(unreachable_patterns)]
        _ => qgemm_scalar(rows, a, lda, b, out),
    }
}

fn qgemm_scalar(rows: usize, a: &[u8], lda: usize, b: &PackedB, out: &mut [i32]) {
    let (n, kp) = (b.n, b.kp);
    for r in 0..rows {
        let ar = &a[r * lda..r * lda + kp];
        for o in 0..n {
            let br = &b.i8s[o * kp..(o + 1) * kp];
            out[r * n + o] = ar
                .iter()
                .zip(br)
                .map(|(&x, &w)| i32::from(x) * i32::from(w))
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::PackedB;
    use std::arch::x86_64::*;

    const MR_VNNI: usize = 6;
    const MR_AVX2: usize = 4;

    /// Row pointers for a block of up to `MR` rows; missing rows repeat the
    /// last one (their results are discarded).
    #[inline(always)]
    fn row_ptrs<const MR: usize>(a: &[u8], lda: usize, r0: usize, mr: usize) -> [*const u8; MR] {
        let mut p = [a.as_ptr(); MR];
        for (i, slot) in p.iter_mut().enumerate() {
            *slot = a[(r0 + i.min(mr - 1)) * lda..].as_ptr();
        }
        p
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn qgemm_vnni(
        rows: usize,
        a: &[u8],
        lda: usize,
        b: &PackedB,
        out: &mut [i32],
    ) {
        const NR: usize = 32;
        let (n, kp) = (b.n, b.kp);
        let nb = n.div_ceil(NR);
        let mut r0 = 0;
        while r0 < rows {
            let mr = MR_VNNI.min(rows - r0);
            let ap = row_ptrs::<MR_VNNI>(a, lda, r0, mr);
            for blk in 0..nb {
                let bp = b.i8s.as_ptr().add(blk * kp * NR);
                let mut acc = [[_mm512_setzero_si512(); 2]; MR_VNNI];
                for k4 in 0..kp / 4 {
                    let b0 = _mm512_loadu_si512(bp.add(k4 * 4 * NR) as *const _);
                    let b1 = _mm512_loadu_si512(bp.add(k4 * 4 * NR + 64) as *const _);
                    for r in 0..MR_VNNI {
                        let av =
                            _mm512_set1_epi32((ap[r].add(k4 * 4) as *const i32).read_unaligned());
                        acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
                        acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
                    }
                }
                let cols = NR.min(n - blk * NR);
                let mut tmp = [0i32; NR];
                for r in 0..mr {
                    _mm512_storeu_si512(tmp.as_mut_ptr() as *mut _, acc[r][0]);
                    _mm512_storeu_si512(tmp.as_mut_ptr().add(16) as *mut _, acc[r][1]);
                    let o = (r0 + r) * n + blk * NR;
                    out[o..o + cols].copy_from_slice(&tmp[..cols]);
                }
            }
            r0 += MR_VNNI;
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn qgemm_avx2(
        rows: usize,
        a: &[u8],
        lda: usize,
        b: &PackedB,
        out: &mut [i32],
    ) {
        const NR: usize = 16;
        let (n, kp) = (b.n, b.kp);
        let nb = n.div_ceil(NR);
        let mut r0 = 0;
        while r0 < rows {
            let mr = MR_AVX2.min(rows - r0);
            let ap = row_ptrs::<MR_AVX2>(a, lda, r0, mr);
            for blk in 0..nb {
                let bp = b.i16s.as_ptr().add(blk * kp * NR);
                let mut acc = [[_mm256_setzero_si256(); 2]; MR_AVX2];
                for k2 in 0..kp / 2 {
                    let b0 = _mm256_loadu_si256(bp.add(k2 * 2 * NR) as *const _);
                    let b1 = _mm256_loadu_si256(bp.add(k2 * 2 * NR + 16) as *const _);
                    for r in 0..MR_AVX2 {
                        let pair = (ap[r].add(k2 * 2) as *const u16).read_unaligned();
                        // Two u8 widened into the two i16 halves of an i32.
                        let v = i32::from(pair & 0xff) | (i32::from(pair >> 8) << 16);
                        let av = _mm256_set1_epi32(v);
                        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, b0));
                        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, b1));
                    }
                }
                let cols = NR.min(n - blk * NR);
                let mut tmp = [0i32; NR];
                for r in 0..mr {
                    _mm256_storeu_si256(tmp.as_mut_ptr() as *mut _, acc[r][0]);
                    _mm256_storeu_si256(tmp.as_mut_ptr().add(8) as *mut _, acc[r][1]);
                    let o = (r0 + r) * n + blk * NR;
                    out[o..o + cols].copy_from_slice(&tmp[..cols]);
                }
            }
            r0 += MR_AVX2;
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::PackedB;
    use std::arch::aarch64::*;

    const MR: usize = 4;
    const NR: usize = 16;

    /// `acc += Σ_t b[4j + t] * a[t]` for the four lanes j: one `sdot` with
    /// the activations' four bytes taken from lane 0 of `a`.
    #[inline(always)]
    unsafe fn sdot_lane0(acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        core::arch::asm!(
            "sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[0]",
            acc = inout(vreg) acc,
            b = in(vreg) b,
            a = in(vreg) a,
            options(pure, nomem, nostack)
        );
        acc
    }

    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn qgemm_neon_dot(
        rows: usize,
        a: &[u8],
        lda: usize,
        b: &PackedB,
        out: &mut [i32],
    ) {
        let (n, kp) = (b.n, b.kp);
        let nb = n.div_ceil(NR);
        let mut r0 = 0;
        while r0 < rows {
            let mr = MR.min(rows - r0);
            let mut ap = [a.as_ptr(); MR];
            for (i, slot) in ap.iter_mut().enumerate() {
                *slot = a[(r0 + i.min(mr - 1)) * lda..].as_ptr();
            }
            for blk in 0..nb {
                let bp = b.i8s.as_ptr().add(blk * kp * NR);
                let mut acc = [[vdupq_n_s32(0); 4]; MR];
                for k4 in 0..kp / 4 {
                    let bv = [
                        vld1q_s8(bp.add(k4 * 64)),
                        vld1q_s8(bp.add(k4 * 64 + 16)),
                        vld1q_s8(bp.add(k4 * 64 + 32)),
                        vld1q_s8(bp.add(k4 * 64 + 48)),
                    ];
                    for r in 0..MR {
                        // u8 → i8 by subtracting 128 (flip the top bit).
                        let x = (ap[r].add(k4 * 4) as *const u32).read_unaligned() ^ 0x8080_8080;
                        let av = vreinterpretq_s8_u32(vdupq_n_u32(x));
                        for j in 0..4 {
                            acc[r][j] = sdot_lane0(acc[r][j], bv[j], av);
                        }
                    }
                }
                let cols = NR.min(n - blk * NR);
                let mut tmp = [0i32; NR];
                for r in 0..mr {
                    for j in 0..4 {
                        vst1q_s32(tmp.as_mut_ptr().add(4 * j), acc[r][j]);
                    }
                    let o = (r0 + r) * n + blk * NR;
                    for c in 0..cols {
                        // Undo the shift: Σ x·s = Σ (x - 128)·s + 128·Σ s.
                        out[o + c] = tmp[c] + 128 * b.ssum[blk * NR + c];
                    }
                }
            }
            r0 += MR;
        }
    }
}

/// ONNX `DynamicQuantizeLinear` parameters for values in `[lo, hi]`.
pub fn dynamic_qparams(lo: f32, hi: f32) -> (f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    if scale == 0.0 {
        return (0.0, 0);
    }
    let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as i32;
    (scale, zp)
}

#[inline]
pub fn quantize(x: f32, scale: f32, zp: i32) -> u8 {
    if scale == 0.0 {
        return zp as u8;
    }
    ((x / scale).round_ties_even() + zp as f32).clamp(0.0, 255.0) as u8
}

/// An int8 conv layer ready to run.
#[derive(Debug, Clone)]
pub struct QConv {
    pub shape: ConvShape,
    packed: PackedB,
    /// Per output channel: weight zero point, scale, Σ_k (w - wz).
    wzp: Vec<i32>,
    wscale: Vec<f32>,
    colsum: Vec<i32>,
    pub bias: Vec<f32>,
    pub silu: bool,
}

impl QConv {
    /// From OIHW u8 weights with per-channel zero points and scales.
    pub fn from_oihw(
        kernel: QKernel,
        shape: ConvShape,
        w_oihw: &[u8],
        wzp: &[u8],
        wscale: &[f32],
        bias: Vec<f32>,
        silu: bool,
    ) -> Self {
        let ConvShape { cin, cout, k, .. } = shape;
        let kd = shape.kdim();
        let mut w_nk = vec![0u8; cout * kd];
        for o in 0..cout {
            for i in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        w_nk[o * kd + (ky * k + kx) * cin + i] =
                            w_oihw[((o * cin + i) * k + ky) * k + kx];
                    }
                }
            }
        }
        let colsum = (0..cout)
            .map(|o| {
                w_nk[o * kd..(o + 1) * kd]
                    .iter()
                    .map(|&w| i32::from(w) - i32::from(wzp[o]))
                    .sum()
            })
            .collect();
        Self {
            shape,
            packed: PackedB::pack(kernel, &w_nk, cout, kd),
            wzp: wzp.iter().map(|&z| i32::from(z)).collect(),
            wscale: wscale.to_vec(),
            colsum,
            bias,
            silu,
        }
    }
}

thread_local! {
    static QSCRATCH: RefCell<(Vec<u8>, Vec<i32>, Vec<i32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Quantizes a view per tensor into a contiguous `h*w*c` buffer (in
/// parallel on the current rayon pool: both passes are memory-bound).
pub fn quantize_view(x: &ActView<'_>) -> (Vec<u8>, f32, i32) {
    let pixels = x.h * x.w;
    let chunk = 1024;
    let (lo, hi) = (0..pixels.div_ceil(chunk))
        .into_par_iter()
        .map(|t| {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for p in t * chunk..((t + 1) * chunk).min(pixels) {
                for &v in &x.data[p * x.pixel_stride..p * x.pixel_stride + x.c] {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
            (lo, hi)
        })
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        );
    let (scale, zp) = dynamic_qparams(lo, hi);
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    let mut q = vec![0u8; pixels * x.c];
    q.par_chunks_mut(chunk * x.c)
        .enumerate()
        .for_each(|(t, dst)| {
            for (i, d) in dst.chunks_exact_mut(x.c).enumerate() {
                let p = t * chunk + i;
                let src = &x.data[p * x.pixel_stride..p * x.pixel_stride + x.c];
                for (d, &v) in d.iter_mut().zip(src) {
                    // Multiplying by the reciprocal rounds like ONNX's division
                    // except at rare exact ties.
                    *d = ((v * inv).round_ties_even() + zp as f32).clamp(0.0, 255.0) as u8;
                }
            }
        });
    (q, scale, zp)
}

/// Runs one int8 conv (+bias, +SiLU) on an f32 NHWC input, f32 output.
pub fn conv2d_q(x: &ActView<'_>, conv: &QConv, threads: usize) -> (Vec<f32>, usize, usize) {
    let s = conv.shape;
    assert_eq!(x.c, s.cin, "conv input channels");
    let (q, xs, xzp) = quantize_view(x);
    let (ho, wo) = s.out_hw(x.h, x.w);
    let (m, n, kd, kp) = (ho * wo, s.cout, s.kdim(), conv.packed.kp());
    let mut out = vec![0f32; m * n];
    let tm = tile_rows(m, threads);
    let direct = s.k == 1 && s.stride == 1 && s.pad == 0 && kd == kp;
    out.par_chunks_mut(tm * n).enumerate().for_each(|(t, dst)| {
        let m0 = t * tm;
        let rows = dst.len() / n;
        QSCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (col, acc, rowsum) = &mut *guard;
            acc.resize(rows * n, 0);
            rowsum.resize(rows, 0);
            let (a, lda): (&[u8], usize) = if direct {
                let a = &q[m0 * kd..(m0 + rows) * kd];
                for (r, rs) in rowsum.iter_mut().enumerate() {
                    *rs = a[r * kd..(r + 1) * kd].iter().map(|&v| i32::from(v)).sum();
                }
                (a, kd)
            } else {
                col.resize(rows * kp, 0);
                gather_u8(&q, x.h, x.w, &s, wo, m0, rows, xzp as u8, kp, col, rowsum);
                (&col[..rows * kp], kp)
            };
            qgemm(rows, a, lda, &conv.packed, acc);
            for r in 0..rows {
                let rs = rowsum[r];
                let drow = &mut dst[r * n..(r + 1) * n];
                let arow = &acc[r * n..(r + 1) * n];
                for o in 0..n {
                    let exact = arow[o] + (128 - conv.wzp[o]) * rs - xzp * conv.colsum[o];
                    drow[o] = exact as f32 * (xs * conv.wscale[o]);
                }
            }
        });
        bias_act(dst, &conv.bias, conv.silu);
    });
    (out, ho, wo)
}

/// im2col on the quantized input; pads with the zero point (as ConvInteger
/// does), zero-fills K..kp, and sums each row.
#[allow(clippy::too_many_arguments)]
fn gather_u8(
    q: &[u8],
    h: usize,
    w: usize,
    s: &ConvShape,
    wo: usize,
    m0: usize,
    rows: usize,
    zp: u8,
    kp: usize,
    col: &mut [u8],
    rowsum: &mut [i32],
) {
    let c = s.cin;
    for r in 0..rows {
        let m = m0 + r;
        let (oy, ox) = (m / wo, m % wo);
        let row = &mut col[r * kp..(r + 1) * kp];
        for ky in 0..s.k {
            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
            for kx in 0..s.k {
                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                let dst = &mut row[(ky * s.k + kx) * c..(ky * s.k + kx + 1) * c];
                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                    dst.fill(zp);
                } else {
                    let p = (iy as usize * w + ix as usize) * c;
                    dst.copy_from_slice(&q[p..p + c]);
                }
            }
        }
        row[s.kdim()..].fill(0);
        rowsum[r] = row.iter().map(|&v| i32::from(v)).sum();
    }
}

/// Reference ConvInteger + scale + bias + SiLU with the same quantization, for tests.
pub fn conv2d_q_naive(
    x: &ActView<'_>,
    shape: &ConvShape,
    w_oihw: &[u8],
    wzp: &[u8],
    wscale: &[f32],
    bias: &[f32],
    silu: bool,
) -> Vec<f32> {
    let s = *shape;
    let (q, xs, xzp) = quantize_view(x);
    let (ho, wo) = s.out_hw(x.h, x.w);
    let mut out = vec![0f32; ho * wo * s.cout];
    for oy in 0..ho {
        for ox in 0..wo {
            for o in 0..s.cout {
                let mut acc = 0i32;
                for ky in 0..s.k {
                    for kx in 0..s.k {
                        let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                        let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                        for i in 0..s.cin {
                            let xv = if iy < 0 || ix < 0 || iy as usize >= x.h || ix as usize >= x.w
                            {
                                xzp
                            } else {
                                i32::from(q[(iy as usize * x.w + ix as usize) * s.cin + i])
                            };
                            let wv = i32::from(w_oihw[((o * s.cin + i) * s.k + ky) * s.k + kx]);
                            acc += (xv - xzp) * (wv - i32::from(wzp[o]));
                        }
                    }
                }
                let mut v = acc as f32 * (xs * wscale[o]) + bias[o];
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
mod tests {
    use super::super::conv::tests::{random_case, Rng};
    use super::*;

    /// The run-time choice is the fastest kernel the CPU has, so the other
    /// tests here really exercise it. `EDGEQI_EXPECT_QKERNEL` (set by
    /// scripts/test for its aarch64 run under qemu) names the kernel that
    /// must be chosen, so an emulated CPU that silently lacks dot product
    /// fails instead of testing only the scalar fallback.
    #[test]
    fn the_fastest_kernel_this_cpu_has_is_chosen() {
        let chosen = QKernel::detect();
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            assert_eq!(chosen, QKernel::NeonDot);
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            assert_eq!(chosen, QKernel::Avx512Vnni);
        } else if std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(chosen, QKernel::Avx2);
        }
        let available = QKernel::available();
        assert!(available.contains(&chosen) && available.contains(&QKernel::Scalar));
        if let Ok(want) = std::env::var("EDGEQI_EXPECT_QKERNEL") {
            assert_eq!(chosen.name(), want, "kernels available: {available:?}");
        }
    }

    #[test]
    fn every_kernel_matches_the_scalar_gemm() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for case in 0..60 {
            let (rows, n, k) = (1 + rng.below(23), 1 + rng.below(77), 1 + rng.below(300));
            let kp = k.div_ceil(4) * 4;
            let lda = kp + rng.below(3) * 4;
            let mut a: Vec<u8> = (0..rows * lda).map(|_| rng.next() as u8).collect();
            for r in 0..rows {
                a[r * lda + k..r * lda + kp].fill(0);
            }
            let w: Vec<u8> = (0..n * k).map(|_| rng.next() as u8).collect();
            let naive: Vec<i32> = (0..rows * n)
                .map(|i| {
                    let (r, o) = (i / n, i % n);
                    (0..k)
                        .map(|kk| i32::from(a[r * lda + kk]) * (i32::from(w[o * k + kk]) - 128))
                        .sum()
                })
                .collect();
            for kernel in QKernel::available() {
                let b = PackedB::pack(kernel, &w, n, k);
                let mut out = vec![0i32; rows * n];
                qgemm(rows, &a, lda, &b, &mut out);
                assert_eq!(
                    out,
                    naive,
                    "case {case}: {} kernel, rows {rows} n {n} k {k}",
                    kernel.name()
                );
            }
        }
    }

    #[test]
    fn int8_conv_matches_naive_conv_integer_with_every_kernel() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        for case in 0..30 {
            let (s, h, w) = random_case(&mut rng);
            let data: Vec<f32> = (0..h * w * s.cin).map(|_| rng.f32() * 3.0 + 0.5).collect();
            let x = ActView::contiguous(&data, h, w, s.cin);
            let wq: Vec<u8> = (0..s.cout * s.kdim()).map(|_| rng.next() as u8).collect();
            let zp: Vec<u8> = (0..s.cout).map(|_| 100 + rng.below(56) as u8).collect();
            let sc: Vec<f32> = (0..s.cout)
                .map(|_| 0.001 + rng.f32().abs() * 0.01)
                .collect();
            let bias: Vec<f32> = (0..s.cout).map(|_| rng.f32()).collect();
            let silu = case % 2 == 0;
            let want = conv2d_q_naive(&x, &s, &wq, &zp, &sc, &bias, silu);
            for kernel in QKernel::available() {
                let conv = QConv::from_oihw(kernel, s, &wq, &zp, &sc, bias.clone(), silu);
                let (got, _, _) = pool.install(|| conv2d_q(&x, &conv, 2));
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "case {case} {} {s:?} {h}x{w} at {i}: {g} vs {e}",
                        kernel.name()
                    );
                }
            }
        }
    }

    #[test]
    fn dynamic_quantization_follows_onnx() {
        assert_eq!(dynamic_qparams(0.0, 0.0), (0.0, 0));
        let (s, z) = dynamic_qparams(-0.5, 2.05);
        assert!((s - 0.01).abs() < 1e-9);
        assert_eq!(z, 50, "zero point maps 0.0 exactly");
        assert_eq!(quantize(0.0, s, z), 50);
        let (s, z) = dynamic_qparams(0.5, 2.55);
        assert_eq!((s, z), (0.01, 0));
        assert_eq!(quantize(2.55, s, z), 255);
        assert_eq!(quantize(-1.0, s, z), 0);
    }
}

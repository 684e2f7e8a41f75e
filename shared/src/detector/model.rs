//! The YOLOv8 detect network in candle: one struct per block (`ConvBlock`,
//! `Bottleneck`, `C2f`, `Sppf`, `DetectHead`), activations as candle
//! tensors in HWC layout (batch 1), convolutions as candle CPU custom ops
//! running our kernels ([`super::conv`], [`super::qconv`]).
//!
//! Every scale (n/s/m/l/x) shares the same 23-layer graph; widths, repeats
//! and the class count are read from the weights' shapes, not configured.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::conv::{conv2d_f32, ActView, ConvShape, F32Conv};
use super::qconv::{conv2d_q, QConv, QKernel};
use super::weights::Weights;
use super::{DetectorError, Precision};

fn candle_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Borrow a candle storage laid out as (H, W, C) with unit channel stride.
fn with_view<R>(
    storage: &CpuStorage,
    layout: &Layout,
    f: impl FnOnce(ActView<'_>) -> R,
) -> candle_core::Result<R> {
    let data = storage.as_slice::<f32>()?;
    let (h, w, c) = layout.shape().dims3()?;
    let st = layout.stride();
    if st[2] != 1 || st[0] != w * st[1] {
        return Err(candle_err(format!("unsupported activation strides {st:?}")));
    }
    let view = ActView {
        data: &data[layout.start_offset()..],
        h,
        w,
        c,
        pixel_stride: st[1],
    };
    Ok(f(view))
}

/// Concatenates HWC tensors along channels into one contiguous tensor.
/// (candle's `cat` on the last dim returns a transposed layout our kernels
/// would have to copy again.)
fn cat_channels(parts: &[&Tensor]) -> candle_core::Result<Tensor> {
    profiled("concat", || cat_channels_inner(parts))
}

fn cat_channels_inner(parts: &[&Tensor]) -> candle_core::Result<Tensor> {
    let (h, w, _) = parts[0].dims3()?;
    let total: usize = parts
        .iter()
        .map(|t| t.dim(2))
        .sum::<candle_core::Result<usize>>()?;
    let mut out = vec![0f32; h * w * total];
    let mut c0 = 0;
    for t in parts {
        let (storage, layout) = t.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            return Err(candle_err("detector tensors live on the CPU"));
        };
        let c = with_view(cpu, layout, |x| {
            for p in 0..h * w {
                out[p * total + c0..p * total + c0 + x.c].copy_from_slice(x.pixel(p / w, p % w));
            }
            x.c
        })?;
        c0 += c;
    }
    Tensor::from_vec(out, (h, w, total), parts[0].device())
}

/// Per-layer timings, collected only while [`profile_start`] is active.
static PROFILE: std::sync::Mutex<Option<Vec<(String, std::time::Duration)>>> =
    std::sync::Mutex::new(None);

fn profiled<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let on = PROFILE.lock().map(|p| p.is_some()).unwrap_or(false);
    if !on {
        return f();
    }
    let t0 = std::time::Instant::now();
    let out = f();
    if let Ok(mut p) = PROFILE.lock() {
        if let Some(v) = p.as_mut() {
            v.push((name.to_owned(), t0.elapsed()));
        }
    }
    out
}

pub(crate) fn record(name: &str, d: std::time::Duration) {
    if let Ok(mut p) = PROFILE.lock() {
        if let Some(v) = p.as_mut() {
            v.push((name.to_owned(), d));
        }
    }
}

/// Starts recording per-layer timings (process-wide).
pub fn profile_start() {
    if let Ok(mut p) = PROFILE.lock() {
        *p = Some(Vec::new());
    }
}

/// Stops recording and returns `(layer, time)` in execution order.
pub fn profile_take() -> Vec<(String, std::time::Duration)> {
    PROFILE
        .lock()
        .ok()
        .and_then(|mut p| p.take())
        .unwrap_or_default()
}

#[derive(Debug)]
enum ConvImpl {
    F32(F32Conv),
    Int8(QConv),
}

/// Conv (batch-norm fused) + bias + optional SiLU.
#[derive(Debug)]
pub struct ConvBlock {
    name: String,
    imp: ConvImpl,
    threads: usize,
}

impl CustomOp1 for ConvBlock {
    fn name(&self) -> &'static str {
        "edgeqi-conv2d-nhwc"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, ho, wo, c) = with_view(storage, layout, |x| match &self.imp {
            ConvImpl::F32(conv) => {
                let (o, ho, wo) = conv2d_f32(&x, conv, self.threads);
                (o, ho, wo, conv.shape.cout)
            }
            ConvImpl::Int8(conv) => {
                let (o, ho, wo) = conv2d_q(&x, conv, self.threads);
                (o, ho, wo, conv.shape.cout)
            }
        })?;
        Ok((CpuStorage::F32(out), Shape::from((ho, wo, c))))
    }
}

/// What [`ConvBlock::load`] needs besides the weights.
#[derive(Debug, Clone, Copy)]
pub struct LoadCtx {
    pub precision: Precision,
    pub kernel: QKernel,
    pub threads: usize,
}

impl ConvBlock {
    /// Loads `{prefix}.weight`/`.bias` (f32) or `{prefix}.weight_q`/`_zp`/`_scale` (int8).
    pub fn load(
        w: &Weights,
        prefix: &str,
        stride: usize,
        silu: bool,
        ctx: &LoadCtx,
    ) -> Result<Self, DetectorError> {
        let dims = w
            .shape(&format!("{prefix}.weight_q"))
            .or_else(|_| w.shape(&format!("{prefix}.weight")))?;
        let [cout, cin, kh, kw] = dims[..] else {
            return Err(DetectorError::Model(format!(
                "{prefix}: weight is not 4-D ({dims:?})"
            )));
        };
        if kh != kw {
            return Err(DetectorError::Model(format!(
                "{prefix}: non-square kernel {kh}x{kw}"
            )));
        }
        let shape = ConvShape {
            cin,
            cout,
            k: kh,
            stride,
            pad: kh / 2,
        };
        let bias = w.f32(&format!("{prefix}.bias"), &[cout])?;
        let imp = match ctx.precision {
            Precision::F32 => {
                let wt = w.f32(&format!("{prefix}.weight"), &[cout, cin, kh, kw])?;
                ConvImpl::F32(F32Conv::from_oihw(shape, &wt, bias, silu))
            }
            Precision::Int8 => {
                let wq = w.u8(&format!("{prefix}.weight_q"), &[cout, cin, kh, kw])?;
                let zp = w.u8(&format!("{prefix}.weight_zp"), &[cout])?;
                let sc = w.f32(&format!("{prefix}.weight_scale"), &[cout])?;
                ConvImpl::Int8(QConv::from_oihw(
                    ctx.kernel, shape, &wq, &zp, &sc, bias, silu,
                ))
            }
        };
        Ok(Self {
            name: prefix.to_owned(),
            imp,
            threads: ctx.threads,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        profiled(&self.name, || x.apply_op1_no_bwd(self))
    }

    pub fn cout(&self) -> usize {
        match &self.imp {
            ConvImpl::F32(c) => c.shape.cout,
            ConvImpl::Int8(c) => c.shape.cout,
        }
    }
}

#[derive(Debug)]
struct Bottleneck {
    cv1: ConvBlock,
    cv2: ConvBlock,
    residual: bool,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.cv2.forward(&self.cv1.forward(x)?)?;
        if self.residual {
            x + y
        } else {
            Ok(y)
        }
    }
}

/// CSP bottleneck with two convolutions, the YOLOv8 workhorse.
#[derive(Debug)]
struct C2f {
    cv1: ConvBlock,
    cv2: ConvBlock,
    m: Vec<Bottleneck>,
}

impl C2f {
    fn load(
        w: &Weights,
        layer: usize,
        shortcut: bool,
        ctx: &LoadCtx,
    ) -> Result<Self, DetectorError> {
        let p = format!("model.{layer}");
        let cv1 = ConvBlock::load(w, &format!("{p}.cv1.conv"), 1, true, ctx)?;
        let cv2 = ConvBlock::load(w, &format!("{p}.cv2.conv"), 1, true, ctx)?;
        let mut m = Vec::new();
        while w.contains(&format!("{p}.m.{}.cv1.conv.bias", m.len())) {
            let i = m.len();
            m.push(Bottleneck {
                cv1: ConvBlock::load(w, &format!("{p}.m.{i}.cv1.conv"), 1, true, ctx)?,
                cv2: ConvBlock::load(w, &format!("{p}.m.{i}.cv2.conv"), 1, true, ctx)?,
                residual: shortcut,
            });
        }
        if m.is_empty() {
            return Err(DetectorError::Model(format!(
                "{p}: C2f block without bottlenecks"
            )));
        }
        Ok(Self { cv1, cv2, m })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.cv1.forward(x)?;
        let c = self.cv1.cout() / 2;
        let mut parts = vec![y.narrow(2, 0, c)?, y.narrow(2, c, c)?];
        for b in &self.m {
            let last = parts.last().ok_or_else(|| candle_err("empty C2f"))?;
            let next = b.forward(last)?;
            parts.push(next);
        }
        self.cv2
            .forward(&cat_channels(&parts.iter().collect::<Vec<_>>())?)
    }
}

/// 5x5 stride-1 max pooling with 2 pixels of padding, on HWC.
#[derive(Debug)]
struct MaxPool5;

impl CustomOp1 for MaxPool5 {
    fn name(&self) -> &'static str {
        "edgeqi-maxpool5-nhwc"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, h, w, c) = with_view(storage, layout, |x| {
            // Separable: rows then columns.
            let mut rows = vec![f32::NEG_INFINITY; x.h * x.w * x.c];
            for y in 0..x.h {
                for xx in 0..x.w {
                    let dst = &mut rows[(y * x.w + xx) * x.c..(y * x.w + xx + 1) * x.c];
                    for sx in xx.saturating_sub(2)..(xx + 3).min(x.w) {
                        for (d, &v) in dst.iter_mut().zip(x.pixel(y, sx)) {
                            *d = d.max(v);
                        }
                    }
                }
            }
            let mut out = vec![f32::NEG_INFINITY; x.h * x.w * x.c];
            for y in 0..x.h {
                for sy in y.saturating_sub(2)..(y + 3).min(x.h) {
                    let (dst, src) = (y * x.w * x.c, sy * x.w * x.c);
                    for i in 0..x.w * x.c {
                        out[dst + i] = out[dst + i].max(rows[src + i]);
                    }
                }
            }
            (out, x.h, x.w, x.c)
        })?;
        Ok((CpuStorage::F32(out), Shape::from((h, w, c))))
    }
}

/// Nearest-neighbour 2x upsampling on HWC.
#[derive(Debug)]
struct Upsample2;

impl CustomOp1 for Upsample2 {
    fn name(&self) -> &'static str {
        "edgeqi-upsample2-nhwc"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, h, w, c) = with_view(storage, layout, |x| {
            let (h, w, c) = (x.h * 2, x.w * 2, x.c);
            let mut out = vec![0f32; h * w * c];
            for y in 0..h {
                for xx in 0..w {
                    out[(y * w + xx) * c..(y * w + xx + 1) * c]
                        .copy_from_slice(x.pixel(y / 2, xx / 2));
                }
            }
            (out, h, w, c)
        })?;
        Ok((CpuStorage::F32(out), Shape::from((h, w, c))))
    }
}

/// Spatial pyramid pooling, fast.
#[derive(Debug)]
struct Sppf {
    cv1: ConvBlock,
    cv2: ConvBlock,
}

impl Sppf {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.cv1.forward(x)?;
        let (y1, y2, y3) = profiled("maxpool", || -> candle_core::Result<_> {
            let y1 = x.apply_op1_no_bwd(&MaxPool5)?;
            let y2 = y1.apply_op1_no_bwd(&MaxPool5)?;
            let y3 = y2.apply_op1_no_bwd(&MaxPool5)?;
            Ok((y1, y2, y3))
        })?;
        self.cv2.forward(&cat_channels(&[&x, &y1, &y2, &y3])?)
    }
}

/// One level of the decoupled head: box-distribution and class branches.
#[derive(Debug)]
struct HeadLevel {
    box_branch: [ConvBlock; 3],
    cls_branch: [ConvBlock; 3],
}

/// Raw head output of one level, HWC: `box_logits` has `4 * reg_max`
/// channels, `cls_logits` one per class.
#[derive(Debug)]
pub struct LevelOutput {
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    pub box_logits: Vec<f32>,
    pub cls_logits: Vec<f32>,
}

/// The whole network.
#[derive(Debug)]
pub struct YoloV8 {
    stem: [ConvBlock; 2],
    c2: C2f,
    d3: ConvBlock,
    c4: C2f,
    d5: ConvBlock,
    c6: C2f,
    d7: ConvBlock,
    c8: C2f,
    sppf: Sppf,
    c12: C2f,
    c15: C2f,
    d16: ConvBlock,
    c18: C2f,
    d19: ConvBlock,
    c21: C2f,
    head: Vec<HeadLevel>,
    pub num_classes: usize,
    pub reg_max: usize,
}

impl YoloV8 {
    pub fn load(w: &Weights, ctx: &LoadCtx) -> Result<Self, DetectorError> {
        let conv = |name: &str, stride, silu| ConvBlock::load(w, name, stride, silu, ctx);
        let c2f = |layer, shortcut| C2f::load(w, layer, shortcut, ctx);
        let mut head = Vec::new();
        for i in 0..3 {
            let p = "model.22";
            head.push(HeadLevel {
                box_branch: [
                    conv(&format!("{p}.cv2.{i}.0.conv"), 1, true)?,
                    conv(&format!("{p}.cv2.{i}.1.conv"), 1, true)?,
                    conv(&format!("{p}.cv2.{i}.2"), 1, false)?,
                ],
                cls_branch: [
                    conv(&format!("{p}.cv3.{i}.0.conv"), 1, true)?,
                    conv(&format!("{p}.cv3.{i}.1.conv"), 1, true)?,
                    conv(&format!("{p}.cv3.{i}.2"), 1, false)?,
                ],
            });
        }
        let num_classes = head[0].cls_branch[2].cout();
        let box_ch = head[0].box_branch[2].cout();
        if box_ch % 4 != 0 {
            return Err(DetectorError::Model(format!(
                "box branch has {box_ch} channels, not 4 x reg_max"
            )));
        }
        Ok(Self {
            stem: [
                conv("model.0.conv", 2, true)?,
                conv("model.1.conv", 2, true)?,
            ],
            c2: c2f(2, true)?,
            d3: conv("model.3.conv", 2, true)?,
            c4: c2f(4, true)?,
            d5: conv("model.5.conv", 2, true)?,
            c6: c2f(6, true)?,
            d7: conv("model.7.conv", 2, true)?,
            c8: c2f(8, true)?,
            sppf: Sppf {
                cv1: conv("model.9.cv1.conv", 1, true)?,
                cv2: conv("model.9.cv2.conv", 1, true)?,
            },
            c12: c2f(12, false)?,
            c15: c2f(15, false)?,
            d16: conv("model.16.conv", 2, true)?,
            c18: c2f(18, false)?,
            d19: conv("model.19.conv", 2, true)?,
            c21: c2f(21, false)?,
            head,
            num_classes,
            reg_max: box_ch / 4,
        })
    }

    /// Runs the network on an HWC f32 image; returns the three head levels
    /// (strides 8, 16, 32).
    pub fn forward(&self, img: &Tensor) -> candle_core::Result<Vec<LevelOutput>> {
        let x = self.stem[1].forward(&self.stem[0].forward(img)?)?;
        let x = self.c2.forward(&x)?;
        let p3 = self.c4.forward(&self.d3.forward(&x)?)?;
        let p4 = self.c6.forward(&self.d5.forward(&p3)?)?;
        let x = self.c8.forward(&self.d7.forward(&p4)?)?;
        let p5 = self.sppf.forward(&x)?;
        let up = profiled("upsample", || p5.apply_op1_no_bwd(&Upsample2))?;
        let n4 = self.c12.forward(&cat_channels(&[&up, &p4])?)?;
        let up = profiled("upsample", || n4.apply_op1_no_bwd(&Upsample2))?;
        let o3 = self.c15.forward(&cat_channels(&[&up, &p3])?)?;
        let o4 = self
            .c18
            .forward(&cat_channels(&[&self.d16.forward(&o3)?, &n4])?)?;
        let o5 = self
            .c21
            .forward(&cat_channels(&[&self.d19.forward(&o4)?, &p5])?)?;
        let mut out = Vec::with_capacity(3);
        for (level, (feat, stride)) in self.head.iter().zip([(o3, 8), (o4, 16), (o5, 32)]) {
            let (h, w, _) = feat.dims3()?;
            let run = |branch: &[ConvBlock; 3]| -> candle_core::Result<Vec<f32>> {
                let mut t = feat.clone();
                for c in branch {
                    t = c.forward(&t)?;
                }
                t.flatten_all()?.to_vec1::<f32>()
            };
            out.push(LevelOutput {
                h,
                w,
                stride,
                box_logits: run(&level.box_branch)?,
                cls_logits: run(&level.cls_branch)?,
            });
        }
        Ok(out)
    }
}

//! The YOLOv8 detector: model import, the network in candle with our own
//! f32 and int8 convolution kernels, and the pre/post-processing that makes
//! its boxes match the reference (onnxruntime on the Ultralytics export).
//!
//! Use: [`Yolo::load`] an imported `.safetensors` once, then
//! [`Yolo::detect_rgb`] per frame. Work runs on the detector's own rayon
//! pool of `threads` threads, so `threads` bounds the CPU it takes.

pub mod conv;
pub mod decode;
pub mod image_ops;
pub mod import;
mod model;
pub mod onnx;
pub mod qconv;
pub mod weights;

use std::path::Path;
use std::str::FromStr;

use candle_core::{Device, Tensor};

use image_ops::{letterbox, nms, Candidate};
pub use model::{profile_start, profile_take};
use model::{LevelOutput, LoadCtx, YoloV8};
pub use qconv::QKernel;
use weights::{ModelMeta, Weights};

/// Default minimum class score.
pub const fn default_conf_threshold() -> f32 {
    0.25
}

/// Default NMS IoU threshold.
pub const fn default_iou_threshold() -> f32 {
    0.45
}

/// Errors loading or running the detector.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Import(String),
    #[error("model: {0}")]
    Model(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("bad image: {0}")]
    BadImage(String),
}

impl From<candle_core::Error> for DetectorError {
    fn from(e: candle_core::Error) -> Self {
        Self::Inference(e.to_string())
    }
}

/// Arithmetic of the convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// u8 activations quantized per conv at run time, int8 weights, i32 sums.
    Int8,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Self::F32),
            "int8" | "i8" => Ok(Self::Int8),
            other => Err(format!("unknown precision {other:?}: use f32 or int8")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        })
    }
}

/// How to run a detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorOptions {
    pub precision: Precision,
    /// Threads for one inference (≥ 1).
    pub threads: usize,
    pub conf_threshold: f32,
    pub iou_threshold: f32,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self {
            precision: Precision::Int8,
            threads: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1),
            conf_threshold: default_conf_threshold(),
            iou_threshold: default_iou_threshold(),
        }
    }
}

/// One detected object, in source-image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub class_id: usize,
    pub label: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
}

/// A loaded YOLOv8 detector.
#[derive(Debug)]
pub struct Yolo {
    net: YoloV8,
    meta: ModelMeta,
    options: DetectorOptions,
    pool: rayon::ThreadPool,
    kernel: QKernel,
}

impl Yolo {
    /// Loads an imported model file, or an Ultralytics ONNX export
    /// (`*.onnx`), which is then imported in memory first: that costs a
    /// second or two at every start, which `model import` saves.
    pub fn load(path: &Path, options: DetectorOptions) -> Result<Self, DetectorError> {
        let onnx = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
        let weights = if onnx {
            let (_, bytes) = import::import_onnx_to_bytes(path, &mut |_, _| {})?;
            Weights::from_bytes(bytes)?
        } else {
            Weights::open(path)?
        };
        Self::from_weights(&weights, options)
    }

    pub fn from_weights(
        weights: &Weights,
        options: DetectorOptions,
    ) -> Result<Self, DetectorError> {
        let threads = options.threads.max(1);
        let kernel = QKernel::detect();
        let ctx = LoadCtx {
            precision: options.precision,
            kernel,
            threads,
        };
        let net = YoloV8::load(weights, &ctx)?;
        if net.num_classes != weights.meta.names.len() {
            return Err(DetectorError::Model(format!(
                "{} class names for a head with {} classes",
                weights.meta.names.len(),
                net.num_classes
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("yolo-{i}"))
            .build()
            .map_err(|e| {
                DetectorError::Inference(format!("cannot start {threads} threads: {e}"))
            })?;
        Ok(Self {
            net,
            meta: weights.meta.clone(),
            options: DetectorOptions { threads, ..options },
            pool,
            kernel,
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.meta.names
    }

    pub fn input_size(&self) -> (usize, usize) {
        self.meta.imgsz
    }

    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// The int8 kernel chosen for this CPU.
    pub fn kernel(&self) -> QKernel {
        self.kernel
    }

    /// Detects objects in an RGB8 image (rows top to bottom, 3 bytes per pixel).
    pub fn detect_rgb(
        &self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Vec<Detection>, DetectorError> {
        if width == 0 || height == 0 || rgb.len() != width * height * 3 {
            return Err(DetectorError::BadImage(format!(
                "{width}x{height} needs {} bytes of RGB, got {}",
                width * height * 3,
                rgb.len()
            )));
        }
        let (ih, iw) = self.meta.imgsz;
        let t_pre = std::time::Instant::now();
        let (input, lb) = letterbox(rgb, width, height, iw, ih);
        model::record("letterbox", t_pre.elapsed());
        let levels = self.pool.install(|| -> Result<_, DetectorError> {
            let t = Tensor::from_vec(input, (ih, iw, 3), &Device::Cpu)?;
            Ok(self.net.forward(&t)?)
        })?;
        let t_post = std::time::Instant::now();
        let cands = decode(
            &levels,
            self.net.num_classes,
            self.net.reg_max,
            self.options.conf_threshold,
            self.options.precision == Precision::Int8,
        );
        let kept = nms(cands, self.options.iou_threshold);
        model::record("decode+nms", t_post.elapsed());
        Ok(kept
            .into_iter()
            .map(|c| Detection {
                class_id: c.class_id,
                label: self.meta.names[c.class_id].clone(),
                score: c.score,
                bbox: lb.unmap(c.bbox),
            })
            .collect())
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Head outputs → candidate boxes in model pixels (score > `conf`).
///
/// `quantized_dfl` reproduces the int8 export, where the DFL projection is
/// itself a `ConvInteger` on the softmax quantized per tensor to u8.
fn decode(
    levels: &[LevelOutput],
    nc: usize,
    reg_max: usize,
    conf: f32,
    quantized_dfl: bool,
) -> Vec<Candidate> {
    let softmax = |logits: &[f32], out: &mut [f32]| {
        let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0.0;
        for (o, &l) in out.iter_mut().zip(logits) {
            *o = (l - m).exp();
            sum += *o;
        }
        for o in out.iter_mut() {
            *o /= sum;
        }
    };
    let mut probs = vec![0f32; reg_max];
    // The int8 export quantizes all softmax outputs with one scale: max / 255.
    let q_scale = if quantized_dfl {
        let mut hi = 0f32;
        for l in levels {
            for side in l.box_logits.chunks_exact(reg_max) {
                softmax(side, &mut probs);
                hi = probs.iter().fold(hi, |a, &b| a.max(b));
            }
        }
        hi / 255.0
    } else {
        0.0
    };
    let mut out = Vec::new();
    for l in levels {
        for a in 0..l.h * l.w {
            let cls = &l.cls_logits[a * nc..(a + 1) * nc];
            let (class_id, best) =
                cls.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                    );
            let score = sigmoid(best);
            if !(score > conf) {
                continue;
            }
            let mut dist = [0f32; 4];
            for (side, d) in dist.iter_mut().enumerate() {
                let logits = &l.box_logits[(a * 4 + side) * reg_max..(a * 4 + side + 1) * reg_max];
                softmax(logits, &mut probs);
                *d = probs
                    .iter()
                    .enumerate()
                    .map(|(j, &p)| {
                        let p = if q_scale > 0.0 {
                            (p / q_scale).round_ties_even() * q_scale
                        } else {
                            p
                        };
                        j as f32 * p
                    })
                    .sum();
            }
            let (ax, ay) = ((a % l.w) as f32 + 0.5, (a / l.w) as f32 + 0.5);
            let s = l.stride as f32;
            out.push(Candidate {
                class_id,
                score,
                bbox: [
                    (ax - dist[0]) * s,
                    (ay - dist[1]) * s,
                    (ax + dist[2]) * s,
                    (ay + dist[3]) * s,
                ],
            });
        }
    }
    out
}

//! The YOLOv8 detector (edgeqi-shared's candle model) behind [`Detector`].
//!
//! The model is loaded once per process and shared by every camera: each
//! camera gets a cheap handle, inference calls serialise on the detector's
//! own thread pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use edgeqi_shared::detector::{DetectorOptions, Precision, Yolo};

use super::{DetectError, Detector, ObjectBox};
use crate::frame::Frame;

/// Precision used unless asked otherwise (`--precision`, `EDGEQI_PRECISION`).
/// f32: on the x86 test box it is as fast as int8 (docs/PERFORMANCE.md) and
/// it reproduces the fp32 reference more closely; int8 is the choice for
/// ARM boxes with the dot-product extension.
pub const fn default_precision() -> Precision {
    Precision::F32
}

/// Where the daemon looks for a model when none is configured.
pub const MODELS_DIR: &str = "models";

/// A camera's handle on the shared model.
#[derive(Debug, Clone)]
pub struct YoloDetector {
    model: Arc<Yolo>,
    name: String,
}

impl YoloDetector {
    pub fn new(model: Arc<Yolo>, model_path: &Path) -> Self {
        let stem = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "yolov8".into());
        let name = format!("{stem}-{}", model.options().precision);
        Self { model, name }
    }
}

impl Detector for YoloDetector {
    fn name(&self) -> &str {
        &self.name
    }

    fn detect(&mut self, frame: &Frame) -> Result<Vec<ObjectBox>, DetectError> {
        let found = self
            .model
            .detect_rgb(&frame.rgb, frame.width as usize, frame.height as usize)
            .map_err(|e| DetectError::Inference(e.to_string()))?;
        Ok(found
            .into_iter()
            .map(|d| ObjectBox {
                class_id: Some(d.class_id as u32),
                label: d.label,
                score: d.score,
                bbox: d.bbox,
            })
            .collect())
    }
}

/// The configured model file, else the first `*.safetensors` in `models/`.
pub fn find_model(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_owned());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(MODELS_DIR)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Options from the environment: `EDGEQI_PRECISION`, `EDGEQI_DETECT_THREADS`.
fn options_from_env() -> DetectorOptions {
    let mut o = DetectorOptions {
        precision: default_precision(),
        ..DetectorOptions::default()
    };
    if let Ok(p) = std::env::var("EDGEQI_PRECISION") {
        match p.parse() {
            Ok(p) => o.precision = p,
            Err(e) => tracing::warn!("EDGEQI_PRECISION: {e}; using {}", o.precision),
        }
    }
    if let Some(n) = std::env::var("EDGEQI_DETECT_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        o.threads = n;
    }
    o
}

type Loaded = Option<(PathBuf, Arc<Yolo>)>;

/// Loads the model once per process; `None` (after a loud warning) when
/// there is none or it cannot be loaded.
pub fn shared_model(configured: Option<&Path>) -> Loaded {
    static LOADED: OnceLock<Mutex<Option<Loaded>>> = OnceLock::new();
    let cell = LOADED.get_or_init(|| Mutex::new(None));
    let mut guard = cell
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(done) = &*guard {
        return done.clone();
    }
    let loaded = match find_model(configured) {
        None => {
            tracing::warn!(
                "NO YOLO MODEL: none configured (--model / EDGEQI_MODEL) and no *.safetensors in {MODELS_DIR}/; \
                 falling back to the motion-blob detector (see models/README.md to import one)"
            );
            None
        }
        Some(path) => match Yolo::load(&path, options_from_env()) {
            Ok(y) => {
                tracing::info!(
                    model = %path.display(),
                    precision = %y.options().precision,
                    threads = y.options().threads,
                    kernel = y.kernel().name(),
                    classes = y.labels().len(),
                    "YOLO detector loaded"
                );
                Some((path, Arc::new(y)))
            }
            Err(e) => {
                tracing::error!(
                    model = %path.display(),
                    "CANNOT LOAD THE YOLO MODEL ({e}); falling back to the motion-blob detector"
                );
                None
            }
        },
    };
    *guard = Some(loaded.clone());
    loaded
}

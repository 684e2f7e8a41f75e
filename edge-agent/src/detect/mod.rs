//! Detectors: find objects in a frame.
//!
//! [`YoloDetector`] (YOLOv8 in candle) when a model is configured or found
//! in `models/`, else the [`MotionBlobDetector`] fallback.

mod motion;
pub mod yolo;

pub use motion::MotionBlobDetector;
pub use yolo::YoloDetector;

use crate::config::AgentConfig;
use crate::frame::Frame;

/// One object found in one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectBox {
    /// Class index in the model's label set; `None` for the motion detector.
    pub class_id: Option<u32>,
    pub label: String,
    /// Confidence in `[0, 1]`.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in source-frame pixels.
    pub bbox: [f32; 4],
}

/// Why a detector could not process a frame.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("frame {width}x{height} has {got} bytes of RGB, expected {expected}")]
    BadFrame {
        width: u32,
        height: u32,
        got: usize,
        expected: usize,
    },
    #[error("detector failed: {0}")]
    Inference(String),
}

/// Finds objects in frames. Stateful: the motion detector remembers the
/// previous frame, so one camera gets one detector.
pub trait Detector: Send {
    /// Short name reported in heartbeats (`motion`, `yolov8n-int8`, …).
    fn name(&self) -> &str;
    fn detect(&mut self, frame: &Frame) -> Result<Vec<ObjectBox>, DetectError>;
}

/// Says once, at start-up, which detector runs and why (loading the YOLO
/// model now, so a bad model is reported before the cameras start).
pub fn announce(config: &AgentConfig) {
    if yolo::shared_model(config.model.as_deref()).is_none() {
        tracing::warn!("using the motion-blob detector: no YOLO detections will be produced");
    }
}

/// A detector for one camera: YOLO (shared, loaded once) when a model is
/// available, else a fresh motion-blob detector.
pub fn for_camera(config: &AgentConfig) -> Box<dyn Detector> {
    match yolo::shared_model(config.model.as_deref()) {
        Some((path, model)) => Box::new(YoloDetector::new(model, &path)),
        None => Box::new(MotionBlobDetector::new(config.motion.clone())),
    }
}

/// Name of the detector [`for_camera`] builds, for heartbeats.
pub fn name(config: &AgentConfig) -> String {
    for_camera(config).name().to_owned()
}

//! Detectors: find objects in a frame.
//!
//! This build has one, [`MotionBlobDetector`]; the YOLOv8 detector arrives
//! with the detector issue and will implement the same [`Detector`] trait.

mod motion;

pub use motion::MotionBlobDetector;

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
}

/// Finds objects in frames. Stateful: the motion detector remembers the
/// previous frame, so one camera gets one detector.
pub trait Detector: Send {
    /// Short name reported in heartbeats (`motion`, `yolov8n-int8`, …).
    fn name(&self) -> &str;
    fn detect(&mut self, frame: &Frame) -> Result<Vec<ObjectBox>, DetectError>;
}

/// Says once, at start-up, which detector runs and why.
pub fn announce(config: &AgentConfig) {
    match &config.model {
        Some(model) => tracing::warn!(
            model = %model.display(),
            "YOLO detection arrives with the detector issue; this build ignores --model and uses the motion-blob detector"
        ),
        None => tracing::info!(
            "no YOLO model loaded (no --model given): using the motion-blob detector fallback"
        ),
    }
}

/// A fresh detector for one camera.
pub fn for_camera(config: &AgentConfig) -> Box<dyn Detector> {
    Box::new(MotionBlobDetector::new(config.motion.clone()))
}

/// Name of the detector [`for_camera`] builds, for heartbeats.
pub fn name(config: &AgentConfig) -> String {
    for_camera(config).name().to_owned()
}

//! [`PhotoAnalyzer`] backed by the project's YOLOv8 detector: the model is
//! loaded once at start-up and shared by every report.

use std::path::Path;

use edgeqi_shared::detector::{DetectorOptions, Yolo};

use super::service::{PhotoAnalyzer, PhotoObject};

#[derive(Debug)]
pub struct YoloAnalyzer {
    model: Yolo,
    name: String,
}

impl YoloAnalyzer {
    /// Loads an imported model (`edgeqi-agent model import FILE.onnx --out FILE`).
    pub fn load(path: &Path) -> Result<Self, String> {
        let model = Yolo::load(path, DetectorOptions::default()).map_err(|e| {
            format!(
                "cannot load the report model {}: {e} (import an ONNX export with `edgeqi-agent model import`)",
                path.display()
            )
        })?;
        let name = format!(
            "{}-{}",
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "yolov8".into()),
            model.options().precision
        );
        Ok(Self { model, name })
    }
}

impl PhotoAnalyzer for YoloAnalyzer {
    fn name(&self) -> &str {
        &self.name
    }

    fn analyze(&self, photo: &image::RgbImage) -> Result<Vec<PhotoObject>, String> {
        let found = self
            .model
            .detect_rgb(
                photo.as_raw(),
                photo.width() as usize,
                photo.height() as usize,
            )
            .map_err(|e| format!("detector failed: {e}"))?;
        Ok(found
            .into_iter()
            .map(|d| PhotoObject {
                label: d.label,
                score: d.score,
                bbox: d.bbox,
            })
            .collect())
    }
}

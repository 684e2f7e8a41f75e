//! The imported model file: safetensors with our tensor names and metadata.
//!
//! Tensors, per conv `P` (`model.N.…conv` or a head's final `model.22.cvX.i.2`):
//! `P.weight` f32 OIHW, `P.bias` f32, `P.weight_q` u8 OIHW, `P.weight_zp` u8
//! and `P.weight_scale` f32 per output channel. Metadata: `format`
//! ([`FORMAT`]), `names` (JSON list), `imgsz` (`[h, w]`), `source`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::DetectorError;

/// Value of the `format` metadata key.
pub const FORMAT: &str = "edgeqi-yolov8-detect/1";

/// Model metadata stored beside the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMeta {
    pub names: Vec<String>,
    /// Input `(height, width)`.
    pub imgsz: (usize, usize),
    /// Where it was imported from, for humans.
    pub source: String,
}

impl ModelMeta {
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("format".into(), FORMAT.into());
        m.insert(
            "names".into(),
            serde_json::Value::from(self.names.clone()).to_string(),
        );
        m.insert(
            "imgsz".into(),
            format!("[{}, {}]", self.imgsz.0, self.imgsz.1),
        );
        m.insert("source".into(), self.source.clone());
        m
    }

    fn from_map(m: &HashMap<String, String>) -> Result<Self, DetectorError> {
        let bad =
            |k: &str| DetectorError::Model(format!("metadata key `{k}` is missing or malformed"));
        if m.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(DetectorError::Model(format!(
                "not an EdgeQI YOLOv8 model (metadata format is {:?}, expected {FORMAT:?}); import the ONNX export with `edgeqi-agent model import`",
                m.get("format")
            )));
        }
        let names: Vec<String> = m
            .get("names")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("names"))?;
        let sz: Vec<usize> = m
            .get("imgsz")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("imgsz"))?;
        let imgsz = match sz[..] {
            [h, w] if h % 32 == 0 && w % 32 == 0 && h > 0 && w > 0 => (h, w),
            _ => return Err(bad("imgsz")),
        };
        Ok(Self {
            names,
            imgsz,
            source: m.get("source").cloned().unwrap_or_default(),
        })
    }
}

/// A loaded model file.
#[derive(Debug)]
pub struct Weights {
    bytes: Vec<u8>,
    pub meta: ModelMeta,
}

impl Weights {
    pub fn open(path: &Path) -> Result<Self, DetectorError> {
        let bytes = std::fs::read(path).map_err(|e| DetectorError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, DetectorError> {
        let (_, md) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| DetectorError::Model(format!("not a safetensors file: {e}")))?;
        let meta = ModelMeta::from_map(md.metadata().as_ref().unwrap_or(&HashMap::new()))?;
        // Validate the tensor table once so later look-ups only fail on names.
        SafeTensors::deserialize(&bytes)
            .map_err(|e| DetectorError::Model(format!("corrupt safetensors: {e}")))?;
        Ok(Self { bytes, meta })
    }

    fn st(&self) -> SafeTensors<'_> {
        // Checked in `from_bytes`; deserializing again only re-reads the header.
        match SafeTensors::deserialize(&self.bytes) {
            Ok(s) => s,
            Err(_) => unreachable!("validated in from_bytes"),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>, DetectorError> {
        let st = self.st();
        let t = st.tensor(name).map_err(|_| missing(name))?;
        Ok(t.shape().to_vec())
    }

    fn raw(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<Vec<u8>, DetectorError> {
        let st = self.st();
        let t = st.tensor(name).map_err(|_| missing(name))?;
        if t.dtype() != dtype || t.shape() != shape {
            return Err(DetectorError::Model(format!(
                "tensor {name} is {:?} {:?}, expected {dtype:?} {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data().to_vec())
    }

    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, DetectorError> {
        let raw = self.raw(name, Dtype::F32, shape)?;
        Ok(raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    pub fn u8(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>, DetectorError> {
        self.raw(name, Dtype::U8, shape)
    }
}

fn missing(name: &str) -> DetectorError {
    DetectorError::Model(format!(
        "tensor {name} is missing: not a YOLOv8 detect model of a known layout"
    ))
}

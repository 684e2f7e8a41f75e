//! `v4l2:///dev/videoN?backend=nokhwa`: USB cameras without GStreamer
//! (cargo feature `nokhwa`, off by default), for boxes where GStreamer is
//! not installed. Frames are decoded to RGB by nokhwa itself.

use std::path::Path;

use chrono::Utc;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{CameraIndex, RequestedFormat, RequestedFormatType};
use nokhwa::Camera;

use super::{FrameSource, SourceError};
use crate::frame::Frame;

/// See the module doc.
pub struct NokhwaSource {
    camera_id: String,
    what: String,
    camera: Camera,
    seq: u64,
}

impl std::fmt::Debug for NokhwaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NokhwaSource")
            .field("camera_id", &self.camera_id)
            .field("what", &self.what)
            .finish()
    }
}

impl NokhwaSource {
    pub fn open(
        camera_id: &str,
        device: &Path,
        width: Option<u32>,
        height: Option<u32>,
    ) -> Result<Self, SourceError> {
        let what = format!("v4l2://{}", device.display());
        let err = |reason: String| SourceError::Open {
            what: what.clone(),
            reason,
        };
        let index = device
            .to_str()
            .and_then(|d| d.strip_prefix("/dev/video"))
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| err("nokhwa needs a /dev/videoN device path".into()))?;
        if !device.exists() {
            return Err(err(format!(
                "device {} does not exist; is the camera plugged in?",
                device.display()
            )));
        }
        let requested = match (width, height) {
            (Some(w), Some(h)) => RequestedFormat::new::<RgbFormat>(
                RequestedFormatType::HighestResolution(nokhwa::utils::Resolution::new(w, h)),
            ),
            _ => RequestedFormat::new::<RgbFormat>(RequestedFormatType::AbsoluteHighestFrameRate),
        };
        let mut camera =
            Camera::new(CameraIndex::Index(index), requested).map_err(|e| err(e.to_string()))?;
        camera.open_stream().map_err(|e| err(e.to_string()))?;
        Ok(Self {
            camera_id: camera_id.to_owned(),
            what,
            camera,
            seq: 0,
        })
    }
}

impl FrameSource for NokhwaSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let buffer = self.camera.frame().map_err(|e| SourceError::Stream {
            what: self.what.clone(),
            reason: e.to_string(),
        })?;
        let rgb = buffer
            .decode_image::<RgbFormat>()
            .map_err(|e| SourceError::Decode {
                what: self.what.clone(),
                reason: e.to_string(),
            })?;
        let frame = Frame {
            camera_id: self.camera_id.clone(),
            ts: Utc::now(),
            seq: self.seq,
            width: rgb.width(),
            height: rgb.height(),
            rgb: rgb.into_raw(),
        };
        self.seq += 1;
        Ok(Some(frame))
    }

    fn is_realtime(&self) -> bool {
        true
    }
}

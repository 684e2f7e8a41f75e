//! One captured picture as it travels from a source to the detector.

use chrono::{DateTime, Utc};

/// An RGB8 frame, rows top to bottom, 3 bytes per pixel.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub camera_id: String,
    /// When the frame was captured.
    pub ts: DateTime<Utc>,
    /// Frame number within this source, from 0.
    pub seq: u64,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

// Hand-written so a frame in a log line is not megabytes of pixel values.
impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("camera_id", &self.camera_id)
            .field("ts", &self.ts)
            .field("seq", &self.seq)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("rgb_bytes", &self.rgb.len())
            .finish()
    }
}

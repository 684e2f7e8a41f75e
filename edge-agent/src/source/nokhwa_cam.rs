//! `v4l2:///dev/videoN?backend=nokhwa`: USB cameras without GStreamer
//! (cargo feature `nokhwa`, off by default), for boxes where GStreamer is
//! not installed. Frames are decoded to RGB by nokhwa itself.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::Duration;

use chrono::Utc;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{CameraIndex, RequestedFormat, RequestedFormatType};
use nokhwa::Camera;

use super::{FrameSource, SourceError};
use crate::frame::Frame;

/// A decoded frame (width, height, RGB) or why there is none.
type Captured = Result<(u32, u32, Vec<u8>), SourceError>;

/// See the module doc. nokhwa's `Camera` may not leave the thread that
/// opened it, so it lives on a capture thread of its own and frames come
/// over a one-slot channel; dropping the source ends that thread at its
/// next frame.
pub struct NokhwaSource {
    camera_id: String,
    what: String,
    frames: Receiver<Captured>,
    stall_timeout: Duration,
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
        stall_timeout: Duration,
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
        let (opened_tx, opened_rx) = sync_channel::<Result<(), String>>(1);
        let (tx, frames) = sync_channel::<Captured>(1);
        let thread_what = what.clone();
        std::thread::Builder::new()
            .name(format!("nokhwa-{camera_id}"))
            .spawn(move || {
                let camera = Camera::new(CameraIndex::Index(index), requested)
                    .and_then(|mut c| c.open_stream().map(|()| c));
                let mut camera = match camera {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if opened_tx.send(Ok(())).is_err() {
                    return;
                }
                loop {
                    let captured = match camera.frame() {
                        Ok(buffer) => buffer
                            .decode_image::<RgbFormat>()
                            .map(|rgb| (rgb.width(), rgb.height(), rgb.into_raw()))
                            .map_err(|e| SourceError::Decode {
                                what: thread_what.clone(),
                                reason: e.to_string(),
                            }),
                        Err(e) => Err(SourceError::Stream {
                            what: thread_what.clone(),
                            reason: e.to_string(),
                        }),
                    };
                    let failed = matches!(captured, Err(SourceError::Stream { .. }));
                    // The source was dropped: stop capturing.
                    if tx.send(captured).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| err(format!("cannot start the capture thread: {e}")))?;
        match opened_rx.recv_timeout(stall_timeout) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(err(reason)),
            Err(_) => {
                return Err(err(format!(
                    "the camera did not open within {stall_timeout:?}"
                )))
            }
        }
        Ok(Self {
            camera_id: camera_id.to_owned(),
            what,
            frames,
            stall_timeout,
            seq: 0,
        })
    }
}

impl FrameSource for NokhwaSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let (width, height, rgb) = match self.frames.recv_timeout(self.stall_timeout) {
            Ok(captured) => captured?,
            Err(RecvTimeoutError::Timeout) => {
                return Err(SourceError::Stalled {
                    what: self.what.clone(),
                    after: self.stall_timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(SourceError::Stream {
                    what: self.what.clone(),
                    reason: "the capture thread stopped".into(),
                })
            }
        };
        let frame = Frame {
            camera_id: self.camera_id.clone(),
            ts: Utc::now(),
            seq: self.seq,
            width,
            height,
            rgb,
        };
        self.seq += 1;
        Ok(Some(frame))
    }

    fn is_realtime(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_error(device: &str) -> String {
        match NokhwaSource::open("usb", Path::new(device), None, None, Duration::from_secs(2)) {
            Ok(_) => panic!("{device} opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_missing_camera_is_a_clear_error() {
        let e = open_error("/dev/video97");
        assert!(
            e.contains("v4l2:///dev/video97") && e.contains("is the camera plugged in"),
            "{e}"
        );
    }

    #[test]
    fn only_video_device_nodes_are_accepted() {
        let e = open_error("/tmp/camera");
        assert!(e.contains("needs a /dev/videoN device path"), "{e}");
    }
}

//! `rtsp://`, `file://` and `v4l2://` through GStreamer.
//!
//! Each source is one GStreamer pipeline ending in an `appsink` that hands
//! out RGB frames. GStreamer decodes on its own streaming thread at the
//! source's rate; for live sources the appsink keeps only the newest frame
//! (`max-buffers=1 drop=true`), so a slow detector never builds a queue.
//! Offline processing keeps every frame instead (`drop=false`).
//!
//! Failures become [`SourceError`]s the pipeline turns into camera states:
//! a bus error while starting is [`SourceError::Open`], one while streaming
//! is [`SourceError::Stream`], no frame for `stall_timeout` is
//! [`SourceError::Stalled`]. Credentials are set as element properties, never
//! put in the pipeline description or a log line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::{FrameSource, OpenOptions, RtspTransport, SourceError, SourceSpec};
use crate::frame::Frame;

/// How long one wait for a sample lasts before the bus and the stop flag are checked.
const POLL: Duration = Duration::from_millis(100);

/// See the module doc.
pub struct GstSource {
    camera_id: String,
    /// For messages: the URI without credentials.
    what: String,
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    bus: gst::Bus,
    /// End of stream means "the stream is over" for files, "the server went
    /// away" for live sources.
    live: bool,
    looping: bool,
    stall_timeout: Duration,
    stop: Option<Arc<AtomicBool>>,
    limits: super::FrameLimits,
    seq: u64,
    /// Presentation time of the last frame handed out.
    position: Option<Duration>,
    streaming: bool,
}

impl std::fmt::Debug for GstSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GstSource")
            .field("camera_id", &self.camera_id)
            .field("what", &self.what)
            .field("seq", &self.seq)
            .finish()
    }
}

/// Initialises GStreamer once; an error says what is missing.
pub fn init() -> Result<(), SourceError> {
    gst::init().map_err(|e| SourceError::Unsupported(format!("GStreamer cannot start: {e}")))
}

/// The pipeline description for `spec` (without credentials or the location,
/// which are set as properties so no quoting can break them).
fn describe(spec: &SourceSpec, opts: &OpenOptions) -> Option<String> {
    let (sink_opts, sync) = if opts.offline {
        ("max-buffers=4 drop=false", false)
    } else {
        ("max-buffers=1 drop=true", true)
    };
    // The size bounds take part in caps negotiation: a stream announcing
    // a frame above the camera's limits fails to negotiate (an error on the
    // bus) before its decoder allocates a single output frame.
    let l = &opts.limits;
    let bounds = format!(
        "width=[1,{}],height=[1,{}]",
        l.max_width.min(i32::MAX as u32),
        l.max_height.min(i32::MAX as u32)
    );
    let convert = format!("videoconvert ! video/x-raw,format=RGB,{bounds}");
    Some(match spec {
        SourceSpec::Rtsp {
            transport,
            latency_ms,
            decoder,
            ..
        } => {
            let protocols = match transport {
                RtspTransport::Tcp => "tcp",
                RtspTransport::Udp => "udp",
                RtspTransport::Auto => "tcp+udp+udp-mcast",
            };
            let decode = match decoder {
                Some(d) => format!("parsebin ! {d}"),
                None => "decodebin".to_owned(),
            };
            // Live: render as soon as decoded (sync=false); rtspsrc's jitter
            // buffer already paces the stream.
            format!(
                "rtspsrc name=src protocols={protocols} latency={latency_ms} do-retransmission=false \
                 ! application/x-rtp,media=video ! {decode} ! {convert} \
                 ! appsink name=sink {sink_opts} sync=false"
            )
        }
        SourceSpec::File { decoder, .. } => {
            let decode = match decoder {
                Some(d) => format!("parsebin ! {d}"),
                None => "decodebin".to_owned(),
            };
            // A file played by the daemon behaves like a camera: real time
            // (sync=true). Offline processing reads it as fast as it decodes.
            format!("filesrc name=src ! {decode} ! {convert} ! appsink name=sink {sink_opts} sync={sync}")
        }
        SourceSpec::V4l2 { width, height, .. } => {
            let size = match (width, height) {
                (Some(w), Some(h)) => format!(",width={w},height={h}"),
                _ => String::new(),
            };
            format!(
                "v4l2src name=src ! videoconvert ! videoscale ! video/x-raw,format=RGB,{bounds}{size} \
                 ! appsink name=sink {sink_opts} sync=false"
            )
        }
        SourceSpec::Synthetic(_) | SourceSpec::Images { .. } => return None,
    })
}

impl GstSource {
    /// Builds and starts the pipeline, then waits (up to `stall_timeout`) for
    /// the first frame so that a wrong URL or a corrupt file fails here, as
    /// [`SourceError::Open`], with GStreamer's reason.
    pub fn open(
        spec: &SourceSpec,
        camera_id: &str,
        opts: &OpenOptions,
    ) -> Result<Self, SourceError> {
        init()?;
        let what = spec.display();
        let open_err = |reason: String| SourceError::Open {
            what: what.clone(),
            reason,
        };
        match spec {
            SourceSpec::File { path, .. } => {
                if !path.is_file() {
                    return Err(open_err(format!(
                        "file {} does not exist or is not a file",
                        path.display()
                    )));
                }
            }
            SourceSpec::V4l2 { device, .. } => {
                if !device.exists() {
                    return Err(open_err(format!(
                        "device {} does not exist; is the camera plugged in? (`ls /dev/video*` lists what there is)",
                        device.display()
                    )));
                }
            }
            _ => {}
        }
        let desc = describe(spec, opts)
            .ok_or_else(|| SourceError::Unsupported(format!("{what} is not a GStreamer source")))?;
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| {
                open_err(format!(
                    "cannot build the GStreamer pipeline ({e}); is a plugin missing? scripts/lib/gstreamer.sh installs them"
                ))
            })?
            .downcast::<gst::Pipeline>()
            .map_err(|_| open_err("GStreamer did not build a pipeline".into()))?;
        let src = pipeline
            .by_name("src")
            .ok_or_else(|| open_err("pipeline has no source element".into()))?;
        match spec {
            SourceSpec::Rtsp {
                url,
                username,
                password,
                ..
            } => {
                src.set_property("location", url);
                if let Some(u) = username {
                    src.set_property("user-id", u);
                }
                if let Some(p) = password {
                    src.set_property("user-pw", &p.0);
                }
                // rtspsrc's own TCP timeout: fail fast on a dead server rather
                // than hanging in connect.
                src.set_property("tcp-timeout", opts.stall_timeout.as_micros() as u64);
            }
            SourceSpec::File { path, .. } => {
                src.set_property("location", path.to_string_lossy().as_ref());
            }
            SourceSpec::V4l2 { device, .. } => {
                src.set_property("device", device.to_string_lossy().as_ref());
            }
            _ => {}
        }
        let sink = pipeline
            .by_name("sink")
            .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| open_err("pipeline has no appsink".into()))?;
        let bus = pipeline
            .bus()
            .ok_or_else(|| open_err("pipeline has no bus".into()))?;
        let (live, looping) = match spec {
            SourceSpec::File { looping, .. } => (false, *looping && !opts.offline),
            _ => (true, false),
        };
        let source = Self {
            camera_id: camera_id.to_owned(),
            what: what.clone(),
            pipeline,
            sink,
            bus,
            live,
            looping,
            stall_timeout: opts.stall_timeout,
            stop: opts.stop.clone(),
            limits: opts.limits,
            seq: 0,
            position: None,
            streaming: false,
        };
        if let Err(e) = source.pipeline.set_state(gst::State::Playing) {
            let reason = source
                .bus_error()
                .unwrap_or_else(|| format!("GStreamer refused to start ({e})"));
            return Err(open_err(reason));
        }
        Ok(source)
    }

    /// The first error on the bus, if any, as one readable line.
    fn bus_error(&self) -> Option<String> {
        while let Some(msg) = self.bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(err) = msg.view() {
                let element = err
                    .src()
                    .map(|s| s.name().to_string())
                    .unwrap_or_else(|| "pipeline".into());
                let mut line = format!("{element}: {}", err.error());
                if err
                    .debug()
                    .is_some_and(|d| d.contains("not-negotiated") || d.contains("not negotiated"))
                    || err.error().to_string().contains("not negotiated")
                {
                    let l = &self.limits;
                    line.push_str(&format!(
                        " (the stream's frames could not be converted to RGB within this \
                         camera's max_frame_width {} x max_frame_height {}: either they are \
                         larger, and were refused before decoding, or their format is not one \
                         GStreamer can convert)",
                        l.max_width, l.max_height
                    ));
                }
                return Some(line);
            }
        }
        None
    }

    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// An error from the bus, tagged as failing to open (before the first
    /// frame) or failing while streaming.
    fn failure(&self, reason: String) -> SourceError {
        if self.streaming {
            SourceError::Stream {
                what: self.what.clone(),
                reason,
            }
        } else {
            SourceError::Open {
                what: self.what.clone(),
                reason,
            }
        }
    }

    fn to_frame(&mut self, sample: &gst::Sample) -> Result<Frame, SourceError> {
        let bad = |reason: String| SourceError::Decode {
            what: self.what.clone(),
            reason,
        };
        let caps = sample
            .caps()
            .ok_or_else(|| bad("sample without caps".into()))?;
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|e| bad(format!("unreadable video caps: {e}")))?;
        // Before touching the pixels: negotiation bounds the sides, this
        // also bounds their product.
        self.limits
            .check(info.width(), info.height())
            .map_err(bad)?;
        let buffer = sample
            .buffer()
            .ok_or_else(|| bad("sample without buffer".into()))?;
        let map = buffer
            .map_readable()
            .map_err(|e| bad(format!("cannot read the buffer: {e}")))?;
        let (w, h) = (info.width() as usize, info.height() as usize);
        let stride = info.stride()[0] as usize;
        let row = w * 3;
        if stride < row || map.len() < stride * (h.saturating_sub(1)) + row {
            return Err(bad(format!(
                "buffer of {} bytes is too small for {w}x{h} RGB",
                map.len()
            )));
        }
        let mut rgb = Vec::with_capacity(row * h);
        for y in 0..h {
            rgb.extend_from_slice(&map[y * stride..y * stride + row]);
        }
        self.position = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
        let frame = Frame {
            camera_id: self.camera_id.clone(),
            ts: Utc::now(),
            seq: self.seq,
            width: info.width(),
            height: info.height(),
            rgb,
        };
        self.seq += 1;
        Ok(frame)
    }
}

impl FrameSource for GstSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let started = Instant::now();
        loop {
            if self.stopping() {
                return Ok(None);
            }
            if let Some(reason) = self.bus_error() {
                return Err(self.failure(reason));
            }
            if let Some(sample) = self
                .sink
                .try_pull_sample(gst::ClockTime::from_nseconds(POLL.as_nanos() as u64))
            {
                self.streaming = true;
                return self.to_frame(&sample).map(Some);
            }
            if self.sink.is_eos() {
                if let Some(reason) = self.bus_error() {
                    return Err(self.failure(reason));
                }
                if self.live {
                    return Err(self.failure("the stream ended (server closed it)".into()));
                }
                if !self.looping {
                    return Ok(None);
                }
                self.pipeline
                    .seek_simple(
                        gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                        gst::ClockTime::ZERO,
                    )
                    .map_err(|e| self.failure(format!("cannot rewind to loop: {e}")))?;
                continue;
            }
            if started.elapsed() >= self.stall_timeout {
                return Err(if self.streaming {
                    SourceError::Stalled {
                        what: self.what.clone(),
                        after: self.stall_timeout,
                    }
                } else {
                    SourceError::Open {
                        what: self.what.clone(),
                        reason: format!(
                            "no frame within {:?} of connecting (unreachable, or not a video stream)",
                            self.stall_timeout
                        ),
                    }
                });
            }
        }
    }

    fn position(&self) -> Option<Duration> {
        self.position
    }

    fn duration(&self) -> Option<Duration> {
        self.pipeline
            .query_duration::<gst::ClockTime>()
            .map(|d| Duration::from_nanos(d.nseconds()))
    }

    fn is_realtime(&self) -> bool {
        true
    }
}

impl Drop for GstSource {
    fn drop(&mut self) {
        // Tear the pipeline down now: its threads and sockets go with it.
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_pick_transport_decoder_and_sampling() {
        let (rtsp, _) =
            SourceSpec::parse("rtsp://u:p@cam/1?transport=udp&decoder=v4l2h264dec").expect("rtsp");
        let live = describe(&rtsp, &OpenOptions::default()).expect("gst");
        assert!(live.contains("protocols=udp"), "{live}");
        assert!(
            live.contains("parsebin ! v4l2h264dec"),
            "hardware decoder by name: {live}"
        );
        assert!(
            live.contains("max-buffers=1 drop=true"),
            "newest frame only: {live}"
        );
        assert!(
            !live.contains("u:p") && !live.contains("cam/1"),
            "location and credentials are properties: {live}"
        );
        let (file, _) = SourceSpec::parse("file:///v/a.mp4").expect("file");
        let offline = describe(
            &file,
            &OpenOptions {
                offline: true,
                ..OpenOptions::default()
            },
        )
        .expect("gst");
        assert!(
            offline.contains("decodebin")
                && offline.contains("drop=false")
                && offline.contains("sync=false"),
            "{offline}"
        );
        let realtime = describe(&file, &OpenOptions::default()).expect("gst");
        assert!(
            realtime.contains("sync=true"),
            "a file played as a camera runs in real time: {realtime}"
        );
    }

    #[test]
    fn missing_file_and_device_fail_at_open_with_the_reason() {
        let (file, _) = SourceSpec::parse("file:///definitely/not/here.mp4").expect("file");
        let err = GstSource::open(&file, "c", &OpenOptions::default()).expect_err("missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
        let (dev, _) = SourceSpec::parse("v4l2:///dev/video97").expect("v4l2");
        let err = GstSource::open(&dev, "c", &OpenOptions::default()).expect_err("missing");
        assert!(err.to_string().contains("plugged in"), "{err}");
    }

    #[test]
    fn street_clip_decodes_every_frame_offline() {
        let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/street.mp4");
        assert!(clip.is_file(), "test clip {} is missing", clip.display());
        let (spec, _) = SourceSpec::parse(&format!("file://{}", clip.display())).expect("file");
        let opts = OpenOptions {
            offline: true,
            ..OpenOptions::default()
        };
        let mut src = GstSource::open(&spec, "c", &opts).expect("open");
        let mut n = 0;
        let mut last = Duration::ZERO;
        while let Some(f) = src.next_frame().expect("decodes") {
            assert_eq!((f.width, f.height, f.rgb.len()), (640, 360, 640 * 360 * 3));
            let pos = src.position().expect("pts");
            assert!(pos >= last);
            last = pos;
            n += 1;
        }
        assert!((145..=155).contains(&n), "15 s at 10 fps, got {n}");
        assert!(src.duration().is_some_and(|d| d > Duration::from_secs(14)));
    }

    fn street_clip() -> SourceSpec {
        let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/street.mp4");
        SourceSpec::parse(&format!("file://{}", clip.display()))
            .expect("file")
            .0
    }

    /// The first thing the source says: a frame or an error.
    fn first(spec: &SourceSpec, opts: &OpenOptions) -> Result<Option<Frame>, SourceError> {
        GstSource::open(spec, "c", opts)?.next_frame()
    }

    #[test]
    fn frames_above_the_camera_limits_are_refused_in_negotiation() {
        let opts = OpenOptions {
            offline: true,
            stall_timeout: Duration::from_secs(20),
            limits: super::super::FrameLimits {
                max_width: 320,
                max_height: 320,
                max_pixels: 320 * 320,
            },
            ..OpenOptions::default()
        };
        let err = first(&street_clip(), &opts).expect_err("640x360 is above 320x320");
        assert!(matches!(err, SourceError::Open { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("max_frame_width 320"), "{text}");
        // Sides within bounds but too many pixels: refused per frame.
        let opts = OpenOptions {
            limits: super::super::FrameLimits {
                max_width: 640,
                max_height: 640,
                max_pixels: 640 * 300,
            },
            ..opts
        };
        let err = first(&street_clip(), &opts).expect_err("640x360 is above 192000 pixels");
        assert!(matches!(err, SourceError::Decode { .. }), "{err}");
        assert!(err.to_string().contains("640x360"), "{err}");
    }

    #[test]
    fn a_file_of_garbage_fails_to_open_with_the_reason() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("garbage.mp4");
        let bytes: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, bytes).expect("write");
        let (spec, _) = SourceSpec::parse(&format!("file://{}", path.display())).expect("file");
        let opts = OpenOptions {
            offline: true,
            ..OpenOptions::default()
        };
        let err = first(&spec, &opts).expect_err("garbage is no video");
        assert!(matches!(err, SourceError::Open { .. }), "{err}");
        assert!(err.to_string().contains("garbage.mp4"), "{err}");
    }
}

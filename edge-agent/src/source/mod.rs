//! Frame sources: where pictures come from, behind one blocking trait.
//!
//! A source URI is parsed once, at config time, into a [`SourceSpec`]; the
//! pipeline then [`open`]s it (and re-opens it after an error). Sources are
//! blocking and run on their own thread; pacing to the camera's fps is the
//! pipeline's job, so a source hands out frames as fast as asked.

#[cfg(feature = "gstreamer")]
mod gst;
mod images;
#[cfg(feature = "nokhwa")]
mod nokhwa_cam;
mod synthetic;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub use images::ImageDirSource;
pub use synthetic::{SyntheticParams, SyntheticSource};

use crate::config::Secret;
use crate::frame::Frame;

/// Why a source could not deliver a frame. Messages never carry credentials.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image directory {dir}: {reason}")]
    ImageDir { dir: PathBuf, reason: String },
    /// Could not start, or no first frame: wrong URL, refused, corrupt file, no device.
    #[error("{what}: cannot open: {reason}")]
    Open { what: String, reason: String },
    /// Was streaming, then failed (server gone, decode error on the bus).
    #[error("{what}: stream failed: {reason}")]
    Stream { what: String, reason: String },
    /// Was streaming, then no frame for the stall timeout.
    #[error("{what}: stalled, no frame for {after:?}")]
    Stalled { what: String, after: Duration },
    /// One frame could not be converted; the stream itself goes on.
    #[error("{what}: bad frame: {reason}")]
    Decode { what: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
}

/// Something that yields frames, blocking until the next one is ready.
pub trait FrameSource: Send {
    /// The next frame; `Ok(None)` when the stream has ended for good.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;
    /// Media time of the last frame, where the source knows it (files).
    fn position(&self) -> Option<Duration> {
        None
    }
    /// Length of the media, where known (files).
    fn duration(&self) -> Option<Duration> {
        None
    }
    /// True when the source delivers at its own rate (cameras, GStreamer);
    /// false when it yields as fast as asked and the caller must pace it.
    fn is_realtime(&self) -> bool {
        false
    }
}

/// How `rtsp://` media travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtspTransport {
    /// Interleaved in the RTSP TCP connection: works through NAT and firewalls.
    Tcp,
    Udp,
    /// Let rtspsrc try UDP, then TCP.
    Auto,
}

impl RtspTransport {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "auto" => Ok(Self::Auto),
            other => Err(format!("transport {other:?} must be tcp, udp or auto")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Auto => "auto",
        }
    }
}

/// Which library captures `v4l2://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V4l2Backend {
    Gstreamer,
    Nokhwa,
}

/// A validated source URI.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// `synthetic://?objects=3&frames=N&width=&height=&seed=`
    Synthetic(SyntheticParams),
    /// `images://DIR?loop=false`
    Images { dir: PathBuf, looping: bool },
    /// `rtsp://[user:pass@]host[:port]/path?transport=tcp|udp|auto&latency=200&decoder=NAME`
    Rtsp {
        /// Without credentials.
        url: String,
        username: Option<String>,
        password: Option<Secret>,
        transport: RtspTransport,
        latency_ms: u32,
        /// A GStreamer decoder element to use instead of decodebin's choice
        /// (e.g. a hardware one: `v4l2h264dec`, `nvh264dec`, `vaapih264dec`).
        decoder: Option<String>,
    },
    /// `file:///PATH?loop=true&decoder=NAME`
    File {
        path: PathBuf,
        looping: bool,
        decoder: Option<String>,
    },
    /// `v4l2:///dev/videoN?backend=gstreamer|nokhwa&width=&height=`
    V4l2 {
        device: PathBuf,
        backend: V4l2Backend,
        width: Option<u32>,
        height: Option<u32>,
    },
}

/// The largest frame a camera may deliver (`max_frame_width`,
/// `max_frame_height`, `max_frame_pixels` of `[[cameras]]`). Sources check it
/// before decoding where the format tells the size up front (an image
/// file's header, GStreamer's caps negotiation), so a header claiming
/// 30000x30000 costs nothing; the pipeline checks every frame once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
}

impl Default for FrameLimits {
    /// 8K UHD (7680x4320, about 100 MB as RGB), either way up.
    fn default() -> Self {
        Self {
            max_width: 7680,
            max_height: 7680,
            max_pixels: 7680 * 4320,
        }
    }
}

impl FrameLimits {
    /// Why a `width` x `height` frame is refused, if it is.
    pub fn check(&self, width: u32, height: u32) -> Result<(), String> {
        let pixels = u64::from(width) * u64::from(height);
        if width == 0 || height == 0 {
            return Err(format!("frame size {width}x{height} has no pixels"));
        }
        if width > self.max_width || height > self.max_height || pixels > self.max_pixels {
            return Err(format!(
                "frame size {width}x{height} ({pixels} pixels) is above this camera's limit \
                 (max_frame_width {}, max_frame_height {}, max_frame_pixels {}); refused \
                 without decoding. Raise those keys in [[cameras]] if the camera really sends \
                 frames this large",
                self.max_width, self.max_height, self.max_pixels
            ));
        }
        Ok(())
    }

    /// The largest encoded file worth reading for one frame: more than
    /// raw RGB at the pixel limit is no image a camera produced.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(3).saturating_add(1 << 20)
    }
}

/// How a source is opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// No frame for this long while streaming (or before the first frame)
    /// is a failure.
    pub stall_timeout: Duration,
    /// Offline processing: every frame, as fast as it decodes, no looping.
    pub offline: bool,
    /// Checked while waiting, so a blocked source still stops promptly.
    pub stop: Option<Arc<AtomicBool>>,
    /// Frames above this are refused (and counted as decode errors).
    pub limits: FrameLimits,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(10),
            offline: false,
            stop: None,
            limits: FrameLimits::default(),
        }
    }
}

/// `uri` with any `user:password@` replaced by `***@`, for logs and printed configs.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => uri.to_owned(),
    }
}

fn looping_param(uri: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{uri:?}: loop={other:?} must be true or false")),
    }
}

/// A GStreamer element name: letters, digits, `-` and `_` only, so it cannot
/// smuggle extra pipeline syntax in.
fn element_name(uri: &str, v: &str) -> Result<String, String> {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{uri:?}: decoder={v:?} is not a GStreamer element name (e.g. avdec_h264, v4l2h264dec)"
        ))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SourceSpec {
    /// Parses a source URI. Every URI also accepts `fps=N`, returned apart
    /// because it belongs to the camera, not the source.
    pub fn parse(uri: &str) -> Result<(Self, Option<f64>), String> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(format!(
                "{uri:?} is not a source URI (examples: synthetic://, images:///var/lib/frames, rtsp://cam/stream)"
            ));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut params = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            params.push((k.to_owned(), v.to_owned()));
        }
        let mut fps = None;
        params.retain(|(k, v)| {
            if k == "fps" {
                fps = Some(v.clone());
                false
            } else {
                true
            }
        });
        let fps = fps
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| format!("{uri:?}: fps={v:?} is not a number"))
            })
            .transpose()?;
        let spec = match scheme {
            "synthetic" => {
                if !path.is_empty() {
                    return Err(format!("{uri:?}: synthetic:// takes no path, only ?parameters"));
                }
                SourceSpec::Synthetic(SyntheticParams::from_query(&params)?)
            }
            "images" => {
                if path.is_empty() {
                    return Err(format!("{uri:?}: say which directory, e.g. images:///var/lib/edgeqi/frames"));
                }
                let mut looping = true;
                for (k, v) in &params {
                    match (k.as_str(), v.as_str()) {
                        ("loop", "true") => looping = true,
                        ("loop", "false") => looping = false,
                        ("loop", other) => {
                            return Err(format!("{uri:?}: loop={other:?} must be true or false"))
                        }
                        (other, _) => {
                            return Err(format!(
                                "{uri:?}: unknown parameter {other:?} (images:// knows loop and fps)"
                            ))
                        }
                    }
                }
                let dir = PathBuf::from(path);
                if !dir.is_dir() {
                    return Err(format!(
                        "{uri:?}: directory {} does not exist",
                        dir.display()
                    ));
                }
                SourceSpec::Images { dir, looping }
            }
            "rtsp" | "rtsps" => {
                let authority_end = path.find('/').unwrap_or(path.len());
                let (userinfo, hostpath) = match path[..authority_end].rfind('@') {
                    Some(at) => (Some(&path[..at]), &path[at + 1..]),
                    None => (None, path),
                };
                if hostpath.is_empty() || hostpath.starts_with('/') {
                    return Err(format!(
                        "{}: say which host, e.g. rtsp://192.0.2.10:554/stream1",
                        redact_uri(uri)
                    ));
                }
                let (username, password) = match userinfo {
                    None => (None, None),
                    Some(ui) => match ui.split_once(':') {
                        Some((u, p)) => (Some(percent_decode(u)), Some(Secret(percent_decode(p)))),
                        None => (Some(percent_decode(ui)), None),
                    },
                };
                let mut transport = RtspTransport::Tcp;
                let mut latency_ms = 200;
                let mut decoder = None;
                let shown = redact_uri(uri);
                for (k, v) in &params {
                    match k.as_str() {
                        "transport" => transport = RtspTransport::parse(v).map_err(|e| format!("{shown:?}: {e}"))?,
                        "latency" => {
                            latency_ms = v.parse().ok().filter(|l| *l <= 10_000).ok_or_else(|| {
                                format!("{shown:?}: latency={v:?} must be milliseconds in 0..=10000")
                            })?
                        }
                        "decoder" => decoder = Some(element_name(&shown, v)?),
                        other => {
                            return Err(format!(
                                "{shown:?}: unknown parameter {other:?} (rtsp:// knows transport, latency, decoder and fps)"
                            ))
                        }
                    }
                }
                gstreamer_only(&shown)?;
                SourceSpec::Rtsp {
                    url: format!("{scheme}://{hostpath}"),
                    username,
                    password,
                    transport,
                    latency_ms,
                    decoder,
                }
            }
            "file" => {
                if path.is_empty() {
                    return Err(format!("{uri:?}: say which file, e.g. file:///var/lib/edgeqi/clip.mp4"));
                }
                let mut looping = false;
                let mut decoder = None;
                for (k, v) in &params {
                    match k.as_str() {
                        "loop" => looping = looping_param(uri, v)?,
                        "decoder" => decoder = Some(element_name(uri, v)?),
                        other => {
                            return Err(format!(
                                "{uri:?}: unknown parameter {other:?} (file:// knows loop, decoder and fps)"
                            ))
                        }
                    }
                }
                gstreamer_only(uri)?;
                SourceSpec::File {
                    path: PathBuf::from(percent_decode(path)),
                    looping,
                    decoder,
                }
            }
            "v4l2" => {
                if !path.starts_with('/') {
                    return Err(format!("{uri:?}: say which device, e.g. v4l2:///dev/video0"));
                }
                let mut backend = V4l2Backend::Gstreamer;
                let (mut width, mut height) = (None, None);
                for (k, v) in &params {
                    let num = |v: &str| {
                        v.parse::<u32>()
                            .ok()
                            .filter(|n| (16..=8192).contains(n))
                            .ok_or_else(|| format!("{uri:?}: {k}={v:?} must be pixels in 16..=8192"))
                    };
                    match k.as_str() {
                        "backend" => {
                            backend = match v.as_str() {
                                "gstreamer" => V4l2Backend::Gstreamer,
                                "nokhwa" => V4l2Backend::Nokhwa,
                                other => {
                                    return Err(format!(
                                        "{uri:?}: backend={other:?} must be gstreamer or nokhwa"
                                    ))
                                }
                            }
                        }
                        "width" => width = Some(num(v)?),
                        "height" => height = Some(num(v)?),
                        other => {
                            return Err(format!(
                                "{uri:?}: unknown parameter {other:?} (v4l2:// knows backend, width, height and fps)"
                            ))
                        }
                    }
                }
                if width.is_some() != height.is_some() {
                    return Err(format!("{uri:?}: give both width and height, or neither"));
                }
                match backend {
                    V4l2Backend::Gstreamer => gstreamer_only(uri)?,
                    V4l2Backend::Nokhwa => {
                        if !cfg!(feature = "nokhwa") {
                            return Err(format!(
                                "{uri:?}: backend=nokhwa needs an agent built with `--features nokhwa`"
                            ));
                        }
                    }
                }
                SourceSpec::V4l2 {
                    device: PathBuf::from(path),
                    backend,
                    width,
                    height,
                }
            }
            other => {
                return Err(format!(
                    "{uri:?}: unknown scheme {other:?} (use synthetic://, images://DIR, rtsp://, file://PATH or v4l2:///dev/videoN)"
                ))
            }
        };
        Ok((spec, fps))
    }

    /// The source for messages: scheme and location, never credentials.
    pub fn display(&self) -> String {
        match self {
            SourceSpec::Synthetic(_) => "synthetic://".into(),
            SourceSpec::Images { dir, .. } => format!("images://{}", dir.display()),
            SourceSpec::Rtsp { url, .. } => url.clone(),
            SourceSpec::File { path, .. } => format!("file://{}", path.display()),
            SourceSpec::V4l2 { device, .. } => format!("v4l2://{}", device.display()),
        }
    }
}

fn gstreamer_only(uri: &str) -> Result<(), String> {
    if cfg!(feature = "gstreamer") {
        Ok(())
    } else {
        Err(format!(
            "{uri:?} needs GStreamer, and this agent was built without it (cargo feature `gstreamer`)"
        ))
    }
}

/// Opens the source described by `spec` for camera `camera_id`.
pub fn open(
    spec: &SourceSpec,
    camera_id: &str,
    opts: &OpenOptions,
) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(match spec {
        SourceSpec::Synthetic(p) => Box::new(SyntheticSource::new(camera_id, p.clone())),
        SourceSpec::Images { dir, looping } => {
            Box::new(ImageDirSource::open(camera_id, dir, *looping, opts.limits)?)
        }
        #[cfg(feature = "nokhwa")]
        SourceSpec::V4l2 {
            device,
            backend: V4l2Backend::Nokhwa,
            width,
            height,
        } => Box::new(nokhwa_cam::NokhwaSource::open(
            camera_id,
            device,
            *width,
            *height,
            opts.stall_timeout,
        )?),
        #[cfg(feature = "gstreamer")]
        SourceSpec::Rtsp { .. } | SourceSpec::File { .. } | SourceSpec::V4l2 { .. } => {
            Box::new(gst::GstSource::open(spec, camera_id, opts)?)
        }
        #[cfg(not(feature = "gstreamer"))]
        SourceSpec::Rtsp { .. } | SourceSpec::File { .. } | SourceSpec::V4l2 { .. } => {
            return Err(SourceError::Unsupported(format!(
                "{} needs GStreamer, and this agent was built without it",
                spec.display()
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_schemes() {
        let (s, fps) =
            SourceSpec::parse("synthetic://?objects=2&frames=5&seed=9&fps=4").expect("ok");
        assert_eq!(fps, Some(4.0));
        let SourceSpec::Synthetic(p) = s else {
            panic!("synthetic expected")
        };
        assert_eq!((p.objects, p.frames, p.seed), (2, Some(5), 9));
        let dir = tempfile::tempdir().expect("tempdir");
        let uri = format!("images://{}?loop=false", dir.path().display());
        let (s, _) = SourceSpec::parse(&uri).expect("ok");
        assert_eq!(
            s,
            SourceSpec::Images {
                dir: dir.path().to_owned(),
                looping: false
            }
        );
    }

    #[test]
    fn camera_uris_keep_credentials_out_of_sight() {
        let uri = "rtsp://admin:s%40cret@192.0.2.7:8554/live?transport=udp&latency=50";
        let (s, _) = SourceSpec::parse(uri).expect("ok");
        let SourceSpec::Rtsp {
            url,
            username,
            password,
            transport,
            latency_ms,
            ..
        } = &s
        else {
            panic!("rtsp expected")
        };
        assert_eq!(url, "rtsp://192.0.2.7:8554/live");
        assert_eq!(username.as_deref(), Some("admin"));
        assert_eq!(password.as_ref().map(|p| p.0.as_str()), Some("s@cret"));
        assert_eq!((*transport, *latency_ms), (RtspTransport::Udp, 50));
        assert!(!format!("{s:?}").contains("s@cret"));
        assert!(!s.display().contains("admin"));
        assert_eq!(
            redact_uri(uri),
            "rtsp://***@192.0.2.7:8554/live?transport=udp&latency=50"
        );
        assert_eq!(redact_uri("rtsp://cam/a@b"), "rtsp://cam/a@b");
        let (f, _) = SourceSpec::parse("file:///v/clip.mp4?loop=true").expect("ok");
        assert_eq!(
            f,
            SourceSpec::File {
                path: PathBuf::from("/v/clip.mp4"),
                looping: true,
                decoder: None
            }
        );
        let (v, _) = SourceSpec::parse("v4l2:///dev/video3").expect("ok");
        assert!(matches!(
            v,
            SourceSpec::V4l2 {
                backend: V4l2Backend::Gstreamer,
                ..
            }
        ));
    }

    #[test]
    fn frame_limits_name_the_keys_and_the_size() {
        let l = FrameLimits {
            max_width: 1920,
            max_height: 1920,
            max_pixels: 1920 * 1080,
        };
        assert!(l.check(1920, 1080).is_ok());
        assert!(l.check(1080, 1920).is_ok());
        for (w, h) in [
            (1921, 10),
            (10, 1921),
            (1920, 1081),
            (0, 10),
            (30000, 30000),
        ] {
            let e = l.check(w, h).expect_err("refused");
            assert!(e.contains(&format!("{w}x{h}")), "{e}");
        }
        let e = l.check(u32::MAX, u32::MAX).expect_err("refused");
        assert!(e.contains("max_frame_pixels"), "{e}");
        assert!(FrameLimits::default().check(7680, 4320).is_ok());
        assert!(FrameLimits::default().check(4320, 7680).is_ok());
    }

    #[test]
    fn refuses_with_a_reason() {
        for (uri, want) in [
            ("rtsp://cam/1?transport=quic", "transport"),
            ("rtsp:///stream", "which host"),
            ("file://", "which file"),
            ("file:///x.mp4?decoder=a!b", "element name"),
            ("v4l2://video0", "which device"),
            ("v4l2:///dev/video0?width=640", "both width and height"),
            ("http://x", "unknown scheme"),
            ("synthetic", "not a source URI"),
            ("synthetic://?objets=3", "objets"),
            ("synthetic://?objects=many", "objects"),
            ("images:///definitely/not/here", "does not exist"),
            ("synthetic://?fps=fast", "fps"),
        ] {
            let err = SourceSpec::parse(uri).expect_err(uri);
            assert!(err.contains(want), "{uri}: {err}");
        }
    }
}

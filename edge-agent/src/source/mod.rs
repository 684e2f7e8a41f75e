//! Frame sources: where pictures come from, behind one blocking trait.
//!
//! A source URI is parsed once, at config time, into a [`SourceSpec`]; the
//! pipeline then [`open`]s it (and re-opens it after an error). Sources are
//! blocking and run on their own thread; pacing to the camera's fps is the
//! pipeline's job, so a source hands out frames as fast as asked.

mod images;
mod synthetic;

use std::path::PathBuf;

pub use images::ImageDirSource;
pub use synthetic::{SyntheticParams, SyntheticSource};

use crate::frame::Frame;

/// Why a source could not deliver a frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image directory {dir}: {reason}")]
    ImageDir { dir: PathBuf, reason: String },
}

/// Something that yields frames, blocking until the next one is ready.
pub trait FrameSource: Send {
    /// The next frame; `Ok(None)` when the stream has ended for good.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;
}

/// A validated source URI.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// `synthetic://?objects=3&frames=N&width=&height=&seed=`
    Synthetic(SyntheticParams),
    /// `images://DIR?loop=false`
    Images { dir: PathBuf, looping: bool },
}

const NOT_YET: &str =
    "not supported yet in this build, arrives with camera support; use synthetic:// or images://DIR for now";

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
            "rtsp" | "rtsps" | "file" | "v4l2" => return Err(format!("{scheme}:// is {NOT_YET}")),
            other => {
                return Err(format!(
                    "{uri:?}: unknown scheme {other:?} (use synthetic://, images://DIR, rtsp://, file://PATH or v4l2:///dev/videoN)"
                ))
            }
        };
        Ok((spec, fps))
    }
}

/// Opens the source described by `spec` for camera `camera_id`.
pub fn open(spec: &SourceSpec, camera_id: &str) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(match spec {
        SourceSpec::Synthetic(p) => Box::new(SyntheticSource::new(camera_id, p.clone())),
        SourceSpec::Images { dir, looping } => {
            Box::new(ImageDirSource::open(camera_id, dir, *looping)?)
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
    fn refuses_with_a_reason() {
        for (uri, want) in [
            ("rtsp://cam/1", "not supported yet"),
            ("file:///x.mp4", "not supported yet"),
            ("v4l2:///dev/video0", "not supported yet"),
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

//! `images://DIR`: JPEG and PNG files from a directory, in name order.
//!
//! Loops over the directory forever unless `loop=false`. A file that will
//! not decode is logged and skipped: one bad file must not stop a camera.

use std::path::{Path, PathBuf};

use chrono::Utc;

use super::{FrameSource, SourceError};
use crate::frame::Frame;

/// See the module doc.
#[derive(Debug)]
pub struct ImageDirSource {
    camera_id: String,
    dir: PathBuf,
    files: Vec<PathBuf>,
    looping: bool,
    next: usize,
    seq: u64,
    /// Frames decoded in the current pass; a pass with none means every file is bad.
    decoded_this_pass: usize,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

impl ImageDirSource {
    pub fn open(camera_id: &str, dir: &Path, looping: bool) -> Result<Self, SourceError> {
        let err = |reason: String| SourceError::ImageDir {
            dir: dir.to_owned(),
            reason,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            err(format!(
                "cannot list it ({e}); check the path in the source URI"
            ))
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(err(
                "holds no .jpg, .jpeg or .png files; put some frames there".into(),
            ));
        }
        Ok(Self {
            camera_id: camera_id.to_owned(),
            dir: dir.to_owned(),
            files,
            looping,
            next: 0,
            seq: 0,
            decoded_this_pass: 0,
        })
    }
}

impl FrameSource for ImageDirSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if self.next >= self.files.len() {
                if !self.looping {
                    return Ok(None);
                }
                if self.decoded_this_pass == 0 {
                    return Err(SourceError::ImageDir {
                        dir: self.dir.clone(),
                        reason: "none of its images could be decoded".into(),
                    });
                }
                self.next = 0;
                self.decoded_this_pass = 0;
            }
            let path = &self.files[self.next];
            self.next += 1;
            // JPEG through libjpeg-turbo, as the detector's reference decodes it.
            match edgeqi_shared::detector::decode::read_rgb(path) {
                Ok(img) => {
                    self.decoded_this_pass += 1;
                    let frame = Frame {
                        camera_id: self.camera_id.clone(),
                        ts: Utc::now(),
                        seq: self.seq,
                        width: img.width as u32,
                        height: img.height as u32,
                        rgb: img.data,
                    };
                    self.seq += 1;
                    return Ok(Some(frame));
                }
                Err(e) => {
                    tracing::warn!(camera = %self.camera_id, file = %path.display(), error = %e,
                        "skipping an image that does not decode");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, v: u8) {
        image::RgbImage::from_pixel(w, h, image::Rgb([v, v, v]))
            .save(path)
            .expect("write png");
    }

    #[test]
    fn name_order_skip_corrupt_and_stop_without_loop() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_png(&dir.path().join("b.png"), 8, 4, 20);
        write_png(&dir.path().join("a.png"), 4, 2, 10);
        std::fs::write(dir.path().join("c.jpg"), b"not a jpeg").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");
        let mut s = ImageDirSource::open("c", dir.path(), false).expect("open");
        let a = s.next_frame().expect("a").expect("some");
        assert_eq!((a.width, a.height, a.rgb[0]), (4, 2, 10));
        let b = s.next_frame().expect("b").expect("some");
        assert_eq!((b.width, b.seq), (8, 1));
        assert!(s.next_frame().expect("end").is_none());
    }

    #[test]
    fn loops_by_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_png(&dir.path().join("a.png"), 4, 4, 1);
        let mut s = ImageDirSource::open("c", dir.path(), true).expect("open");
        for seq in 0..3 {
            assert_eq!(s.next_frame().expect("ok").expect("some").seq, seq);
        }
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ImageDirSource::open("c", dir.path(), true).expect_err("empty");
        assert!(err.to_string().contains("no .jpg"), "{err}");
        let err =
            ImageDirSource::open("c", &dir.path().join("missing"), true).expect_err("missing");
        assert!(err.to_string().contains("cannot list"), "{err}");
        std::fs::write(dir.path().join("x.png"), b"junk").expect("write");
        let mut s = ImageDirSource::open("c", dir.path(), true).expect("open");
        assert!(
            s.next_frame().is_err(),
            "all-corrupt directory is an error, not a busy loop"
        );
    }
}

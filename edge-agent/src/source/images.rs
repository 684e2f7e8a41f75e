//! `images://DIR`: JPEG and PNG files from a directory, in name order.
//!
//! Loops over the directory forever unless `loop=false`. A file that will
//! not decode (empty, truncated, not an image, or larger than the camera's
//! [`FrameLimits`] by its header or its size on disk) is skipped as a
//! [`SourceError::Decode`], which the pipeline counts and logs: one bad
//! file must not stop a camera.

use std::path::{Path, PathBuf};

use chrono::Utc;

use super::{FrameLimits, FrameSource, SourceError};
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
    limits: FrameLimits,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

impl ImageDirSource {
    pub fn open(
        camera_id: &str,
        dir: &Path,
        looping: bool,
        limits: FrameLimits,
    ) -> Result<Self, SourceError> {
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
            limits,
        })
    }

    /// Checks what can be checked without decoding: the file's size and the
    /// dimensions its header claims (a PNG or JPEG header alone can ask for
    /// gigabytes), then decodes.
    fn read(&self, path: &Path) -> Result<edgeqi_shared::detector::decode::Rgb8, String> {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("cannot read it: {e}"))?
            .len();
        if len == 0 {
            return Err("empty file".into());
        }
        if len > self.limits.max_file_bytes() {
            return Err(format!(
                "{len} bytes, more than any frame within max_frame_pixels {} can take",
                self.limits.max_pixels
            ));
        }
        let (w, h) = image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| format!("cannot read it: {e}"))?
            .into_dimensions()
            .map_err(|e| format!("not a readable JPEG or PNG header: {e}"))?;
        self.limits.check(w, h)?;
        // JPEG through libjpeg-turbo, as the detector's reference decodes it.
        let img = edgeqi_shared::detector::decode::read_rgb(path).map_err(|e| e.to_string())?;
        if (img.width, img.height) != (w as usize, h as usize) {
            return Err(format!(
                "decoded {}x{}, but its header says {w}x{h}",
                img.width, img.height
            ));
        }
        Ok(img)
    }
}

impl FrameSource for ImageDirSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
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
        let path = self.files[self.next].clone();
        self.next += 1;
        let img = self.read(&path).map_err(|reason| SourceError::Decode {
            what: format!("images://{}", self.dir.display()),
            reason: format!("{}: {reason}; skipped", path.display()),
        })?;
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
        Ok(Some(frame))
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
        let mut s =
            ImageDirSource::open("c", dir.path(), false, FrameLimits::default()).expect("open");
        let a = s.next_frame().expect("a").expect("some");
        assert_eq!((a.width, a.height, a.rgb[0]), (4, 2, 10));
        let b = s.next_frame().expect("b").expect("some");
        assert_eq!((b.width, b.seq), (8, 1));
        let err = s.next_frame().expect_err("c.jpg is a bad frame");
        assert!(matches!(err, SourceError::Decode { .. }), "{err}");
        assert!(s.next_frame().expect("end").is_none());
    }

    /// A PNG whose IHDR claims `w` x `h` (1-bit grey), with a tiny IDAT:
    /// a decoder trusting the header would allocate w*h*3 bytes for RGB.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[1, 0, 0, 0, 0]); // 1-bit grey
        chunk(&mut out, b"IHDR", &ihdr);
        // A stored (uncompressed) zlib stream of a few zero bytes.
        chunk(
            &mut out,
            b"IDAT",
            &[
                0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0, 0x04, 0x00, 0x01,
            ],
        );
        chunk(&mut out, b"IEND", &[]);
        out
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 90]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg)
            .expect("jpeg");
        out.into_inner()
    }

    #[test]
    fn bad_files_are_decode_errors_and_good_ones_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write_png(&d.join("a-good.png"), 6, 4, 50);
        std::fs::write(d.join("b-bomb.png"), png_claiming(30_000, 30_000)).expect("write");
        let whole = jpeg(64, 48);
        std::fs::write(d.join("c-truncated.jpg"), &whole[..whole.len() / 3]).expect("write");
        std::fs::write(d.join("d-empty.jpg"), b"").expect("write");
        std::fs::write(d.join("e-text.png"), b"hello, I am not a picture").expect("write");
        std::fs::write(d.join("f-good.jpg"), &whole).expect("write");
        let mut s = ImageDirSource::open("c", d, false, FrameLimits::default()).expect("open");
        let mut frames = Vec::new();
        let mut errors = Vec::new();
        for _ in 0..20 {
            match s.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(SourceError::Decode { what, reason }) => {
                    errors.push(format!("{what}: {reason}"))
                }
                Err(e) => panic!("a bad file must not stop the source: {e}"),
            }
        }
        assert_eq!(frames.len(), 2, "{errors:?}");
        assert_eq!((frames[0].width, frames[1].width), (6, 64));
        assert_eq!(frames[1].rgb.len(), 64 * 48 * 3);
        let joined = errors.join("\n");
        assert!(
            joined.contains("b-bomb.png") && joined.contains("30000x30000"),
            "{joined}"
        );
        assert!(joined.contains("max_frame_pixels"), "{joined}");
        assert!(joined.contains("d-empty.jpg: empty file"), "{joined}");
        assert!(joined.contains("e-text.png"), "{joined}");
        // The truncated JPEG: libjpeg either refuses it or pads it; never a
        // frame of another size than its header says.
        assert!(errors.len() >= 3, "{joined}");
    }

    #[test]
    fn the_camera_limits_apply_before_decoding() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_png(&dir.path().join("big.png"), 200, 100, 1);
        write_png(&dir.path().join("small.png"), 100, 50, 2);
        let limits = FrameLimits {
            max_width: 150,
            max_height: 150,
            max_pixels: 150 * 150,
        };
        let mut s = ImageDirSource::open("c", dir.path(), false, limits).expect("open");
        let err = s.next_frame().expect_err("big.png is over max_frame_width");
        assert!(err.to_string().contains("200x100"), "{err}");
        assert_eq!(s.next_frame().expect("ok").expect("frame").width, 100);
        // A file larger than any frame within the pixel limit is not read.
        let tiny = FrameLimits {
            max_width: 16,
            max_height: 16,
            max_pixels: 256,
        };
        std::fs::write(dir.path().join("big.png"), vec![0u8; 2 << 20]).expect("write");
        let mut s = ImageDirSource::open("c", dir.path(), false, tiny).expect("open");
        let err = s.next_frame().expect_err("too many bytes");
        assert!(err.to_string().contains("bytes, more than"), "{err}");
    }

    #[test]
    fn loops_by_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_png(&dir.path().join("a.png"), 4, 4, 1);
        let mut s =
            ImageDirSource::open("c", dir.path(), true, FrameLimits::default()).expect("open");
        for seq in 0..3 {
            assert_eq!(s.next_frame().expect("ok").expect("some").seq, seq);
        }
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            ImageDirSource::open("c", dir.path(), true, FrameLimits::default()).expect_err("empty");
        assert!(err.to_string().contains("no .jpg"), "{err}");
        let err = ImageDirSource::open(
            "c",
            &dir.path().join("missing"),
            true,
            FrameLimits::default(),
        )
        .expect_err("missing");
        assert!(err.to_string().contains("cannot list"), "{err}");
        std::fs::write(dir.path().join("x.png"), b"junk").expect("write");
        let mut s =
            ImageDirSource::open("c", dir.path(), true, FrameLimits::default()).expect("open");
        assert!(matches!(s.next_frame(), Err(SourceError::Decode { .. })));
        assert!(
            matches!(s.next_frame(), Err(SourceError::ImageDir { .. })),
            "all-corrupt directory is an error, not a busy loop"
        );
    }
}

//! Reading image files into RGB8 for the detector, decoding JPEG exactly as
//! the reference pipeline does.
//!
//! The reference detections (and anything a user compares us with: Pillow,
//! OpenCV, onnxruntime's samples) decode JPEG with libjpeg-turbo. Decoders
//! differ by a grey level here and there (IDCT rounding, chroma upsampling),
//! and the int8 model amplifies that: a borderline box moves. So JPEG goes
//! through libjpeg-turbo's decoder as vendored by the `mozjpeg` crate
//! (islow IDCT, fancy upsampling: libjpeg's defaults, bit-exact with and
//! without its SIMD), compiled from source with the target's C compiler, so
//! cross builds need no ARM libjpeg. Other formats (PNG) go through `image`.

use std::path::Path;

use super::DetectorError;

/// An RGB8 picture: rows top to bottom, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub data: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

/// Reads and decodes an image file (JPEG or PNG).
pub fn read_rgb(path: &Path) -> Result<Rgb8, DetectorError> {
    let bytes = std::fs::read(path).map_err(|source| DetectorError::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode_rgb(&bytes).map_err(|e| match e {
        DetectorError::BadImage(msg) => {
            DetectorError::BadImage(format!("{}: {msg}", path.display()))
        }
        other => other,
    })
}

/// Decodes an encoded image (JPEG or PNG) held in memory.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb8, DetectorError> {
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        return decode_jpeg(bytes);
    }
    let img = image::load_from_memory(bytes)
        .map_err(|e| DetectorError::BadImage(format!("cannot decode the image: {e}")))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    Ok(Rgb8 {
        data: img.into_raw(),
        width: w as usize,
        height: h as usize,
    })
}

/// Decodes a JPEG with libjpeg-turbo's decoder (greyscale is expanded to
/// RGB; CMYK JPEGs are refused with an error).
pub fn decode_jpeg(bytes: &[u8]) -> Result<Rgb8, DetectorError> {
    // libjpeg reports fatal errors through a callback that the `mozjpeg`
    // crate turns into an unwind; catch it here so a corrupt file is an
    // error, not a crash. Nothing shared is left half-updated on unwind:
    // the decoder state lives and dies inside the closure.
    let result = std::panic::catch_unwind(|| -> std::io::Result<Rgb8> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        let mut started = d.rgb()?;
        let (width, height) = (started.width(), started.height());
        let data = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok(Rgb8 {
            data,
            width,
            height,
        })
    });
    let rgb = match result {
        Ok(Ok(rgb)) => rgb,
        Ok(Err(e)) => return Err(DetectorError::BadImage(format!("cannot decode JPEG: {e}"))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "libjpeg failed".to_owned());
            return Err(DetectorError::BadImage(format!(
                "cannot decode JPEG: {msg}"
            )));
        }
    };
    if rgb.width == 0 || rgb.height == 0 || rgb.data.len() != rgb.width * rgb.height * 3 {
        return Err(DetectorError::BadImage(format!(
            "JPEG decoded to {} bytes for {}x{} pixels",
            rgb.data.len(),
            rgb.width,
            rgb.height
        )));
    }
    Ok(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn testdata(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| {
            panic!("{}: {e} (needs ../shared beside the checkout)", p.display())
        })
    }

    /// The decoded pixels are byte for byte what libjpeg-turbo gives: the
    /// digests are of Pillow 13.0's `Image.open(f).convert("RGB")` (libjpeg-turbo
    /// 3.2.0), the decoder behind the reference detections.
    #[test]
    fn jpeg_decodes_bit_exactly_like_libjpeg_turbo() {
        for (name, w, h, sha) in [
            (
                "bus.jpg",
                810,
                1080,
                "8739ae2c34b8713bcc185201414014011b601159d5ec717275e4a2625f9fbded",
            ),
            (
                "zidane.jpg",
                1280,
                720,
                "fc8f5dcc875ac075c607f8bc823c9ba4afa37d11141db01fb6521b94b902e9ce",
            ),
        ] {
            let img = decode_rgb(&testdata(name)).expect("decodes");
            assert_eq!((img.width, img.height), (w, h), "{name}");
            let got: String = Sha256::digest(&img.data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(got, sha, "{name}: pixels differ from libjpeg-turbo's");
        }
    }

    #[test]
    fn broken_images_are_errors_not_crashes() {
        let jpeg = testdata("bus.jpg");
        for bad in [
            &jpeg[..3],
            &jpeg[..200],
            b"\xff\xd8\xff\xe0 not really".as_slice(),
            b"GIF89a...",
        ] {
            let err = decode_rgb(bad).expect_err("not a decodable image");
            assert!(matches!(err, DetectorError::BadImage(_)), "{err}");
        }
        let err = read_rgb(Path::new("/nonexistent/x.jpg")).expect_err("no file");
        assert!(err.to_string().contains("/nonexistent/x.jpg"), "{err}");
    }

    #[test]
    fn png_still_decodes() {
        let mut png = Vec::new();
        let img = image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("encode png");
        let got = decode_rgb(&png).expect("decodes");
        assert_eq!((got.width, got.height), (3, 2));
        assert_eq!(got.data, img.into_raw());
    }
}

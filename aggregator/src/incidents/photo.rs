//! Decoding citizen report photos at a bounded cost.
//!
//! The report endpoint is public, and a compressed image says nothing about
//! what it costs to decode: a 48 KB PNG or a 333-byte JPEG can claim
//! 20000×20000 pixels (1.2 GB as RGB8, seconds of CPU). So a photo is judged
//! by its header first ([`inspect`]: format, dimensions, native colour type,
//! no pixel data touched) against [`PhotoLimits`] — a pixel cap, and a cap on
//! the bytes the decode holds at once (the decoder's own buffer in the
//! photo's colour type plus the RGB8 copy the detector needs) — and only then
//! decoded ([`PhotoDecoder::run`]), on the blocking pool, with the image
//! crate's limits set to the same caps as a second line, and at most
//! `concurrency` decodes (and detector runs) at a time. A report that finds
//! every slot taken waits up to [`PhotoDecoder::wait`] and is then told to
//! come back later ([`PhotoError::Busy`]), so a burst queues briefly instead
//! of piling decodes onto the CPU and into memory.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use image::{ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use tokio::sync::Semaphore;

/// What one photo may cost to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoLimits {
    /// Width × height (`reports.max_photo_pixels`).
    pub max_pixels: u64,
    /// The decoder's buffer in the photo's own colour type plus the RGB8
    /// copy, together (`reports.max_photo_decoded_bytes`).
    pub max_decoded_bytes: u64,
}

impl Default for PhotoLimits {
    /// 25 megapixels (a 6000×4000 camera; phones take 12) and 192 MiB: an
    /// 8-bit RGBA PNG of 25 megapixels (100 MB + 75 MB RGB8) fits, a 16-bit
    /// one of that size does not.
    fn default() -> Self {
        Self {
            max_pixels: 25_000_000,
            max_decoded_bytes: 192 * 1024 * 1024,
        }
    }
}

/// Decode slots by default: half the cores (the rest keep ingest and the
/// API going), at least 1, at most 4.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .clamp(1, 4)
}

/// Why a photo is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhotoError {
    /// Not a JPEG or PNG (by content, whatever the client called it).
    NotAnImage,
    /// A JPEG without its end marker (decoders would fill the rest with grey).
    Truncated,
    /// The header claims more than [`PhotoLimits`] allow.
    TooLarge(String),
    /// The header or the data does not decode.
    Corrupt(String),
    /// Every decode slot stayed taken for [`PhotoDecoder::wait`].
    Busy,
    /// The detector failed on a decoded photo.
    Analysis(String),
}

impl std::fmt::Display for PhotoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PhotoError::NotAnImage => f.write_str("photo must be a JPEG or PNG image"),
            PhotoError::Truncated => f.write_str("photo is a truncated JPEG"),
            PhotoError::TooLarge(m) | PhotoError::Corrupt(m) | PhotoError::Analysis(m) => {
                f.write_str(m)
            }
            PhotoError::Busy => {
                f.write_str("too many photos are being analysed right now; retry in a few seconds")
            }
        }
    }
}

/// What the header of an accepted photo says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoHeader {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl PhotoHeader {
    /// The MIME type the photo is stored and served with.
    pub fn content_type(&self) -> &'static str {
        if self.format == ImageFormat::Png {
            "image/png"
        } else {
            "image/jpeg"
        }
    }
}

/// The image crate's limits for these caps: no side longer than the pixel
/// cap allows with the other side at 1, and the decoder's allocations within
/// the byte cap.
fn crate_limits(limits: &PhotoLimits) -> Limits {
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    let mut l = Limits::default();
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    l.max_alloc = Some(limits.max_decoded_bytes);
    l
}

/// Reads the header only and checks it against `limits`; returns the
/// decoder, ready to decode, so [`decode`] does not parse it twice.
fn open<'a>(
    bytes: &'a [u8],
    limits: &PhotoLimits,
) -> Result<(PhotoHeader, impl ImageDecoder + 'a), PhotoError> {
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| matches!(f, ImageFormat::Jpeg | ImageFormat::Png))
        .ok_or(PhotoError::NotAnImage)?;
    // 0xFF 0xD9 cannot occur inside entropy-coded data: a real JPEG ends with it.
    if format == ImageFormat::Jpeg
        && !bytes[bytes.len().saturating_sub(4096)..]
            .windows(2)
            .any(|w| w == [0xFF, 0xD9])
    {
        return Err(PhotoError::Truncated);
    }
    // Dimensions are checked before the crate's limits see them, so an
    // oversized photo gets the message below rather than the crate's.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| PhotoError::Corrupt(format!("photo does not decode: {e}")))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(PhotoError::TooLarge(format!(
            "photo is {width}x{height} ({:.1} megapixels); at most {:.1} megapixels are accepted: scale it down",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(crate_limits(limits));
    let decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(l) => PhotoError::TooLarge(format!("photo is too large: {l}")),
        e => PhotoError::Corrupt(format!("photo does not decode: {e}")),
    })?;
    let native = decoder.total_bytes();
    let rgb8 = if decoder.color_type() == image::ColorType::Rgb8 {
        0 // into_rgb8 keeps the decoder's buffer
    } else {
        pixels * 3
    };
    let needed = native.saturating_add(rgb8);
    if needed > limits.max_decoded_bytes {
        return Err(PhotoError::TooLarge(format!(
            "photo is {width}x{height} in {:?}: decoding it takes {} MiB, at most {} MiB are allowed: scale it down or save it as 8-bit RGB",
            decoder.color_type(),
            needed.div_ceil(1 << 20),
            limits.max_decoded_bytes >> 20
        )));
    }
    Ok((
        PhotoHeader {
            format,
            width,
            height,
        },
        decoder,
    ))
}

/// Checks a photo's format and header against `limits` without decoding
/// any pixel data (microseconds, whatever the header claims).
pub fn inspect(bytes: &[u8], limits: &PhotoLimits) -> Result<PhotoHeader, PhotoError> {
    open(bytes, limits).map(|(h, _)| h)
}

/// Decodes a photo to RGB8 within `limits` (blocking: call it from the
/// blocking pool, as [`PhotoDecoder::run`] does).
pub fn decode(bytes: &[u8], limits: &PhotoLimits) -> Result<RgbImage, PhotoError> {
    let (_, decoder) = open(bytes, limits)?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(l) => PhotoError::TooLarge(format!("photo is too large: {l}")),
        e => PhotoError::Corrupt(format!("photo does not decode: {e}")),
    })?;
    Ok(img.into_rgb8())
}

/// Runs photo decodes (and what is done with the pixels) off the async
/// runtime, a bounded number at a time.
#[derive(Debug)]
pub struct PhotoDecoder {
    pub limits: PhotoLimits,
    slots: Arc<Semaphore>,
    concurrency: usize,
    /// How long a report waits for a free slot before [`PhotoError::Busy`].
    pub wait: Duration,
}

impl PhotoDecoder {
    pub fn new(limits: PhotoLimits, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            limits,
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            wait: Duration::from_secs(5),
        }
    }

    /// Decode slots (`reports.max_concurrent_decodes`).
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Checks the header, waits (bounded) for a slot, decodes the photo on
    /// the blocking pool and hands the pixels to `work` there, still
    /// holding the slot (the detector is the other half of the cost).
    pub async fn run<T, F>(
        &self,
        bytes: bytes::Bytes,
        work: F,
    ) -> Result<(PhotoHeader, T), PhotoError>
    where
        T: Send + 'static,
        F: FnOnce(RgbImage) -> Result<T, String> + Send + 'static,
    {
        // Refuse bombs before they queue for a slot.
        let header = inspect(&bytes, &self.limits)?;
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| PhotoError::Busy)?
            .map_err(|_| PhotoError::Busy)?;
        let limits = self.limits;
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let rgb = decode(&bytes, &limits)?;
            work(rgb).map_err(PhotoError::Analysis)
        })
        .await
        .map_err(|e| PhotoError::Analysis(format!("photo analysis failed: {e}")))??;
        Ok((header, out))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    }

    /// A valid PNG header claiming `width`×`height` (`bit_depth`-bit
    /// `color_type`) with a small zlib IDAT of zeros after it: a
    /// decompression bomb for large sizes.
    pub(crate) fn png_bomb(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &ihdr);
        // The whole image as zero rows (filter byte + packed samples),
        // deflated: ~1000:1, so 20000x20000 1-bit grey is ~50 KB, like the
        // bomb of issue 12. Written row by row, never held unpacked.
        let bits = u64::from(bit_depth) * u64::from(channels(color_type));
        let row = vec![0u8; 1 + (u64::from(width) * bits).div_ceil(8) as usize];
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        for _ in 0..height {
            std::io::Write::write_all(&mut enc, &row).expect("deflate");
        }
        let z = enc.finish().expect("deflate");
        chunk(&mut png, b"IDAT", &z);
        chunk(&mut png, b"IEND", &[]);
        png
    }

    fn channels(color_type: u8) -> u8 {
        match color_type {
            2 => 3,
            4 => 2,
            6 => 4,
            _ => 1,
        }
    }

    /// A JPEG whose SOF0 header claims `width`×`height` (3 components),
    /// with no real scan data, ending in EOI: 333 bytes of bomb.
    pub(crate) fn jpeg_bomb(width: u16, height: u16) -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8];
        // DQT: one table of ones.
        j.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
        j.extend_from_slice(&[1u8; 64]);
        // SOF0: 8-bit, height, width, 3 components sharing table 0.
        j.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
        j.extend_from_slice(&height.to_be_bytes());
        j.extend_from_slice(&width.to_be_bytes());
        j.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]);
        // DHT: a DC and an AC table with one 1-bit code each.
        for class in [0x00u8, 0x10] {
            j.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x14, class]);
            let mut counts = [0u8; 16];
            counts[0] = 1;
            j.extend_from_slice(&counts);
            j.push(0);
        }
        // SOS over the 3 components, then a few bytes of "scan" and EOI.
        j.extend_from_slice(&[
            0xFF, 0xDA, 0x00, 0x0C, 3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0,
        ]);
        j.extend_from_slice(&[0u8; 16]);
        j.extend_from_slice(&[0xFF, 0xD9]);
        j
    }

    /// A small real photo of `w`×`h` (RGB gradient) in `format`.
    pub(crate) fn real_photo(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 90]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format)
            .expect("encode");
        out
    }

    fn small() -> PhotoLimits {
        PhotoLimits {
            max_pixels: 1_000_000,
            max_decoded_bytes: 4 << 20,
        }
    }

    #[test]
    fn the_bombs_claim_what_they_claim() {
        // Without this the tests below could pass on files that do not parse.
        for (name, bomb) in [
            ("png", png_bomb(20_000, 20_000, 1, 0)),
            ("jpeg", jpeg_bomb(20_000, 20_000)),
        ] {
            let dims = ImageReader::new(Cursor::new(&bomb))
                .with_guessed_format()
                .expect("guess")
                .into_dimensions()
                .expect(name);
            assert_eq!(dims, (20_000, 20_000), "{name}");
        }
        let png = png_bomb(20_000, 20_000, 1, 0);
        assert!(png.len() < 100_000, "a bomb is small: {} bytes", png.len());
        assert!(jpeg_bomb(20_000, 20_000).len() < 400);
    }

    #[test]
    fn bombs_are_refused_from_the_header_in_no_time() {
        let limits = PhotoLimits::default();
        for (name, bomb) in [
            ("1-bit grey png", png_bomb(20_000, 20_000, 1, 0)),
            ("rgba png", png_bomb(6000, 6000, 8, 6)),
            ("jpeg", jpeg_bomb(20_000, 20_000)),
            ("one long row", png_bomb(100_000_000, 1, 1, 0)),
        ] {
            let t = std::time::Instant::now();
            let err = decode(&bomb, &limits).expect_err(name);
            assert!(
                matches!(&err, PhotoError::TooLarge(m) if m.contains("megapixels")),
                "{name}: {err:?}"
            );
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{name}: {:?}",
                t.elapsed()
            );
        }
    }

    #[test]
    fn decoded_bytes_count_the_colour_type_and_the_rgb8_copy() {
        let limits = small();
        // 1 megapixel is within the pixel cap either way.
        let rgb8 = png_bomb(1000, 1000, 8, 2); // 3 MB, kept as is
        let img = decode(&rgb8, &limits).expect("8-bit RGB fits 4 MiB");
        assert_eq!(img.dimensions(), (1000, 1000));
        let rgba16 = png_bomb(1000, 1000, 16, 6); // 8 MB native
        let err = decode(&rgba16, &limits).expect_err("16-bit RGBA");
        assert!(
            matches!(&err, PhotoError::TooLarge(m) if m.contains("MiB")),
            "{err:?}"
        );
        // Grey is 1 MB natively but 3 MB more as RGB8: 4 MB > 3.5 MiB.
        let grey = png_bomb(1000, 1000, 8, 0);
        let tight = PhotoLimits {
            max_decoded_bytes: 3 << 20 | 1 << 19,
            ..limits
        };
        assert!(matches!(
            decode(&grey, &tight),
            Err(PhotoError::TooLarge(_))
        ));
        assert!(decode(&grey, &limits).is_ok());
    }

    #[test]
    fn real_photos_decode_and_other_files_do_not() {
        for format in [ImageFormat::Jpeg, ImageFormat::Png] {
            let photo = real_photo(64, 48, format);
            let header = inspect(&photo, &small()).expect("header");
            assert_eq!(
                (header.format, header.width, header.height),
                (format, 64, 48)
            );
            assert_eq!(
                decode(&photo, &small()).expect("decode").dimensions(),
                (64, 48)
            );
        }
        assert_eq!(
            inspect(b"GIF89a....", &small()),
            Err(PhotoError::NotAnImage)
        );
        let mut cut = real_photo(64, 48, ImageFormat::Jpeg);
        cut.truncate(cut.len() - 2);
        assert_eq!(inspect(&cut, &small()), Err(PhotoError::Truncated));
        let mut png = real_photo(64, 48, ImageFormat::Png);
        png.truncate(40);
        assert!(matches!(
            decode(&png, &small()),
            Err(PhotoError::Corrupt(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_decoder_makes_the_next_photo_wait_then_says_busy() {
        let mut dec = PhotoDecoder::new(small(), 1);
        dec.wait = Duration::from_millis(200);
        let dec = Arc::new(dec);
        let photo = bytes::Bytes::from(real_photo(32, 32, ImageFormat::Png));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let (dec, photo) = (dec.clone(), photo.clone());
            tokio::spawn(async move {
                dec.run(photo, move |img| {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                    Ok(img.width())
                })
                .await
            })
        };
        started_rx.await.expect("first decode started");
        let t = std::time::Instant::now();
        let second = dec.run(photo.clone(), |img| Ok(img.width())).await;
        assert_eq!(second, Err(PhotoError::Busy));
        assert!(t.elapsed() >= Duration::from_millis(200), "it waited first");
        // A bomb is refused at once even while every slot is taken.
        let bomb = bytes::Bytes::from(png_bomb(20_000, 20_000, 1, 0));
        let t = std::time::Instant::now();
        assert!(matches!(
            dec.run(bomb, |img| Ok(img.width())).await,
            Err(PhotoError::TooLarge(_))
        ));
        assert!(t.elapsed() < Duration::from_millis(100));
        release_tx.send(()).expect("release");
        let (header, w) = first.await.expect("join").expect("first decode");
        assert_eq!((header.width, w), (32, 32));
        // The slot is free again.
        assert_eq!(
            dec.run(photo, |img| Ok(img.height())).await.map(|(_, h)| h),
            Ok(32)
        );
    }
}

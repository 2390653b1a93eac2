//! Image decoding (every format the image crate reads, EXIF orientation honoured).
//!
//! Ultralytics reads images with OpenCV (`cv2.imread`), which applies the EXIF orientation of
//! JPEGs, and sizes them in its label scan with `exif_size` (width and height swapped for the
//! orientations 5-8). [`read_rgb8`] does the same with the image crate: the decoded pixels are
//! rotated / flipped as the EXIF tag says, so the size it reports is the displayed size.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// File extensions (lower case) Ultralytics treats as images: `IMG_FORMATS` in
/// `ultralytics/data/utils.py` (8.4.190). Of these the image crate in this build decodes bmp,
/// jpeg/jpg/mpo, png, tif/tiff and webp; the others (avif, dng, heic, heif, jp2) are listed so
/// that they are found like Ultralytics finds them, and then reported as unreadable.
pub const IMG_FORMATS: [&str; 13] = [
    "avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp",
];

/// Whether `path` has one of the [`IMG_FORMATS`] extensions (case-insensitive), the test
/// Ultralytics' `get_img_files` applies (`x.rpartition(".")[-1].lower() in IMG_FORMATS`).
pub fn has_image_extension(path: &Path) -> bool {
    let s = path.to_string_lossy();
    match s.rsplit_once('.') {
        Some((_, ext)) => IMG_FORMATS.contains(&ext.to_ascii_lowercase().as_str()),
        None => false,
    }
}

/// Images whose header claims more pixels than this are refused before decoding (100 MP,
/// Ultralytics has no such limit; PIL warns from 89 MP and refuses from 179 MP).
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Width and height of an image in pixels, after EXIF orientation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageSize {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

impl ImageSize {
    /// The size of a decoded image.
    pub fn of(image: &RgbImage) -> Self {
        Self {
            width: image.width(),
            height: image.height(),
        }
    }
}

/// A decoded image with the container format it was read from.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// RGB pixels, EXIF orientation applied.
    pub image: RgbImage,
    /// The format read from the file's content (or, failing that, its extension).
    pub format: ImageFormat,
}

/// Reads `path` into RGB8 with its EXIF orientation applied.
///
/// # Errors
/// [`CoreError::Io`] when the file cannot be read, [`CoreError::Image`] (naming the file) when
/// its content is not an image the image crate can decode.
pub fn read_rgb8(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    Ok(decode_rgb8(&bytes, path)?.image)
}

/// Decodes `bytes` (any format the image crate reads; the format is guessed from the content,
/// then from `name`'s extension) into RGB8 with the EXIF orientation applied. `name` is used
/// for the format fallback and in errors. Images of more than [`DEFAULT_MAX_PIXELS`] are
/// refused before decoding (see [`decode_rgb8_limited`]).
///
/// # Errors
/// [`CoreError::Image`] naming `name` when the bytes cannot be decoded,
/// [`CoreError::ImageTooLarge`] when the header claims too many pixels.
pub fn decode_rgb8(bytes: &[u8], name: &Path) -> Result<Decoded> {
    decode_rgb8_limited(bytes, name, DEFAULT_MAX_PIXELS)
}

/// [`decode_rgb8`] with a limit on the pixel count: the header's width x height is checked
/// before any pixel buffer is allocated, so a small file that claims 50000 x 50000 pixels costs
/// nothing. The image crate's own allocation limit (512 MB) stays on as a second guard.
///
/// # Errors
/// As [`decode_rgb8`]; [`CoreError::ImageTooLarge`] above `max_pixels`.
pub fn decode_rgb8_limited(bytes: &[u8], name: &Path, max_pixels: u64) -> Result<Decoded> {
    let err = |message: String| CoreError::Image {
        path: name.to_path_buf(),
        message,
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    if reader.format().is_none() {
        if let Ok(format) = ImageFormat::from_path(name) {
            reader.set_format(format);
        }
    }
    let format = reader
        .format()
        .ok_or_else(|| err("unrecognised image format".into()))?;
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(CoreError::ImageTooLarge {
            path: name.to_path_buf(),
            width,
            height,
            max_pixels,
        });
    }
    // A malformed EXIF block is not a reason to reject pixels that decode: no transform then.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(Decoded {
        image: image.into_rgb8(),
        format,
    })
}

/// An RGB image as a `[3, H, W]` row-major plane per channel, scaled to `[0, 1]` (what the
/// model takes).
pub fn to_chw(img: &RgbImage) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut chw = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = p.0[c] as f32 / 255.0;
        }
    }
    chw
}

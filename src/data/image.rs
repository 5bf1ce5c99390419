//! PNG/JPEG images as float arrays in [0, 1], through the `image` crate.
use crate::error::{Error, Result};
use std::path::Path;

/// Decodes an image into (C, H, W) floats in [0, 1]: grayscale when `channels` is 1, RGB when 3.
pub fn read_image(path: &Path, channels: usize) -> Result<(Vec<f32>, usize, usize)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, path, channels)
}

/// Decodes PNG/JPEG bytes (format guessed from the content) like [`read_image`]. The decoder's
/// default limits refuse images whose header claims more than 512 MiB.
pub fn decode_image(
    bytes: &[u8],
    path: &Path,
    channels: usize,
) -> Result<(Vec<f32>, usize, usize)> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = match channels {
        1 => img
            .to_luma8()
            .into_raw()
            .into_iter()
            .map(|v| v as f32 / 255.0)
            .collect(),
        3 => {
            let rgb = img.to_rgb8().into_raw();
            let mut planar = vec![0.0f32; 3 * h * w]; // (3, H, W) from interleaved (H, W, 3)
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    planar[c * h * w + i] = px[c] as f32 / 255.0;
                }
            }
            planar
        }
        c => {
            return Err(Error::invalid(format!(
                "{}: images can feed models with 1 or 3 input channels, not {c}",
                path.display()
            )))
        }
    };
    Ok((data, h, w))
}

/// True when the path names a PNG or JPEG by its extension.
pub fn is_image_path(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

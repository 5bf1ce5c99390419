//! Figures: image panels side by side (filter responses, learned filters), line charts
//! (activations, training curves) and the confusion matrix, as PNG or SVG, written atomically.
pub mod charts;
mod glyphs;
pub mod panels;

use crate::error::{Error, Result};
use crate::io::write_atomic;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// The backend of PNG figures: plotters' bitmap with text at the glyphs' true positions.
pub(crate) type Png<'a> = glyphs::Glyphs<BitMapBackend<'a>>;

/// The font family every figure uses; registered from the embedded DejaVu Sans, so no system
/// font is needed.
pub(crate) const FONT: &str = "sans-serif";

pub(crate) fn ensure_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration only fails on a malformed font, and this one is compiled in.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Output format chosen by the file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    pub fn of(path: &Path) -> Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(Error::invalid(format!(
                "{}: figures are written as .png or .svg",
                path.display()
            ))),
        }
    }
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot draw the figure: {e}"))
}

/// Draws with `draw` onto a white RGB canvas (w, h) pre-filled with `pixels` (if any) and saves a PNG.
pub(crate) fn save_png(
    path: &Path,
    (w, h): (u32, u32),
    pixels: Option<Vec<u8>>,
    draw: impl FnOnce(&DrawingArea<Png, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<()> {
    ensure_fonts();
    let mut buf = pixels.unwrap_or_else(|| vec![255u8; (w * h * 3) as usize]); // (H, W, RGB)
    {
        let backend = glyphs::Glyphs::new(BitMapBackend::with_buffer(&mut buf, (w, h)))
            .ok_or_else(|| plot_err(path, "the compiled-in font is malformed"))?;
        let root = backend.into_drawing_area();
        draw(&root).map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| plot_err(path, "buffer size"))?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| plot_err(path, e))?;
    write_atomic(path, &bytes)
}

/// Draws with `draw` onto an SVG canvas and saves it.
pub(crate) fn save_svg(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<()> {
    ensure_fonts();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, size).into_drawing_area();
        draw(&root).map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_atomic(path, s.as_bytes())
}

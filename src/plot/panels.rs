//! Grids of titled grayscale panels: an image beside its filter responses (h¹, h², …),
//! learned filters and their responses.
use super::{save_png, FONT};
use crate::error::Result;
use plotters::prelude::*;
use std::path::Path;

/// One titled grayscale picture.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    /// Rows of the picture.
    pub height: usize,
    /// Columns of the picture.
    pub width: usize,
    /// (height, width) values; scaled to black..white by their own min..max for display.
    pub values: Vec<f64>,
}

const MARGIN: usize = 12;
const TITLE: usize = 30;

/// Nearest-neighbour magnification so that small pictures (28×28 digits, 5×5 filters) are visible.
fn zoom(p: &Panel, target: usize) -> usize {
    (target / p.height.max(p.width).max(1)).max(1)
}

impl Panel {
    /// An empty cell, to start a new row of a grid.
    pub fn blank() -> Panel {
        Panel {
            title: String::new(),
            height: 0,
            width: 0,
            values: Vec::new(),
        }
    }
}

/// Lays the panels out in `columns` columns, each picture magnified to about `target` pixels,
/// and writes a PNG.
pub fn save_panels(path: &Path, panels: &[Panel], columns: usize, target: usize) -> Result<()> {
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns);
    let cell_w = panels
        .iter()
        .map(|p| p.width * zoom(p, target))
        .max()
        .unwrap_or(1);
    let cell_h = panels
        .iter()
        .map(|p| p.height * zoom(p, target))
        .max()
        .unwrap_or(1);
    let (w, h) = (
        columns * (cell_w + MARGIN) + MARGIN,
        rows * (cell_h + TITLE + MARGIN) + MARGIN,
    );
    let mut buf = vec![255u8; w * h * 3]; // (H, W, RGB)
    let mut origins = Vec::new();
    for (i, p) in panels.iter().enumerate() {
        let (r, c) = (i / columns, i % columns);
        let (x0, y0) = (
            MARGIN + c * (cell_w + MARGIN),
            MARGIN + r * (cell_h + TITLE + MARGIN) + TITLE,
        );
        origins.push((x0, y0));
        if p.values.is_empty() {
            continue;
        }
        let (lo, hi) = p
            .values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = if hi > lo { hi - lo } else { 1.0 };
        let z = zoom(p, target);
        for y in 0..p.height * z {
            for x in 0..p.width * z {
                let v = p.values[(y / z) * p.width + x / z];
                let g = if v.is_finite() {
                    (255.0 * (v - lo) / span).round() as u8
                } else {
                    0
                };
                let o = ((y0 + y) * w + x0 + x) * 3;
                buf[o..o + 3].copy_from_slice(&[g, g, g]);
            }
        }
    }
    save_png(path, (w as u32, h as u32), Some(buf), |root| {
        let style = TextStyle::from((FONT, 20).into_font()).color(&BLACK);
        for (p, &(x0, y0)) in panels.iter().zip(&origins) {
            root.draw(&Text::new(
                p.title.clone(),
                (x0 as i32, (y0 - TITLE + 4) as i32),
                style.clone(),
            ))
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// "h¹", "h²", … for response `i` (0-based), as the lecture labels them.
pub fn response_title(i: usize) -> String {
    const SUP: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
    let digits: String = (i + 1)
        .to_string()
        .chars()
        .map(|d| SUP[d as usize - '0' as usize])
        .collect();
    format!("h{digits}")
}

//! Line charts and the confusion matrix: the lecture's activation figure, training curves.
use super::{save_png, save_svg, Format, FONT};
use crate::error::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

type DrawResult = std::result::Result<(), String>;

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// One activation function sampled: f(z) and f'(z) at each z.
pub struct ActivationCurve {
    pub name: String,
    pub z: Vec<f64>,
    pub f: Vec<f64>,
    pub df: Vec<f64>,
}

/// (rows, columns) of the panel grid for n panels: the lecture's 2×2 for four.
fn grid(n: usize) -> (usize, usize) {
    let cols = match n {
        0..=1 => 1,
        2..=4 => 2,
        5..=9 => 3,
        _ => 4,
    };
    (n.div_ceil(cols).max(1), cols)
}

/// The y range that shows `values` with a margin.
fn y_range<'a>(values: impl Iterator<Item = &'a f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (-1.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(0.1);
    (lo - pad, hi + pad)
}

/// One panel per activation: f(z) (and f'(z)), with the lecture's axis labels.
fn draw_activations<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    derivatives: bool,
    curves: &[ActivationCurve],
) -> DrawResult {
    root.fill(&WHITE).map_err(s)?;
    let areas = root.split_evenly(grid(curves.len()));
    for (area, c) in areas.iter().zip(curves) {
        let (lo, hi) = if derivatives {
            y_range(c.f.iter().chain(&c.df))
        } else {
            y_range(c.f.iter())
        };
        let (z0, z1) = (
            c.z.first().copied().unwrap_or(-5.0),
            c.z.last().copied().unwrap_or(5.0),
        );
        let mut chart = ChartBuilder::on(area)
            .caption(&c.name, (FONT, 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(z0..z1, lo..hi)
            .map_err(s)?;
        chart
            .configure_mesh()
            .x_desc("input to activation function")
            .y_desc("output of activation function")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(s)?;
        chart
            .draw_series(LineSeries::new(
                c.z.iter().copied().zip(c.f.iter().copied()),
                BLUE.stroke_width(2),
            ))
            .map_err(s)?
            .label("f(z)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        if derivatives {
            chart
                .draw_series(LineSeries::new(
                    c.z.iter().copied().zip(c.df.iter().copied()),
                    RED.stroke_width(2),
                ))
                .map_err(s)?
                .label("f'(z)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 16))
                .draw()
                .map_err(s)?;
        }
    }
    Ok(())
}

/// The lecture's figure of activation functions (and their derivatives), one panel each.
pub fn save_activations(path: &Path, derivatives: bool, curves: &[ActivationCurve]) -> Result<()> {
    let (rows, cols) = grid(curves.len());
    let size = (500 * cols as u32, 400 * rows as u32);
    match Format::of(path)? {
        Format::Png => save_png(path, size, None, |r| {
            draw_activations(r, derivatives, curves)
        }),
        Format::Svg => save_svg(path, size, |r| draw_activations(r, derivatives, curves)),
    }
}

/// Per-epoch values for the training curves.
pub struct Curves<'a> {
    pub train_loss: &'a [f64],
    pub test_loss: &'a [f64],
    pub test_accuracy: &'a [f64],
}

fn draw_curves<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &Curves) -> DrawResult {
    root.fill(&WHITE).map_err(s)?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let n = c.train_loss.len().max(c.test_loss.len()).max(1);
    let xs = 1.0..(n as f64).max(2.0);
    let top = c
        .train_loss
        .iter()
        .chain(c.test_loss)
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
    let mut chart = ChartBuilder::on(&left)
        .caption("loss", (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(xs.clone(), 0.0..top)
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(s)?;
    for (vals, color, name) in [(c.train_loss, BLUE, "train"), (c.test_loss, RED, "test")] {
        if vals.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                vals.iter().enumerate().map(|(i, &v)| ((i + 1) as f64, v)),
                color.stroke_width(2),
            ))
            .map_err(s)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(s)?;
    let lo = c
        .test_accuracy
        .iter()
        .copied()
        .fold(1.0f64, f64::min)
        .clamp(0.0, 0.9);
    let mut chart = ChartBuilder::on(&right)
        .caption("test accuracy", (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(xs, lo..1.0)
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(s)?;
    chart
        .draw_series(LineSeries::new(
            c.test_accuracy
                .iter()
                .enumerate()
                .map(|(i, &v)| ((i + 1) as f64, v)),
            GREEN.stroke_width(2),
        ))
        .map_err(s)?;
    Ok(())
}

/// Train and test loss, and test accuracy, per epoch.
pub fn save_curves(path: &Path, c: &Curves) -> Result<()> {
    let size = (1000, 420);
    match Format::of(path)? {
        Format::Png => save_png(path, size, None, |r| draw_curves(r, c)),
        Format::Svg => save_svg(path, size, |r| draw_curves(r, c)),
    }
}

/// Counts of (true class, predicted class) as a shaded grid with the numbers written in.
/// The confusion matrix as a grid of counts (rows: true class, columns: predicted), each
/// row and column labelled with its class name (`names[i]`, or i).
pub fn save_confusion(path: &Path, m: &[Vec<usize>], names: &[String]) -> Result<()> {
    let k = m.len().max(1);
    let cell = 48u32;
    let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| i.to_string());
    // Room for the longest name beside the rows and, turned upright, above the columns.
    let longest = (0..k).map(|i| name(i).chars().count()).max().unwrap_or(1) as u32;
    let margin = 60 + 9 * longest.max(2);
    let size = (cell * k as u32 + margin + 40, cell * k as u32 + margin + 40);
    let draw = |root: &DrawingArea<super::Png, Shift>| -> DrawResult {
        root.fill(&WHITE).map_err(s)?;
        let max = m.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
        let (x0, y0) = (margin as i32, margin as i32);
        let font = |px: u32| TextStyle::from((FONT, px).into_font());
        root.draw(&Text::new(
            "predicted class",
            (x0 + (cell as i32 * k as i32) / 2 - 60, 8),
            font(18),
        ))
        .map_err(s)?;
        root.draw(&Text::new("true class", (4, y0 - 30), font(18)))
            .map_err(s)?;
        for (t, row) in m.iter().enumerate() {
            let label = name(t);
            root.draw(&Text::new(
                label.clone(),
                (x0 - 8, y0 + t as i32 * cell as i32 + cell as i32 / 2),
                font(16).pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(s)?;
            root.draw(&Text::new(
                label,
                (x0 + t as i32 * cell as i32 + cell as i32 / 2, y0 - 8),
                font(16)
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(s)?;
            for (p, &v) in row.iter().enumerate() {
                let shade = (255.0 * (1.0 - (v as f64 / max).sqrt())) as u8;
                let (cx, cy) = (x0 + p as i32 * cell as i32, y0 + t as i32 * cell as i32);
                root.draw(&Rectangle::new(
                    [(cx, cy), (cx + cell as i32, cy + cell as i32)],
                    RGBColor(shade, shade, 255).filled(),
                ))
                .map_err(s)?;
                let color = if shade < 120 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    v.to_string(),
                    (cx + 6, cy + cell as i32 / 3),
                    font(14).color(&color),
                ))
                .map_err(s)?;
            }
        }
        Ok(())
    };
    save_png(path, size, None, draw)
}

//! Line charts and the confusion matrix: the lecture's activation figure, training curves.
use super::{save_png, save_svg, Format, FONT};
use crate::error::Result;
use crate::ops::activation::Activation;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

type DrawResult = std::result::Result<(), String>;

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// One panel per activation: f(z) (and f'(z)) for z in [−5, 5], with the lecture's axis labels.
fn draw_activations<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    derivatives: bool,
) -> DrawResult {
    root.fill(&WHITE).map_err(s)?;
    let areas = root.split_evenly((2, 2));
    for (area, act) in areas.iter().zip(Activation::ALL) {
        let (lo, hi) = match act {
            Activation::Identity => (-5.0, 5.0),
            Activation::Relu => (-1.0, 5.0),
            Activation::Sigmoid => (-0.1, 1.1),
            Activation::Tanh => (-1.2, 1.2),
        };
        let mut chart = ChartBuilder::on(area)
            .caption(act.name(), (FONT, 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-5.0f64..5.0, lo..hi)
            .map_err(s)?;
        chart
            .configure_mesh()
            .x_desc("input to activation function")
            .y_desc("output of activation function")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(s)?;
        let zs: Vec<f64> = (0..=400).map(|i| -5.0 + i as f64 * 0.025).collect();
        chart
            .draw_series(LineSeries::new(
                zs.iter().map(|&z| (z, act.apply(z))),
                BLUE.stroke_width(2),
            ))
            .map_err(s)?
            .label("f(z)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        if derivatives {
            chart
                .draw_series(LineSeries::new(
                    zs.iter().map(|&z| (z, act.derivative(act.apply(z)))),
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
                .label_font((FONT, 14))
                .draw()
                .map_err(s)?;
        }
    }
    Ok(())
}

/// The lecture's figure of identity, sigmoid, tanh and ReLU (and their derivatives).
pub fn save_activations(path: &Path, derivatives: bool) -> Result<()> {
    let size = (1000, 800);
    match Format::of(path)? {
        Format::Png => save_png(path, size, None, |r| draw_activations(r, derivatives)),
        Format::Svg => save_svg(path, size, |r| draw_activations(r, derivatives)),
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
pub fn save_confusion(path: &Path, m: &[Vec<usize>]) -> Result<()> {
    let k = m.len().max(1);
    let cell = 48u32;
    let size = (cell * k as u32 + 140, cell * k as u32 + 140);
    let draw = |root: &DrawingArea<BitMapBackend, Shift>| -> DrawResult {
        root.fill(&WHITE).map_err(s)?;
        let max = m.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
        let (x0, y0) = (100i32, 80i32);
        let font = |px: u32| TextStyle::from((FONT, px).into_font());
        root.draw(&Text::new(
            "predicted class",
            (x0 + (cell as i32 * k as i32) / 2 - 60, 20),
            font(18),
        ))
        .map_err(s)?;
        root.draw(&Text::new(
            "true class",
            (5, y0 + (cell as i32 * k as i32) / 2),
            font(18),
        ))
        .map_err(s)?;
        for (t, row) in m.iter().enumerate() {
            root.draw(&Text::new(
                t.to_string(),
                (x0 - 25, y0 + t as i32 * cell as i32 + cell as i32 / 3),
                font(16),
            ))
            .map_err(s)?;
            root.draw(&Text::new(
                t.to_string(),
                (x0 + t as i32 * cell as i32 + cell as i32 / 3, y0 - 25),
                font(16),
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

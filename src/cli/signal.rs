//! `convnet filter` and `convnet pool`: the lecture's signal-processing operations on arrays and images.
use crate::data::image::{is_image_path, read_image};
use crate::data::npy::{read_npy, write_npy_f32, write_npy_f64, NpyData};
use crate::error::{Error, Result};
use crate::ops::kernels;
use crate::ops::pool::{self, Pool2dConfig, Pool2dGeometry};
use crate::ops::signal::{filter, Boundary, FilterConfig, Method, Mode, SignalFloat};
use crate::plot::panels::{response_title, save_panels, Panel};
use crate::tensor::{Float, Tensor};
use std::path::Path;

/// An input array in its own precision.
enum Array {
    F32(Tensor<f32>),
    F64(Tensor<f64>),
}

impl Array {
    fn shape(&self) -> &[usize] {
        match self {
            Array::F32(t) => t.shape(),
            Array::F64(t) => t.shape(),
        }
    }
    fn to_f64(&self) -> Tensor<f64> {
        match self {
            Array::F32(t) => t.cast(),
            Array::F64(t) => t.clone(),
        }
    }
    /// [`Array::to_f64`] without a copy of a float64 array.
    fn into_f64(self) -> Tensor<f64> {
        match self {
            Array::F32(t) => t.cast(),
            Array::F64(t) => t,
        }
    }
}

/// A .npy array (1-D or 2-D, float32 or float64) or an image as grayscale in [0, 1].
fn read_signal(path: &Path) -> Result<(Array, bool)> {
    if is_image_path(path) {
        let (px, h, w) = read_image(path, 1)?;
        let data: Vec<f64> = px.into_iter().map(f64::from).collect();
        return Ok((Array::F64(Tensor::from_vec(&[h, w], data)?), true));
    }
    let a = read_npy(path)?;
    if a.shape.is_empty() || a.shape.len() > 2 || a.shape.contains(&0) {
        return Err(Error::format(
            path,
            format!(
                "expected a non-empty 1-D or 2-D array, got shape {:?}",
                a.shape
            ),
        ));
    }
    let arr = match a.data {
        NpyData::F32(v) => Array::F32(Tensor::from_vec(&a.shape, v)?),
        NpyData::F64(v) => Array::F64(Tensor::from_vec(&a.shape, v)?),
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "dtype {} is not supported (float32 or float64)",
                    a.dtype_name()
                ),
            ))
        }
    };
    Ok((arr, false))
}

/// A kernel from a .npy file, a name or inline text, shaped to match the input's dimensions.
fn read_kernel(spec: &str, input_dims: usize) -> Result<Array> {
    if spec.ends_with(".npy") {
        let (k, _) = read_signal(Path::new(spec))?;
        return Ok(k);
    }
    let k = kernels::parse(spec).map_err(|e| Error::invalid(format!("--kernel: {e}")))?;
    let shape = if input_dims == 1 && k.single_row {
        vec![k.cols]
    } else {
        vec![k.rows, k.cols]
    };
    if input_dims == 1 && shape.len() == 2 {
        return Err(Error::invalid(format!(
            "--kernel {spec}: a 1-D input needs a 1-D kernel (one row, e.g. \"1,2,1\")"
        )));
    }
    Ok(Array::F64(Tensor::from_vec(&shape, k.values)?))
}

/// Keeps every `s`-th sample along each axis.
fn strided<T: Float>(t: Tensor<T>, s: usize) -> Result<Tensor<T>> {
    if s == 1 {
        return Ok(t);
    }
    match *t.shape() {
        [n] => Tensor::from_vec(
            &[n.div_ceil(s)],
            t.data().iter().step_by(s).copied().collect(),
        ),
        [r, c] => {
            let data = t
                .data()
                .chunks(c)
                .step_by(s)
                .flat_map(|row| row.iter().step_by(s).copied())
                .collect();
            Tensor::from_vec(&[r.div_ceil(s), c.div_ceil(s)], data)
        }
        _ => Ok(t),
    }
}

fn run_one<T: SignalFloat>(
    x: &Tensor<T>,
    k: &Tensor<T>,
    cfg: &FilterConfig,
    stride: usize,
) -> Result<Tensor<T>> {
    strided(filter(x, k, cfg)?, stride)
}

/// Options of `convnet filter` beyond input, kernels and output.
pub struct FilterArgs<'a> {
    pub mode: Option<&'a str>,
    pub boundary: &'a str,
    pub fill_value: f64,
    pub method: &'a str,
    pub correlate: bool,
    pub stride: usize,
}

pub fn filter_cmd(
    input: &Path,
    kernel_specs: &[String],
    a: &FilterArgs,
    output: &Path,
) -> Result<()> {
    if a.stride == 0 {
        return Err(Error::invalid("--stride must be at least 1"));
    }
    let (x, is_image) = read_signal(input)?;
    let mode: Mode = match a.mode {
        Some(m) => m
            .parse()
            .map_err(|e| Error::invalid(format!("--mode: {e}")))?,
        None if is_image => Mode::Same,
        None => Mode::Full,
    };
    let boundary = match a.boundary {
        "fill" => Boundary::Fill(a.fill_value),
        "wrap" => Boundary::Wrap,
        "symm" => Boundary::Symm,
        b => {
            return Err(Error::invalid(format!(
                "--boundary: unknown boundary `{b}` (known: fill, wrap, symm)"
            )))
        }
    };
    let method: Method = a
        .method
        .parse()
        .map_err(|e| Error::invalid(format!("--method: {e}")))?;
    let cfg = FilterConfig {
        mode,
        boundary,
        method,
        correlate: a.correlate,
    };
    let ks = kernel_specs
        .iter()
        .map(|s| read_kernel(s, x.shape().len()))
        .collect::<Result<Vec<_>>>()?;
    let ext = output
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("npy") => {
            let [k] = &ks[..] else {
                return Err(Error::invalid(format!("{}: a .npy output holds one response; give one --kernel (or write a .png figure)", output.display())));
            };
            // float32 only when both are float32, as numpy's type promotion does.
            match (x, k) {
                (Array::F32(x), Array::F32(k)) => {
                    let y = run_one(&x, k, &cfg, a.stride)?;
                    write_npy_f32(output, y.shape(), y.data())?;
                    println!("wrote {} (float32 {:?})", output.display(), y.shape());
                }
                (x, k) => {
                    let y = run_one(&x.into_f64(), &k.to_f64(), &cfg, a.stride)?;
                    write_npy_f64(output, y.shape(), y.data())?;
                    println!("wrote {} (float64 {:?})", output.display(), y.shape());
                }
            }
            Ok(())
        }
        Some("png") => {
            let xf = x.to_f64();
            let [h, w] = xf.shape()[..] else {
                return Err(Error::invalid(format!(
                    "{}: a figure needs a 2-D input; write a .npy instead",
                    output.display()
                )));
            };
            let mut panels = vec![Panel {
                title: "Image".into(),
                height: h,
                width: w,
                values: xf.data().to_vec(),
            }];
            for (i, k) in ks.iter().enumerate() {
                let y = run_one(&xf, &k.to_f64(), &cfg, a.stride)?;
                panels.push(Panel {
                    title: response_title(i),
                    height: y.shape()[0],
                    width: y.shape()[1],
                    values: y.into_data(),
                });
            }
            save_panels(output, &panels, panels.len(), 512)?;
            println!(
                "wrote {} (the image and {} response(s))",
                output.display(),
                ks.len()
            );
            Ok(())
        }
        _ => Err(Error::invalid(format!(
            "{}: the output must be .npy (the exact response) or .png (a figure)",
            output.display()
        ))),
    }
}

/// Which pooling `convnet pool` applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolKind {
    Max,
    Avg,
    Subsample,
}

fn print_matrix(t: &Tensor<f64>) {
    let c = t.shape()[1];
    for row in t.data().chunks(c) {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:>8}")).collect();
        println!("[{}]", cells.join(" "));
    }
}

pub fn pool_cmd(
    input: &Path,
    kind: PoolKind,
    kernel: (usize, usize),
    stride: Option<(usize, usize)>,
    output: Option<&Path>,
) -> Result<()> {
    let (x, _) = read_signal(input)?;
    let x = x.to_f64();
    let [h, w] = x.shape()[..] else {
        return Err(Error::format(
            input,
            format!("pooling needs a 2-D array, got shape {:?}", x.shape()),
        ));
    };
    if kernel.0 == 0 || kernel.1 == 0 || stride.is_some_and(|s| s.0 == 0 || s.1 == 0) {
        return Err(Error::invalid("--kernel and --stride must be positive"));
    }
    let cfg = Pool2dConfig {
        kernel,
        stride: stride.unwrap_or(kernel),
        ..Default::default()
    };
    let g = Pool2dGeometry::new([1, h, w], cfg).map_err(|e| Error::format(input, e))?;
    let mut y = vec![0.0; g.out_plane()]; // (H_out, W_out)
    match kind {
        PoolKind::Max => {
            pool::maxpool2d_forward(&g, x.data(), &mut y, &mut vec![0u32; g.out_plane()])
        }
        PoolKind::Avg => pool::avgpool2d_forward(&g, x.data(), &mut y),
        PoolKind::Subsample => pool::subsample_forward(&g, x.data(), &mut y),
    }
    let y = Tensor::from_vec(&[g.out_h, g.out_w], y)?;
    if g.out_h <= 16 && g.out_w <= 16 {
        print_matrix(&y);
    } else {
        println!("{}×{} → {}×{}", h, w, g.out_h, g.out_w);
    }
    match output {
        None => Ok(()),
        Some(p) if p.extension().is_some_and(|e| e == "npy") => {
            write_npy_f64(p, y.shape(), y.data())
        }
        Some(p) if p.extension().is_some_and(|e| e == "png") => {
            let title = format!("{kind:?} pooling").to_lowercase();
            let panels = [
                Panel {
                    title: "Input".into(),
                    height: h,
                    width: w,
                    values: x.into_data(),
                },
                Panel {
                    title,
                    height: g.out_h,
                    width: g.out_w,
                    values: y.into_data(),
                },
            ];
            save_panels(p, &panels, 2, 256)
        }
        Some(p) => Err(Error::invalid(format!(
            "{}: the output must be .npy or .png",
            p.display()
        ))),
    }
}

//! scipy.signal-exact convolution and correlation of 1-D and 2-D arrays: modes full/same/valid,
//! boundaries fill/wrap/symm, computed directly or by FFT (O(N log N)), chosen by scipy's cost model.
//!
//! Every case reduces to one correlation: out[m] = Σ_j X[m − off + j] · kc[j] per axis, where X
//! is the input extended by the boundary rule, kc the kernel (flipped for convolution) and
//! `off` depends on the mode and on which scipy function is matched (see [`offset`]).
use super::fft::fft_convolve_full;
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};
use rayon::prelude::*;
use std::str::FromStr;

/// Output size, as scipy's `mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Every position where the kernel overlaps the input: M + K − 1.
    #[default]
    Full,
    /// The input's size, centred as scipy centres it.
    Same,
    /// Only positions where the kernel lies inside the input: M − K + 1.
    Valid,
}

/// How the input continues past its edges (scipy's `boundary`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Boundary {
    /// A constant (scipy's `fill` with `fillvalue`).
    Fill(f64),
    /// Periodic.
    Wrap,
    /// Mirrored, the edge sample repeated (scipy's `symm`).
    Symm,
}

impl Default for Boundary {
    fn default() -> Self {
        Boundary::Fill(0.0)
    }
}

/// How to compute: by the defining sum, by FFT, or whichever the cost model predicts is faster
/// ([`auto_picks_fft`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    #[default]
    Auto,
    Direct,
    Fft,
}

macro_rules! from_str_enum {
    ($t:ty, $what:literal, $($s:literal => $v:expr),+) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($v),)+
                    _ => Err(format!(concat!("unknown ", $what, " `{}` (known: {})"), s, [$($s),+].join(", "))),
                }
            }
        }
    };
}
from_str_enum!(Mode, "mode", "full" => Mode::Full, "same" => Mode::Same, "valid" => Mode::Valid);
from_str_enum!(Method, "method", "auto" => Method::Auto, "direct" => Method::Direct, "fft" => Method::Fft);

/// Options of [`filter`]; the default is scipy's: full, fill 0, auto, convolution.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FilterConfig {
    pub mode: Mode,
    pub boundary: Boundary,
    pub method: Method,
    /// Cross-correlation (what deep nets call convolution) instead of the flipped convolution.
    pub correlate: bool,
}

/// Floats the signal kernels run in (f32 and f64).
pub trait SignalFloat: Float + realfft::FftNum {}
impl SignalFloat for f32 {}
impl SignalFloat for f64 {}

/// Which scipy function's conventions apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// `convolve2d` / `correlate2d`: 2-D arrays, or 1-D arrays with a boundary other than fill 0.
    TwoD,
    /// `convolve` / `correlate`: 1-D arrays with zero fill.
    OneD,
}

/// Start offset of the correlation form for one axis (input M, kernel K).
/// `correlate2d` centres "same" at ⌊(K−1)/2⌋; every other scipy function at ⌈(K−1)/2⌉.
fn offset(mode: Mode, k: usize, correlate: bool, flavor: Flavor) -> usize {
    match mode {
        Mode::Full => k - 1,
        Mode::Valid => 0,
        Mode::Same if correlate && flavor == Flavor::TwoD => (k - 1) / 2,
        Mode::Same => k - 1 - (k - 1) / 2,
    }
}

fn out_len(mode: Mode, m: usize, k: usize) -> usize {
    match mode {
        Mode::Full => m + k - 1,
        Mode::Same => m,
        Mode::Valid => m + 1 - k,
    }
}

/// Index into an axis of length n under a boundary rule (None: use the fill value).
fn extend(i: isize, n: usize, b: Boundary) -> Option<usize> {
    let n = n as isize;
    if (0..n).contains(&i) {
        return Some(i as usize);
    }
    match b {
        Boundary::Fill(_) => None,
        Boundary::Wrap => Some(i.rem_euclid(n) as usize),
        Boundary::Symm => {
            // Reflect with the edge repeated: period 2n, … 1 0 | 0 1 … n−1 | n−1 n−2 …
            let p = i.rem_euclid(2 * n);
            Some(if p < n { p } else { 2 * n - 1 - p } as usize)
        }
    }
}

/// How much faster our 2-D direct kernel is than scipy's `convolve2d`, relative to the FFT:
/// fitted so that scipy's cost model, with its 2-D direct constants divided by this, puts the
/// crossover where `examples/fft_crossover.rs` measures it (512² image: direct up to 9×9,
/// FFT from 11×11; scipy's own constants would pick the FFT already at 3×3, 5× slower here).
const DIRECT_2D_SPEEDUP: f64 = 22.0;

/// What `Method::Auto` picks: true for FFT. scipy's cost model ([`fft_is_faster`]) with the
/// 2-D direct cost rescaled to our kernel; 1-D constants are scipy's (numpy's direct 1-D
/// correlation is about as fast as ours).
pub fn auto_picks_fft(x: &[usize], k: &[usize], mode: Mode) -> bool {
    fft_cheaper(x, k, mode, DIRECT_2D_SPEEDUP)
}

/// scipy's `_fftconv_faster`: true when its cost model predicts FFT beats direct.
pub fn fft_is_faster(x: &[usize], k: &[usize], mode: Mode) -> bool {
    fft_cheaper(x, k, mode, 1.0)
}

/// scipy's cost model, with the 2-D direct constants divided by `direct_2d_speedup`.
fn fft_cheaper(x: &[usize], k: &[usize], mode: Mode, direct_2d_speedup: f64) -> bool {
    let prod = |s: &[usize]| s.iter().product::<usize>() as f64;
    let out: Vec<usize> = x
        .iter()
        .zip(k)
        .map(|(&n, &kk)| match mode {
            Mode::Full => n + kk - 1,
            Mode::Valid => n.abs_diff(kk) + 1,
            Mode::Same => n,
        })
        .collect();
    let direct = if x.len() == 1 {
        let (s1, s2) = (x[0] as f64, k[0] as f64);
        match mode {
            Mode::Full => s1 * s2,
            Mode::Valid if s2 >= s1 => (s2 - s1 + 1.0) * s1,
            Mode::Valid => (s1 - s2 + 1.0) * s2,
            Mode::Same if s1 < s2 => s1 * s2,
            Mode::Same => s1 * s2 - (k[0] / 2) as f64 * k[0].div_ceil(2) as f64,
        }
    } else {
        match mode {
            Mode::Full | Mode::Valid => prod(x).min(prod(k)) * prod(&out),
            Mode::Same => prod(x) * prod(k),
        }
    };
    let n: f64 = x.iter().zip(k).map(|(&a, &b)| (a + b - 1) as f64).product();
    let fft = 3.0 * n * n.ln();
    let offset = if x.len() == 1 { -1e-3 } else { -1e-4 };
    let (o_fft, o_direct, o_off) = if x.len() == 1 {
        match mode {
            Mode::Valid => (1.89095737e-9, 2.1364985e-10, offset),
            Mode::Full => (1.7649070e-9, 2.1414831e-10, offset),
            Mode::Same if prod(k) <= prod(x) => (3.2646654e-9, 2.8478277e-10, offset),
            Mode::Same => (3.21635404e-9, 1.1773253e-8, -1e-5),
        }
    } else {
        let (o_fft, o_direct) = match mode {
            Mode::Valid => (1.85927e-9, 2.11242e-8),
            Mode::Full => (1.99817e-9, 1.66174e-8),
            Mode::Same => (2.04735e-9, 1.55367e-8),
        };
        (o_fft, o_direct / direct_2d_speedup, offset)
    };
    o_fft * fft < o_direct * direct + o_off
}

/// (rows, cols) of a 1-D or 2-D array, 1-D as one row.
fn dims2(t: &Tensor<impl Float>) -> (usize, usize) {
    match t.shape() {
        [n] => (1, *n),
        [r, c] => (*r, *c),
        _ => (0, 0),
    }
}

/// Reverses a 2-D array in both axes.
fn reversed<T: Float>(data: &[T]) -> Vec<T> {
    data.iter().rev().copied().collect()
}

/// Convolution (or correlation) of `x` with `kernel`, both 1-D or both 2-D, exactly as
/// scipy.signal computes it: `convolve2d`/`correlate2d` for 2-D arrays, `convolve`/`correlate`
/// for 1-D arrays with zero fill (1-D arrays with another boundary follow `convolve2d` on a
/// 1×N array, the only scipy function that takes a boundary).
pub fn filter<T: SignalFloat>(
    x: &Tensor<T>,
    kernel: &Tensor<T>,
    cfg: &FilterConfig,
) -> Result<Tensor<T>> {
    let nd = x.shape().len();
    if !(nd == 1 || nd == 2) || kernel.shape().len() != nd {
        return Err(Error::invalid(format!(
            "input {:?} and kernel {:?} must both be 1-D or both 2-D",
            x.shape(),
            kernel.shape()
        )));
    }
    if x.is_empty() || kernel.is_empty() {
        return Err(Error::invalid("input and kernel must not be empty"));
    }
    if let Boundary::Fill(v) = cfg.boundary {
        if !v.is_finite() {
            return Err(Error::invalid(format!(
                "fill value must be finite, got {v}"
            )));
        }
    }
    let flavor = if nd == 1 && cfg.boundary == Boundary::Fill(0.0) {
        Flavor::OneD
    } else {
        Flavor::TwoD
    };
    let (xr, xc) = dims2(x);
    let (kr, kc) = dims2(kernel);
    let shape_out = |r: usize, c: usize| if nd == 1 { vec![c] } else { vec![r, c] };

    if cfg.mode == Mode::Valid && !(xr >= kr && xc >= kc) {
        // scipy swaps the inputs when the kernel is the larger one in every dimension.
        if !(kr >= xr && kc >= xc) {
            return Err(Error::invalid(format!(
                "for mode valid, input {:?} and kernel {:?} must be at least as large as the other in every dimension",
                x.shape(),
                kernel.shape()
            )));
        }
        let swapped = filter(kernel, x, cfg)?;
        if !cfg.correlate {
            return Ok(swapped);
        }
        let (r, c) = dims2(&swapped);
        return Tensor::from_vec(&shape_out(r, c), reversed(swapped.data()));
    }

    let method = match cfg.method {
        Method::Auto
            if cfg.boundary == Boundary::Fill(0.0)
                && auto_picks_fft(x.shape(), kernel.shape(), cfg.mode) =>
        {
            Method::Fft
        }
        Method::Auto => Method::Direct,
        m => m,
    };
    if method == Method::Fft && cfg.boundary != Boundary::Fill(0.0) {
        return Err(Error::invalid(
            "the FFT method applies only with boundary fill and fill value 0; use --method direct",
        ));
    }
    let (off_r, off_c) = (
        offset(cfg.mode, kr, cfg.correlate, flavor),
        offset(cfg.mode, kc, cfg.correlate, flavor),
    );
    let (or, oc) = (out_len(cfg.mode, xr, kr), out_len(cfg.mode, xc, kc));
    let out = match method {
        Method::Fft => {
            // Linear convolution C = x ∗ kv (kv = kernel, or flipped kernel for correlation);
            // out[m] = C[m + K − 1 − off] per axis.
            let kv: Vec<T> = if cfg.correlate {
                reversed(kernel.data())
            } else {
                kernel.data().to_vec()
            };
            let full = fft_convolve_full(x.data(), (xr, xc), &kv, (kr, kc));
            let (fr, fc) = (xr + kr - 1, xc + kc - 1);
            debug_assert_eq!(full.len(), fr * fc);
            let (sr, sc) = (kr - 1 - off_r, kc - 1 - off_c);
            if (or, oc) == (fr, fc) {
                return Tensor::from_vec(&shape_out(or, oc), full);
            }
            let mut out = Vec::with_capacity(or * oc);
            for r in 0..or {
                out.extend_from_slice(&full[(r + sr) * fc + sc..(r + sr) * fc + sc + oc]);
            }
            out
        }
        _ => {
            let kcorr: Vec<T> = if cfg.correlate {
                kernel.data().to_vec()
            } else {
                reversed(kernel.data())
            };
            correlate_direct(
                x.data(),
                (xr, xc),
                &kcorr,
                (kr, kc),
                (or, oc),
                (off_r, off_c),
                cfg.boundary,
            )
        }
    };
    Tensor::from_vec(&shape_out(or, oc), out)
}

/// Output rows per parallel task of [`correlate_direct`]: enough work to outweigh a hand-off.
const ROWS_PER_TASK: usize = 16;

/// out[m, n] = Σ_{j,k} X[m − off_r + j, n − off_c + k] · kc[j, k]. Each input row a task needs
/// is laid out boundary-extended (out_c + K_c − 1 values) in a small per-thread buffer, so the
/// inner loop is a plain, vectorisable multiply-add along a row and no extended copy of the
/// whole input is ever allocated; blocks of rows in parallel.
fn correlate_direct<T: SignalFloat>(
    x: &[T],
    (xr, xc): (usize, usize),
    kcorr: &[T],
    (kr, kc): (usize, usize),
    (or, oc): (usize, usize),
    (off_r, off_c): (usize, usize),
    b: Boundary,
) -> Vec<T> {
    let pc = oc + kc - 1;
    let fill = match b {
        Boundary::Fill(v) => T::of(v),
        _ => T::zero(),
    };
    // Source column of each extended column (None: the fill value).
    let cols: Vec<Option<usize>> = (0..pc)
        .map(|j| extend(j as isize - off_c as isize, xc, b))
        .collect();
    // Written before the sums read it (a lazily mapped zero buffer, read first, maps the shared
    // zero page that the first write must copy: a second fault and a TLB flush on every core),
    // on huge pages. Measured on a 2048² float64 3×3 filter process: 53,500 page faults and
    // 0.2 s of system time for 0.05 s of work before.
    let mut out = crate::alloc::filled(or * oc, T::zero()); // (out_r, out_c)
    out.par_chunks_mut(oc * ROWS_PER_TASK)
        .enumerate()
        .for_each_init(
            || vec![fill; pc], // one extended input row (out_c + K_c − 1)
            |prow, (block, orows)| {
                for (i, orow) in orows.chunks_mut(oc).enumerate() {
                    let m = block * ROWS_PER_TASK + i;
                    for j in 0..kr {
                        match extend((m + j) as isize - off_r as isize, xr, b) {
                            Some(si) => {
                                let src = &x[si * xc..(si + 1) * xc];
                                for (d, c) in prow.iter_mut().zip(&cols) {
                                    *d = c.map_or(fill, |c| src[c]);
                                }
                            }
                            // A row wholly in the fill: zero adds nothing.
                            None if fill == T::zero() => continue,
                            None => prow.fill(fill),
                        }
                        for k in 0..kc {
                            let w = kcorr[j * kc + k];
                            for (o, &v) in orow.iter_mut().zip(&prow[k..k + oc]) {
                                *o += v * w;
                            }
                        }
                    }
                }
            },
        );
    out
}

/// The reference: the defining double sum with scipy's index arithmetic written out
/// (boundary handled per access), in f64.
pub fn filter_naive(
    x: &[f64],
    (xr, xc): (usize, usize),
    k: &[f64],
    (kr, kc): (usize, usize),
    cfg: &FilterConfig,
    two_d: bool,
) -> Vec<f64> {
    let flavor = if two_d { Flavor::TwoD } else { Flavor::OneD };
    let (or, oc) = (out_len(cfg.mode, xr, kr), out_len(cfg.mode, xc, kc));
    let mut out = vec![0.0; or * oc];
    for m in 0..or {
        for n in 0..oc {
            let mut s = 0.0;
            for j in 0..kr {
                for l in 0..kc {
                    // Convolution: X[m' − j] with m' = m − off + K − 1 (offset of the flipped form).
                    let (i0, i1, w) = if cfg.correlate {
                        let (o0, o1) = (
                            offset(cfg.mode, kr, true, flavor),
                            offset(cfg.mode, kc, true, flavor),
                        );
                        (
                            m as isize - o0 as isize + j as isize,
                            n as isize - o1 as isize + l as isize,
                            k[j * kc + l],
                        )
                    } else {
                        let (o0, o1) = (
                            offset(cfg.mode, kr, false, flavor),
                            offset(cfg.mode, kc, false, flavor),
                        );
                        let (c0, c1) = (
                            m as isize - o0 as isize + (kr - 1) as isize,
                            n as isize - o1 as isize + (kc - 1) as isize,
                        );
                        (c0 - j as isize, c1 - l as isize, k[j * kc + l])
                    };
                    let v = match (extend(i0, xr, cfg.boundary), extend(i1, xc, cfg.boundary)) {
                        (Some(a), Some(b)) => x[a * xc + b],
                        _ => match cfg.boundary {
                            Boundary::Fill(v) => v,
                            _ => unreachable!("wrap and symm always map inside"),
                        },
                    };
                    s += v * w;
                }
            }
            out[m * oc + n] = s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn lecture_5x5_with_2x2() {
        let x = Tensor::from_vec(&[5, 5], (0..25).map(|v| v as f64).collect()).unwrap();
        let k = Tensor::from_vec(&[2, 2], vec![1.0, 0.0, 0.0, -1.0]).unwrap();
        let cfg = FilterConfig {
            mode: Mode::Valid,
            correlate: true,
            ..Default::default()
        };
        let y = filter(&x, &k, &cfg).unwrap();
        assert_eq!(y.shape(), [4, 4]);
        assert!(y.data().iter().all(|&v| v == -6.0));
        // Convolution flips the kernel: x[i+1, j+1] − x[i, j] = +6.
        let y = filter(
            &x,
            &k,
            &FilterConfig {
                mode: Mode::Valid,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(y.data().iter().all(|&v| v == 6.0));
    }

    #[test]
    fn direct_and_fft_match_the_naive_sum() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for &(xs, ks) in &[
            ((7, 9), (2, 2)),
            ((6, 5), (3, 4)),
            ((8, 8), (1, 3)),
            ((1, 9), (1, 4)),
            ((5, 6), (5, 6)),
            // More output rows than one parallel task takes (ROWS_PER_TASK).
            ((37, 11), (4, 3)),
        ] {
            let x: Vec<f64> = (0..xs.0 * xs.1).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let k: Vec<f64> = (0..ks.0 * ks.1).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let xt = Tensor::from_vec(&[xs.0, xs.1], x.clone()).unwrap();
            let kt = Tensor::from_vec(&[ks.0, ks.1], k.clone()).unwrap();
            for mode in [Mode::Full, Mode::Same, Mode::Valid] {
                for correlate in [false, true] {
                    for boundary in [
                        Boundary::Fill(0.0),
                        Boundary::Fill(1.5),
                        Boundary::Wrap,
                        Boundary::Symm,
                    ] {
                        let mut cfg = FilterConfig {
                            mode,
                            boundary,
                            method: Method::Direct,
                            correlate,
                        };
                        let want = filter_naive(&x, xs, &k, ks, &cfg, true);
                        let check = |cfg: &FilterConfig| {
                            let got = filter(&xt, &kt, cfg).unwrap();
                            let close = got
                                .data()
                                .iter()
                                .zip(&want)
                                .all(|(a, b)| (a - b).abs() < 1e-12);
                            assert!(close, "{xs:?} {ks:?} {cfg:?}");
                        };
                        check(&cfg);
                        if boundary == Boundary::Fill(0.0) {
                            cfg.method = Method::Fft;
                            check(&cfg);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fft_with_another_boundary_is_an_error() {
        let x = Tensor::<f64>::zeros(&[4, 4]);
        let cfg = FilterConfig {
            boundary: Boundary::Wrap,
            method: Method::Fft,
            ..Default::default()
        };
        assert!(filter(&x, &x, &cfg)
            .unwrap_err()
            .to_string()
            .contains("FFT"));
    }

    #[test]
    fn scipy_cost_model_choices() {
        // scipy.signal.choose_conv_method: fft for 512² with 31² and, perhaps surprisingly, 3².
        assert!(fft_is_faster(&[512, 512], &[31, 31], Mode::Full));
        assert!(fft_is_faster(&[512, 512], &[3, 3], Mode::Full));
        assert!(!fft_is_faster(&[10], &[3], Mode::Full));
        assert!(!fft_is_faster(&[20, 20], &[3, 3], Mode::Same));
        // Ours: the measured 512² crossover between 9×9 and 11×11.
        assert!(!auto_picks_fft(&[512, 512], &[3, 3], Mode::Full));
        assert!(!auto_picks_fft(&[512, 512], &[9, 9], Mode::Full));
        assert!(auto_picks_fft(&[512, 512], &[11, 11], Mode::Full));
        assert!(auto_picks_fft(&[512, 512], &[31, 31], Mode::Full));
        assert!(!auto_picks_fft(&[10], &[3], Mode::Full));
    }
}

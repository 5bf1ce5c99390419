//! Max and average pooling (PyTorch's padding and ceil_mode rules) and subsampling,
//! forward and backward, on (N, C, H, W) batches.
use super::shape::pool_output_size;
use crate::tensor::Float;
use rayon::prelude::*;

/// Window options of a pooling layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dConfig {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub ceil_mode: bool,
}

impl Default for Pool2dConfig {
    fn default() -> Self {
        Pool2dConfig {
            kernel: (2, 2),
            stride: (2, 2),
            padding: (0, 0),
            ceil_mode: false,
        }
    }
}

/// Input indices one output covers along an axis (clipped to the input), and the window's
/// length clipped to the padded input.
type AxisWindow = (std::ops::Range<usize>, usize);

/// Every size of one pooling, derived from the input shape and the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub cfg: Pool2dConfig,
}

impl Pool2dGeometry {
    /// Checks the window against the input `[C, H, W]` (padding at most half the kernel, as PyTorch).
    pub fn new(input: [usize; 3], cfg: Pool2dConfig) -> Result<Self, String> {
        let [c, h, w] = input;
        let (kh, kw) = cfg.kernel;
        if 2 * cfg.padding.0 > kh || 2 * cfg.padding.1 > kw {
            return Err(format!(
                "padding {}×{} must be at most half the kernel {kh}×{kw}",
                cfg.padding.0, cfg.padding.1
            ));
        }
        let oh = pool_output_size(h, cfg.padding.0, kh, cfg.stride.0, cfg.ceil_mode);
        let ow = pool_output_size(w, cfg.padding.1, kw, cfg.stride.1, cfg.ceil_mode);
        match (oh, ow) {
            (Some(out_h), Some(out_w)) => Ok(Pool2dGeometry {
                channels: c,
                in_h: h,
                in_w: w,
                out_h,
                out_w,
                cfg,
            }),
            _ => Err(format!(
                "the window {kh}×{kw} is larger than the padded input {}×{}",
                h + 2 * cfg.padding.0,
                w + 2 * cfg.padding.1
            )),
        }
    }
    pub fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }
    pub fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Every window along each axis, computed once per call: the input rows (columns) that
    /// output row (column) o covers, clipped to the input, and its extent clipped to the padded
    /// input (the average's divisor: padded zeros count, a ceil_mode overhang does not).
    fn windows(&self) -> (Vec<AxisWindow>, Vec<AxisWindow>) {
        let c = &self.cfg;
        let axis = |out: usize, k: usize, s: usize, p: usize, n: usize| -> Vec<AxisWindow> {
            (0..out)
                .map(|o| {
                    let start = (o * s) as isize - p as isize;
                    let end = (start + k as isize).min((n + p) as isize);
                    (
                        start.max(0) as usize..end.min(n as isize) as usize,
                        (end - start) as usize,
                    )
                })
                .collect()
        };
        (
            axis(self.out_h, c.kernel.0, c.stride.0, c.padding.0, self.in_h),
            axis(self.out_w, c.kernel.1, c.stride.1, c.padding.1, self.in_w),
        )
    }
}

/// Whether max pooling takes the 2×2 stride-2 paths: disjoint windows inside the input.
fn is_2x2(g: &Pool2dGeometry) -> bool {
    let c = &g.cfg;
    let inside = 2 * g.out_h <= g.in_h && 2 * g.out_w <= g.in_w; // no ceil_mode overhang
    c.kernel == (2, 2) && c.stride == (2, 2) && c.padding == (0, 0) && inside
}

/// Max pooling of (N·C) planes; `argmax` (N, C, H_out, W_out) records each winner's index in
/// its plane: the first NaN, else the first maximum in row-major order (NaN wins, as in
/// PyTorch).
pub fn maxpool2d_forward<T: Float>(g: &Pool2dGeometry, x: &[T], y: &mut [T], argmax: &mut [u32]) {
    if is_2x2(g) {
        maxpool2x2_forward(g, x, y, argmax)
    } else {
        maxpool_forward_general(g, x, y, argmax)
    }
}

/// The winner of the pair (first, second) in scan order: the first NaN, else the second only
/// if strictly greater. Branch-free, so that loops of it vectorise.
#[inline(always)]
pub(crate) fn second_wins<T: Float>(first: T, second: T) -> bool {
    !first.is_nan() & (second.is_nan() | (second > first))
}

/// One plane of 2×2 stride-2 max pooling with winners, as a tournament: the winner of each
/// row's pair, then of the two rows. The same winners as the row-major scan of
/// [`maxpool_forward_general`] (ties keep the earlier cell, NaN wins).
#[inline(always)]
fn maxpool2x2_plane<T: Float>(w: usize, ow: usize, xp: &[T], yp: &mut [T], ap: &mut [u32]) {
    for (i, (yr, ar)) in yp
        .chunks_exact_mut(ow)
        .zip(ap.chunks_exact_mut(ow))
        .enumerate()
    {
        let r0 = 2 * i * w;
        let (x0, x1) = (&xp[r0..][..2 * ow], &xp[r0 + w..][..2 * ow]);
        let pairs = x0.chunks_exact(2).zip(x1.chunks_exact(2));
        for (j, ((y, a), (p0, p1))) in yr.iter_mut().zip(ar.iter_mut()).zip(pairs).enumerate() {
            let (top, k_top) = if second_wins(p0[0], p0[1]) {
                (p0[1], 1)
            } else {
                (p0[0], 0)
            };
            let (bottom, k_bottom) = if second_wins(p1[0], p1[1]) {
                (p1[1], w + 1)
            } else {
                (p1[0], w)
            };
            let (m, k) = if second_wins(top, bottom) {
                (bottom, k_bottom)
            } else {
                (top, k_top)
            };
            *y = m;
            *a = (r0 + 2 * j + k) as u32;
        }
    }
}

/// One plane of 2×2 stride-2 max pooling, values only: the value [`maxpool2x2_plane`] picks
/// (the same tournament), without the index arithmetic that keeps its loop from vectorising
/// as well.
#[inline(always)]
fn maxpool2x2_values_plane<T: Float>(w: usize, ow: usize, xp: &[T], yp: &mut [T]) {
    let pick = |a: T, b: T| if second_wins(a, b) { b } else { a };
    for (i, yr) in yp.chunks_exact_mut(ow).enumerate() {
        let r0 = 2 * i * w;
        let (x0, x1) = (&xp[r0..][..2 * ow], &xp[r0 + w..][..2 * ow]);
        let pairs = x0.chunks_exact(2).zip(x1.chunks_exact(2));
        for (y, (p0, p1)) in yr.iter_mut().zip(pairs) {
            *y = pick(pick(p0[0], p0[1]), pick(p1[0], p1[1]));
        }
    }
}

/// Compiles `$plane(args)` for AVX-512 and AVX2 besides the baseline and picks one at run
/// time: the baseline build's SSE2 has no blends, and the selects stay scalar there.
macro_rules! plane_dispatch {
    ($name:ident => $plane:ident($($arg:ident: $ty:ty),*)) => {
        fn $name<T: Float>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
                unsafe fn avx512<T: Float>($($arg: $ty),*) {
                    $plane($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<T: Float>($($arg: $ty),*) {
                    $plane($($arg),*)
                }
                if $crate::ops::simd::avx512_enabled() {
                    // SAFETY: the CPU has these features.
                    return unsafe { avx512($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $plane($($arg),*)
        }
    };
}
plane_dispatch!(maxpool2x2_plane_dispatch => maxpool2x2_plane(w: usize, ow: usize, xp: &[T], yp: &mut [T], ap: &mut [u32]));
plane_dispatch!(maxpool2x2_values_dispatch => maxpool2x2_values_plane(w: usize, ow: usize, xp: &[T], yp: &mut [T]));

/// [`maxpool2d_forward`] for 2×2 windows at stride 2 inside the input.
fn maxpool2x2_forward<T: Float>(g: &Pool2dGeometry, x: &[T], y: &mut [T], argmax: &mut [u32]) {
    let (ip, op, w, ow) = (g.in_plane(), g.out_plane(), g.in_w, g.out_w);
    y.par_chunks_mut(op)
        .zip(argmax.par_chunks_mut(op))
        .zip(x.par_chunks(ip))
        .for_each(|((yp, ap), xp)| maxpool2x2_plane_dispatch(w, ow, xp, yp, ap));
}

/// [`maxpool2d_forward`] for any window: a scan of each window in row-major order.
fn maxpool_forward_general<T: Float>(g: &Pool2dGeometry, x: &[T], y: &mut [T], argmax: &mut [u32]) {
    let (ip, op) = (g.in_plane(), g.out_plane());
    let (wr, wc) = g.windows();
    y.par_chunks_mut(op)
        .zip(argmax.par_chunks_mut(op))
        .zip(x.par_chunks(ip))
        .for_each(|((yp, ap), xp)| {
            for (i, (rows, _)) in wr.iter().enumerate() {
                for (j, (cols, _)) in wc.iter().enumerate() {
                    let mut best = T::neg_infinity();
                    let mut at = rows.start * g.in_w + cols.start;
                    'win: for r in rows.clone() {
                        for c in cols.clone() {
                            let v = xp[r * g.in_w + c];
                            if v > best || v.is_nan() {
                                best = v;
                                at = r * g.in_w + c;
                                if v.is_nan() {
                                    break 'win;
                                }
                            }
                        }
                    }
                    yp[i * g.out_w + j] = best;
                    ap[i * g.out_w + j] = at as u32;
                }
            }
        });
}

/// Max pooling without keeping the winners (inference): the values of [`maxpool2d_forward`].
pub fn maxpool2d_forward_values<T: Float>(g: &Pool2dGeometry, x: &[T], y: &mut [T]) {
    if !is_2x2(g) {
        let mut argmax = vec![0u32; y.len()];
        return maxpool_forward_general(g, x, y, &mut argmax);
    }
    let (ip, op, w, ow) = (g.in_plane(), g.out_plane(), g.in_w, g.out_w);
    y.par_chunks_mut(op)
        .zip(x.par_chunks(ip))
        .for_each(|(yp, xp)| maxpool2x2_values_dispatch(w, ow, xp, yp));
}

/// dx = scatter of dy to the recorded winners (dx is overwritten).
pub fn maxpool2d_backward<T: Float>(g: &Pool2dGeometry, dy: &[T], argmax: &[u32], dx: &mut [T]) {
    let (ip, op) = (g.in_plane(), g.out_plane());
    dx.par_chunks_mut(ip)
        .zip(dy.par_chunks(op))
        .zip(argmax.par_chunks(op))
        .for_each(|((dxp, dyp), ap)| {
            dxp.fill(T::zero());
            for (&d, &a) in dyp.iter().zip(ap) {
                dxp[a as usize] += d;
            }
        });
}

/// Average pooling; the divisor counts padded zeros but not a ceil_mode overhang.
pub fn avgpool2d_forward<T: Float>(g: &Pool2dGeometry, x: &[T], y: &mut [T]) {
    let (ip, op) = (g.in_plane(), g.out_plane());
    let (wr, wc) = g.windows();
    y.par_chunks_mut(op)
        .zip(x.par_chunks(ip))
        .for_each(|(yp, xp)| {
            for (i, (rows, eh)) in wr.iter().enumerate() {
                for (j, (cols, ew)) in wc.iter().enumerate() {
                    let count = eh * ew;
                    let mut s = T::zero();
                    for r in rows.clone() {
                        s += xp[r * g.in_w + cols.start..r * g.in_w + cols.end]
                            .iter()
                            .copied()
                            .sum::<T>();
                    }
                    yp[i * g.out_w + j] = s / T::of(count as f64);
                }
            }
        });
}

/// dx = each dy spread evenly over its window (dx is overwritten).
pub fn avgpool2d_backward<T: Float>(g: &Pool2dGeometry, dy: &[T], dx: &mut [T]) {
    let (ip, op) = (g.in_plane(), g.out_plane());
    let (wr, wc) = g.windows();
    dx.par_chunks_mut(ip)
        .zip(dy.par_chunks(op))
        .for_each(|(dxp, dyp)| {
            dxp.fill(T::zero());
            for (i, (rows, eh)) in wr.iter().enumerate() {
                for (j, (cols, ew)) in wc.iter().enumerate() {
                    let count = eh * ew;
                    let d = dyp[i * g.out_w + j] / T::of(count as f64);
                    for r in rows.clone() {
                        dxp[r * g.in_w + cols.start..r * g.in_w + cols.end]
                            .iter_mut()
                            .for_each(|v| *v += d);
                    }
                }
            }
        });
}

/// Subsampling h[i,j] = x[i·s, j·s] (the lecture's third pooling; kernel only sets the output size).
pub fn subsample_forward<T: Float>(g: &Pool2dGeometry, x: &[T], y: &mut [T]) {
    let (ip, op) = (g.in_plane(), g.out_plane());
    let (sh, sw) = g.cfg.stride;
    y.par_chunks_mut(op)
        .zip(x.par_chunks(ip))
        .for_each(|(yp, xp)| {
            for i in 0..g.out_h {
                for j in 0..g.out_w {
                    yp[i * g.out_w + j] = xp[i * sh * g.in_w + j * sw];
                }
            }
        });
}

/// dx[i·s, j·s] = dy[i, j], zero elsewhere.
pub fn subsample_backward<T: Float>(g: &Pool2dGeometry, dy: &[T], dx: &mut [T]) {
    let (ip, op) = (g.in_plane(), g.out_plane());
    let (sh, sw) = g.cfg.stride;
    dx.par_chunks_mut(ip)
        .zip(dy.par_chunks(op))
        .for_each(|(dxp, dyp)| {
            dxp.fill(T::zero());
            for i in 0..g.out_h {
                for j in 0..g.out_w {
                    dxp[i * sh * g.in_w + j * sw] += dyp[i * g.out_w + j];
                }
            }
        });
}

/// Reference pooling by enumerating every window cell with explicit −∞/0 padding, one plane.
/// Returns the output plane; `max` picks max pooling, else average with PyTorch's divisor.
pub fn pool2d_naive(g: &Pool2dGeometry, x: &[f64], max: bool) -> Vec<f64> {
    let c = &g.cfg;
    let (ph, pw) = c.padding;
    let mut out = vec![0.0; g.out_plane()];
    for i in 0..g.out_h {
        for j in 0..g.out_w {
            let (mut best, mut sum, mut count) = (f64::NEG_INFINITY, 0.0, 0usize);
            for ki in 0..c.kernel.0 {
                for kj in 0..c.kernel.1 {
                    // position in the padded image
                    let (pr, pc) = (i * c.stride.0 + ki, j * c.stride.1 + kj);
                    if pr >= g.in_h + 2 * ph || pc >= g.in_w + 2 * pw {
                        continue; // ceil_mode overhang past the padding: not counted
                    }
                    count += 1;
                    let inside = pr >= ph && pr < g.in_h + ph && pc >= pw && pc < g.in_w + pw;
                    let v = if inside {
                        x[(pr - ph) * g.in_w + (pc - pw)]
                    } else {
                        0.0
                    };
                    if inside {
                        best = best.max(v);
                    }
                    sum += v;
                }
            }
            out[i * g.out_w + j] = if max { best } else { sum / count as f64 };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const LECTURE: [f64; 16] = [
        21., 8., 8., 12., 12., 19., 9., 7., 8., 10., 4., 3., 18., 12., 9., 10.,
    ];

    #[test]
    fn lecture_4x4_example() {
        let g = Pool2dGeometry::new([1, 4, 4], Pool2dConfig::default()).unwrap();
        let (mut y, mut a) = (vec![0.0; 4], vec![0u32; 4]);
        maxpool2d_forward(&g, &LECTURE, &mut y, &mut a);
        assert_eq!(y, [21., 12., 18., 10.]);
        avgpool2d_forward(&g, &LECTURE, &mut y);
        assert_eq!(y, [15., 9., 12., 6.5]);
        subsample_forward(&g, &LECTURE, &mut y);
        assert_eq!(y, [21., 8., 8., 4.]);
    }

    #[test]
    fn fast_matches_naive_with_padding_and_ceil_mode() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for &(h, w, k, s, p, ceil) in &[
            (4, 4, (2, 2), (2, 2), (0, 0), false),
            (5, 7, (3, 3), (2, 2), (1, 1), true),
            (6, 5, (2, 3), (2, 1), (1, 1), true),
            (7, 7, (3, 2), (3, 2), (1, 0), false),
            (5, 5, (2, 2), (2, 2), (1, 1), true),
            // windows larger than the padded input (ceil_mode)
            (1, 2, (2, 3), (2, 3), (0, 0), true),
            (2, 3, (3, 3), (3, 2), (1, 1), true),
        ] {
            let cfg = Pool2dConfig {
                kernel: k,
                stride: s,
                padding: p,
                ceil_mode: ceil,
            };
            let g = Pool2dGeometry::new([1, h, w], cfg).unwrap();
            let x: Vec<f64> = (0..h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (mut y, mut a) = (vec![0.0; g.out_plane()], vec![0u32; g.out_plane()]);
            maxpool2d_forward(&g, &x, &mut y, &mut a);
            assert_eq!(y, pool2d_naive(&g, &x, true), "max {cfg:?}");
            avgpool2d_forward(&g, &x, &mut y);
            let r = pool2d_naive(&g, &x, false);
            assert!(
                y.iter().zip(&r).all(|(a, b)| (a - b).abs() < 1e-12),
                "avg {cfg:?}"
            );
        }
    }

    #[test]
    fn values_only_pooling_and_2x2_winners_match_the_scan() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let set = [0.0, 1.0, -1.0, f64::NAN, 1.0, -0.0, 0.5];
        for (h, w, cfg) in [
            (8, 9, Pool2dConfig::default()),
            (
                7,
                7,
                Pool2dConfig {
                    kernel: (3, 3),
                    stride: (2, 2),
                    padding: (1, 1),
                    ceil_mode: true,
                },
            ),
        ] {
            let g = Pool2dGeometry::new([3, h, w], cfg).unwrap();
            for _ in 0..20 {
                let x: Vec<f64> = (0..3 * h * w).map(|_| set[rng.gen_range(0..7)]).collect();
                let n = 3 * g.out_plane();
                let (mut y1, mut y2, mut a) = (vec![0.0; n], vec![0.0; n], vec![0u32; n]);
                maxpool2d_forward_values(&g, &x, &mut y1);
                maxpool2d_forward(&g, &x, &mut y2, &mut a);
                let same = |a: &f64, b: &f64| a == b || (a.is_nan() && b.is_nan());
                assert!(y1.iter().zip(&y2).all(|(a, b)| same(a, b)), "{cfg:?}");
                // The 2×2 tournament picks the winners of the row-major scan, bit for bit.
                let (mut y3, mut a3) = (vec![0.0; n], vec![0u32; n]);
                maxpool_forward_general(&g, &x, &mut y3, &mut a3);
                assert_eq!(a, a3, "{cfg:?}");
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y2), bits(&y3), "{cfg:?}");
            }
        }
    }

    #[test]
    fn oversized_padding_is_rejected() {
        let cfg = Pool2dConfig {
            kernel: (2, 2),
            stride: (2, 2),
            padding: (2, 2),
            ceil_mode: false,
        };
        assert!(Pool2dGeometry::new([1, 4, 4], cfg).is_err());
    }
}

//! Adaptive pooling (PyTorch's AdaptiveAvgPool2d / AdaptiveMaxPool2d): output cell i of a
//! side n pooled to m spans ⌊i·n/m⌋ … ⌈(i+1)·n/m⌉, also when m does not divide n.
use super::pool::second_wins;
use crate::tensor::Float;
use rayon::prelude::*;

/// The input span [start, end) of output cell `i` of a side of `n` pooled to `m` cells.
pub fn adaptive_window(i: usize, n: usize, m: usize) -> (usize, usize) {
    (i * n / m, ((i + 1) * n).div_ceil(m))
}

/// Geometry of one adaptive pooling: planes of in_h × in_w pooled to out_h × out_w.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveGeometry {
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl AdaptiveGeometry {
    /// Calls f(output cell, rows, columns) for every output cell of a plane.
    fn cells(&self, mut f: impl FnMut(usize, (usize, usize), (usize, usize))) {
        for i in 0..self.out_h {
            let rows = adaptive_window(i, self.in_h, self.out_h);
            for j in 0..self.out_w {
                f(
                    i * self.out_w + j,
                    rows,
                    adaptive_window(j, self.in_w, self.out_w),
                );
            }
        }
    }
}

/// y (planes, out_h, out_w) = window means of x (planes, in_h, in_w), summed in f64.
pub fn adaptive_avg_forward<T: Float>(g: &AdaptiveGeometry, x: &[T], y: &mut [T]) {
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    y.par_chunks_mut(op)
        .zip(x.par_chunks(ip))
        .for_each(|(yp, xp)| {
            g.cells(|o, (r0, r1), (c0, c1)| {
                let mut s = 0.0;
                for r in r0..r1 {
                    s += xp[r * g.in_w + c0..r * g.in_w + c1]
                        .iter()
                        .map(|v| v.f64())
                        .sum::<f64>();
                }
                yp[o] = T::of(s / ((r1 - r0) * (c1 - c0)) as f64);
            })
        });
}

/// dx += each window's dy spread evenly over the window (dx zeroed by the caller).
pub fn adaptive_avg_backward<T: Float>(g: &AdaptiveGeometry, dy: &[T], dx: &mut [T]) {
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    dx.par_chunks_mut(ip)
        .zip(dy.par_chunks(op))
        .for_each(|(dp, gp)| {
            g.cells(|o, (r0, r1), (c0, c1)| {
                let share = T::of(gp[o].f64() / ((r1 - r0) * (c1 - c0)) as f64);
                for r in r0..r1 {
                    dp[r * g.in_w + c0..r * g.in_w + c1]
                        .iter_mut()
                        .for_each(|d| *d += share);
                }
            })
        });
}

/// y = window maxima of x, with each winner's index in its plane (row-major scan: ties keep
/// the first, NaN wins, as PyTorch).
pub fn adaptive_max_forward<T: Float>(
    g: &AdaptiveGeometry,
    x: &[T],
    y: &mut [T],
    argmax: &mut [u32],
) {
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    y.par_chunks_mut(op)
        .zip(argmax.par_chunks_mut(op))
        .zip(x.par_chunks(ip))
        .for_each(|((yp, ap), xp)| {
            g.cells(|o, (r0, r1), (c0, c1)| {
                let mut best = r0 * g.in_w + c0;
                for r in r0..r1 {
                    for at in r * g.in_w + c0..r * g.in_w + c1 {
                        if second_wins(xp[best], xp[at]) {
                            best = at;
                        }
                    }
                }
                yp[o] = xp[best];
                ap[o] = best as u32;
            })
        });
}

/// dx[winner] += dy for each window (dx zeroed by the caller).
pub fn adaptive_max_backward<T: Float>(
    g: &AdaptiveGeometry,
    dy: &[T],
    argmax: &[u32],
    dx: &mut [T],
) {
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    dx.par_chunks_mut(ip)
        .zip(dy.par_chunks(op).zip(argmax.par_chunks(op)))
        .for_each(|(dp, (gp, ap))| {
            for (&d, &a) in gp.iter().zip(ap) {
                dp[a as usize] += d;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_pytorch() {
        // 5 → 3: [0, 2), [1, 4), [3, 5); 4 → 2: [0, 2), [2, 4); 2 → 3: [0, 1), [0, 2), [1, 2).
        let w = |n, m| (0..m).map(|i| adaptive_window(i, n, m)).collect::<Vec<_>>();
        assert_eq!(w(5, 3), [(0, 2), (1, 4), (3, 5)]);
        assert_eq!(w(4, 2), [(0, 2), (2, 4)]);
        assert_eq!(w(2, 3), [(0, 1), (0, 2), (1, 2)]);
    }

    #[test]
    fn lecture_matrix_pooled_to_one_and_to_odd_sizes() {
        let x = [
            21., 8., 8., 12., 12., 19., 9., 7., 8., 10., 4., 3., 18., 12., 9., 10.,
        ];
        let g = AdaptiveGeometry {
            in_h: 4,
            in_w: 4,
            out_h: 1,
            out_w: 1,
        };
        let mut y = [0.0f64];
        adaptive_avg_forward(&g, &x, &mut y);
        assert_eq!(y, [170.0 / 16.0]);
        let g = AdaptiveGeometry {
            in_h: 4,
            in_w: 4,
            out_h: 3,
            out_w: 1,
        };
        let (mut y, mut a) = ([0.0f64; 3], [0u32; 3]);
        adaptive_max_forward(&g, &x, &mut y, &mut a);
        // Rows [0, 2), [1, 3), [2, 4) over all columns.
        assert_eq!(y, [21.0, 19.0, 18.0]);
        assert_eq!(a, [0, 5, 12]);
    }
}

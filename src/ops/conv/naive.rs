//! Naive convolution, forward and backward, straight from the definition: the reference every
//! fast kernel is tested against.
use super::geometry::Conv2dGeometry;
use crate::tensor::Float;

/// Input index (row or column) seen by output `o` at kernel tap `k`, if inside the input.
fn tap(o: usize, k: usize, s: usize, d: usize, pad: usize, n: usize) -> Option<usize> {
    (o * s + k * d).checked_sub(pad).filter(|&i| i < n)
}

/// Reference forward by the defining sum, h[i,j] = Σ x[i·s+k·d−p, j·s+l·d−p]·w[k,l] + b.
pub fn conv2d_forward_naive<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    let c = &g.cfg;
    let (cg, opg) = (g.in_channels / c.groups, g.out_channels / c.groups);
    for s in 0..n {
        for oc in 0..g.out_channels {
            let gi = oc / opg;
            for i in 0..g.out_h {
                for j in 0..g.out_w {
                    let mut acc = b.map_or(0.0, |b| b[oc].f64());
                    for icl in 0..cg {
                        let ic = gi * cg + icl;
                        for ki in 0..c.kernel.0 {
                            let Some(ih) =
                                tap(i, ki, c.stride.0, c.dilation.0, c.pad_begin.0, g.in_h)
                            else {
                                continue;
                            };
                            for kj in 0..c.kernel.1 {
                                let Some(iw) =
                                    tap(j, kj, c.stride.1, c.dilation.1, c.pad_begin.1, g.in_w)
                                else {
                                    continue;
                                };
                                let xv = x[((s * g.in_channels + ic) * g.in_h + ih) * g.in_w + iw];
                                let wv = w[((oc * cg + icl) * c.kernel.0 + ki) * c.kernel.1 + kj];
                                acc += xv.f64() * wv.f64();
                            }
                        }
                    }
                    y[((s * g.out_channels + oc) * g.out_h + i) * g.out_w + j] = T::of(acc);
                }
            }
        }
    }
}

/// Reference backward by differentiating the defining sum term by term (writes dx, adds dw, db).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_naive<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
) {
    let c = &g.cfg;
    let (cg, opg) = (g.in_channels / c.groups, g.out_channels / c.groups);
    dx.iter_mut().for_each(|v| *v = T::zero());
    for s in 0..n {
        for oc in 0..g.out_channels {
            let gi = oc / opg;
            for i in 0..g.out_h {
                for j in 0..g.out_w {
                    let d = dy[((s * g.out_channels + oc) * g.out_h + i) * g.out_w + j];
                    db[oc] += d;
                    for icl in 0..cg {
                        let ic = gi * cg + icl;
                        for ki in 0..c.kernel.0 {
                            let Some(ih) =
                                tap(i, ki, c.stride.0, c.dilation.0, c.pad_begin.0, g.in_h)
                            else {
                                continue;
                            };
                            for kj in 0..c.kernel.1 {
                                let Some(iw) =
                                    tap(j, kj, c.stride.1, c.dilation.1, c.pad_begin.1, g.in_w)
                                else {
                                    continue;
                                };
                                let xi = ((s * g.in_channels + ic) * g.in_h + ih) * g.in_w + iw;
                                let wi = ((oc * cg + icl) * c.kernel.0 + ki) * c.kernel.1 + kj;
                                dw[wi] += d * x[xi];
                                dx[xi] += d * w[wi];
                            }
                        }
                    }
                }
            }
        }
    }
}

//! Convolution as one GEMM per kernel tap on the zero-padded "wide" plane, forward and
//! backward, for stride 1 without dilation or groups and many channels (56² 64→64 3×3).
//!
//! Wide layout (as in `conv_direct`): the padded input Xp (C_in, Hp, Wp) and the wide output
//! Yw (C_out, H_out·Wp) with Yw[oc, r·Wp + c] = Σ_taps W_tap[oc, :] · Xp[:, r·Wp + c + ki·Wp + kj];
//! columns c ≥ W_out of Yw are junk. So tap (ki, kj) is one GEMM, W_tap (C_out × C_in) times a
//! shifted window of Xp (C_in × P), with no column matrix: the GEMM's own packing reads the
//! window, and each GEMM reduces over all channels (dW: over the whole plane), long enough to
//! run at full speed. With the junk columns of dY zeroed, the same windows give the weight
//! gradient and the input gradient. With AVX-512 the weight gradient instead comes from
//! `direct::weight_grad_lanes` on the same padded input (its GEMMs packed both thin
//! operands on every call).
use super::direct;
use super::geometry::Conv2dGeometry;
use super::parallel::{add_bias_sums, backward_chunks, bias_sums, gemm_par, ConvScratch};
use crate::ops::gemm::{matmul_strided, Strides};
use crate::tensor::Float;
use rayon::prelude::*;

/// Samples whose weight gradients one GEMM accumulates before the chunk's partial is kept; a
/// constant, so the reduction order never depends on the thread count.
const CHUNK: usize = 4;

/// The wide plane's sizes for one geometry.
struct Wide {
    hp: usize,
    wp: usize,
    /// Wide columns every tap's window covers: H_out·Wp less the last row's junk tail, so that
    /// the last tap's window ends exactly at the end of Xp.
    cols: usize,
    /// Elements of one wide output channel, H_out·Wp.
    out_plane: usize,
}

impl Wide {
    fn new(g: &Conv2dGeometry) -> Self {
        let c = &g.cfg;
        let hp = g.in_h + c.pad_begin.0 + c.pad_end.0;
        let wp = g.in_w + c.pad_begin.1 + c.pad_end.1;
        Wide {
            hp,
            wp,
            cols: g.out_h * wp - (c.kernel.1 - 1),
            out_plane: g.out_h * wp,
        }
    }
    fn in_plane(&self) -> usize {
        self.hp * self.wp
    }
    /// Offset of tap (ki, kj) in the wide plane.
    fn offset(&self, ki: usize, kj: usize) -> usize {
        ki * self.wp + kj
    }
}

/// Copies x (C, H, W) into xp (C, Hp, Wp), writing the zero border too (the buffer is reused).
fn pad_into<T: Float>(g: &Conv2dGeometry, wd: &Wide, x: &[T], xp: &mut [T]) {
    let (top, left) = g.cfg.pad_begin;
    let (h, w) = (g.in_h, g.in_w);
    for (xc, pc) in x
        .chunks_exact(h * w)
        .zip(xp.chunks_exact_mut(wd.in_plane()))
    {
        for (r, row) in pc.chunks_exact_mut(wd.wp).enumerate() {
            if r < top || r >= top + h {
                row.fill(T::zero());
                continue;
            }
            row[..left].fill(T::zero());
            row[left..left + w].copy_from_slice(&xc[(r - top) * w..(r - top + 1) * w]);
            row[left + w..].fill(T::zero());
        }
    }
}

/// Copies dy (C_out, H_out, W_out) into dyw (C_out, H_out·Wp) with zero junk columns, so that
/// they add nothing to the gradients.
fn widen_into<T: Float>(g: &Conv2dGeometry, wd: &Wide, dy: &[T], dyw: &mut [T]) {
    let ow = g.out_w;
    for (dc, wc) in dy
        .chunks_exact(g.out_h * ow)
        .zip(dyw.chunks_exact_mut(wd.out_plane))
    {
        for (src, row) in dc.chunks_exact(ow).zip(wc.chunks_exact_mut(wd.wp)) {
            row[..ow].copy_from_slice(src);
            row[ow..].fill(T::zero());
        }
    }
}

/// Strides of W_tap (C_out × C_in) inside w (C_out, C_in, kh, kw); its first element is at
/// the tap's index ki·kw + kj.
fn weight_tap(g: &Conv2dGeometry) -> Strides {
    let kk = g.cfg.kernel.0 * g.cfg.kernel.1;
    Strides {
        rs: g.in_channels * kk,
        cs: kk,
    }
}

/// Every tap as (index in the kernel, offset in the wide plane).
fn taps(g: &Conv2dGeometry, wd: &Wide) -> Vec<(usize, usize)> {
    let (kh, kw) = g.cfg.kernel;
    (0..kh)
        .flat_map(|ki| (0..kw).map(move |kj| (ki * kw + kj, wd.offset(ki, kj))))
        .collect()
}

/// y = conv(x, w) + b; the layouts of [`super::conv2d_forward`].
pub(crate) fn forward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    let wd = Wide::new(g);
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let (cin, cout) = (g.in_channels, g.out_channels);
    let taps = taps(g, &wd);
    let par = gemm_par(g, n, n);
    y[..n * out_len]
        .par_chunks_mut(out_len)
        .zip(x[..n * in_len].par_chunks(in_len))
        .for_each_init(
            || {
                (
                    vec![T::zero(); cin * wd.in_plane()], // xp (C_in, Hp, Wp)
                    vec![T::zero(); cout * wd.out_plane], // yw (C_out, H_out·Wp)
                )
            },
            |(xp, yw), (ys, xs)| {
                pad_into(g, &wd, xs, xp);
                for (i, &(t, off)) in taps.iter().enumerate() {
                    // yw[:, ..cols] (+)= W_tap (C_out × C_in) · Xp[:, off..off + cols]
                    matmul_strided(
                        yw,
                        Strides {
                            rs: wd.out_plane,
                            cs: 1,
                        },
                        &w[t..],
                        weight_tap(g),
                        &xp[off..],
                        Strides {
                            rs: wd.in_plane(),
                            cs: 1,
                        },
                        cout,
                        cin,
                        wd.cols,
                        i > 0,
                        par,
                    );
                }
                let plane = g.out_h * g.out_w;
                for (oc, (yc, wc)) in ys
                    .chunks_exact_mut(plane)
                    .zip(yw.chunks_exact(wd.out_plane))
                    .enumerate()
                {
                    let bc = b.map_or(T::zero(), |b| b[oc]);
                    for (dst, src) in yc.chunks_exact_mut(g.out_w).zip(wc.chunks(wd.wp)) {
                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + bc);
                    }
                }
            },
        );
}

/// Gradients of [`forward`]: writes dx (if asked) and adds into dw and db; the layouts of
/// [`super::conv2d_backward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
    lanes_dw: bool,
) {
    let wd = Wide::new(g);
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let (cin, cout) = (g.in_channels, g.out_channels);
    let taps = taps(g, &wd);
    let par = gemm_par(g, n, n.div_ceil(CHUNK));
    let want_dx = dx.is_some();
    // Every (channel, tap) pair's offset in Xp, channel-major as dW's rows.
    let in_plane = wd.in_plane();
    let pair_offs: Vec<usize> = (0..cin)
        .flat_map(|c| taps.iter().map(move |&(_, off)| c * in_plane + off))
        .collect();
    // Per thread: xp (C_in, Hp, Wp), dyw (C_out, H_out·Wp), dxp (C_in, Hp, Wp).
    let sizes = [
        cin * wd.in_plane(),
        cout * wd.out_plane,
        if want_dx { cin * wd.in_plane() } else { 0 },
    ];
    let want_db = db.is_some();
    let work = |bufs: &mut [Vec<T>; 3], s0: usize, s: usize, mut dxc: Option<&mut [T]>| {
        let mut pdw = vec![T::zero(); g.weight_len()]; // (C_out, C_in, kh, kw)
        let mut pdb = bias_sums(cout, want_db); // (C_out)
        let [xp, dyw, dxp] = bufs;
        // With AVX-512 dW comes from the lanes kernel, pair-major (C_in·taps, C_out).
        let mut pdw_t = lanes_dw.then(|| vec![T::zero(); g.weight_len()]);
        let mut dyt = vec![T::zero(); if lanes_dw { g.out_len() } else { 0 }];
        for si in 0..s {
            let xs = &x[(s0 + si) * in_len..(s0 + si + 1) * in_len];
            let dys = &dy[(s0 + si) * out_len..(s0 + si + 1) * out_len];
            pad_into(g, &wd, xs, xp);
            widen_into(g, &wd, dys, dyw);
            add_bias_sums(&mut pdb, dys, g.out_h * g.out_w);
            let dyw_st = Strides {
                rs: wd.out_plane,
                cs: 1,
            };
            if let Some(pt) = pdw_t.as_deref_mut() {
                // dY by vectors of channels (C_out/V, H_out·W_out, V) for the lanes kernel.
                direct::dy_to_lanes(dys, g.out_h * g.out_w, &mut dyt);
                let dims = (g.out_h, g.out_w, wd.wp);
                direct::weight_grad_lanes(1, g.cfg.kernel.1, &pair_offs, dims, xp, &dyt, cout, pt);
            }
            // Without the lanes kernel: one GEMM per tap.
            for &(t, off) in taps.iter().filter(|_| pdw_t.is_none()) {
                // dW_tap (C_out × C_in) += dYw (C_out × cols) · Xp[:, off..off + cols]ᵀ
                matmul_strided(
                    &mut pdw[t..],
                    weight_tap(g),
                    dyw,
                    dyw_st,
                    &xp[off..],
                    Strides {
                        rs: 1,
                        cs: wd.in_plane(),
                    },
                    cout,
                    wd.cols,
                    cin,
                    si > 0,
                    par,
                );
            }
            if let Some(d) = dxc.as_deref_mut() {
                dxp.fill(T::zero());
                let wt = weight_tap(g);
                for &(t, off) in &taps {
                    // dXp[:, off..off + cols] += W_tapᵀ (C_in × C_out) · dYw (C_out × cols)
                    matmul_strided(
                        &mut dxp[off..],
                        Strides {
                            rs: wd.in_plane(),
                            cs: 1,
                        },
                        &w[t..],
                        Strides {
                            rs: wt.cs,
                            cs: wt.rs,
                        },
                        dyw,
                        dyw_st,
                        cin,
                        cout,
                        wd.cols,
                        true,
                        par,
                    );
                }
                let (top, left) = g.cfg.pad_begin;
                let (h, wi) = (g.in_h, g.in_w);
                let ds = &mut d[si * in_len..(si + 1) * in_len];
                for (dc, pc) in ds
                    .chunks_exact_mut(h * wi)
                    .zip(dxp.chunks_exact(wd.in_plane()))
                {
                    for (r, row) in dc.chunks_exact_mut(wi).enumerate() {
                        let at = (r + top) * wd.wp + left;
                        row.copy_from_slice(&pc[at..at + wi]);
                    }
                }
            }
        }
        if let Some(pt) = pdw_t {
            let kk = taps.len();
            for (pair, row) in pt.chunks_exact(cout).enumerate() {
                let (c, t) = (pair / kk, pair % kk);
                for (oc, &v) in row.iter().enumerate() {
                    pdw[(oc * cin + c) * kk + t] = v;
                }
            }
        }
        (pdw, pdb.into_iter().map(T::of).collect())
    };
    backward_chunks(n, CHUNK, in_len, dx, dw, db, scratch, sizes, work);
}

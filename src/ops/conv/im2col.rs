//! im2col + GEMM, forward and backward, for any geometry (stride, asymmetric padding,
//! dilation, groups); and the column-free backward pieces built on the direct kernels.
use super::direct;
use super::geometry::{tap_ranges, Conv2dGeometry};
use super::parallel::{add_bias_sums, backward_chunks, bias_sums, gemm_par, ConvScratch};
use crate::ops::gemm::{matmul, matmul_ld, Ld, Trans};
use crate::tensor::Float;
use rayon::prelude::*;

/// Samples unfolded side by side into one column matrix, so that one GEMM covers them all
/// (per-sample GEMMs on LeNet-sized planes are dominated by packing overhead). A function of
/// the geometry only, never of the thread count: the backward pass reduces weight gradients
/// chunk by chunk in this order, so results are bit-identical on any machine.
fn samples_per_chunk(g: &Conv2dGeometry) -> usize {
    (4096 / (g.out_h * g.out_w).max(1)).clamp(1, 16)
}

/// Elements of one tile of columns (512 KB of f32: fits the L2 cache).
const TILE_ELEMS: usize = 1 << 17;

/// Output rows per tile. Large planes (one sample per chunk) go in tiles of output rows whose
/// columns stay in the L2 cache between im2col and the GEMMs (56² 64→64 3×3: 7 MB per sample
/// otherwise); small planes in one tile per chunk.
fn tile_rows(g: &Conv2dGeometry, chunk: usize) -> usize {
    if chunk > 1 {
        g.out_h
    } else {
        (TILE_ELEMS / (g.k_per_group() * g.out_w).max(1)).clamp(1, g.out_h)
    }
}

/// Unfolds output rows `rows` of one group of one sample into columns: x (C_g, H, W) →
/// cols (C_g·kh·kw, |rows|·W_out), row r starting at `cols[r·ld]` (ld ≥ |rows|·W_out lets
/// samples sit side by side).
fn im2col<T: Float>(
    g: &Conv2dGeometry,
    x: &[T],
    cols: &mut [T],
    ld: usize,
    rows: std::ops::Range<usize>,
) {
    let c = &g.cfg;
    let (kh, kw) = c.kernel;
    let (h, w, ow) = (g.in_h, g.in_w, g.out_w);
    let plane = rows.len() * ow;
    let cg = g.in_channels / c.groups;
    let (row_ranges, col_ranges) = tap_ranges(g);
    if c.stride.1 > 1 {
        return im2col_strided(g, x, cols, ld, rows, &row_ranges, &col_ranges);
    }
    for ch in 0..cg {
        let xc = &x[ch * h * w..(ch + 1) * h * w];
        for (ki, &(r_lo, r_hi)) in row_ranges.iter().enumerate() {
            for (kj, &(c_lo, c_hi)) in col_ranges.iter().enumerate() {
                let row = (ch * kh + ki) * kw + kj;
                let dst = &mut cols[row * ld..row * ld + plane];
                for (i, o_r) in rows.clone().enumerate() {
                    let d = &mut dst[i * ow..(i + 1) * ow];
                    if o_r < r_lo || o_r >= r_hi || c_lo == c_hi {
                        d.fill(T::zero());
                        continue;
                    }
                    let ih = o_r * c.stride.0 + ki * c.dilation.0 - c.pad_begin.0;
                    let src = &xc[ih * w..(ih + 1) * w];
                    d[..c_lo].fill(T::zero());
                    d[c_hi..].fill(T::zero());
                    let iw0 = c_lo + kj * c.dilation.1 - c.pad_begin.1;
                    // A loop, not copy_from_slice: rows are short (LeNet: 10–28), and an
                    // inlined vector move beats a call to memmove at that length.
                    for (dv, &sv) in d[c_lo..c_hi].iter_mut().zip(&src[iw0..]) {
                        *dv = sv;
                    }
                }
            }
        }
    }
}

/// [`im2col`] for a column stride s > 1. Each input row is first split into its s phases
/// (columns ≡ q mod s, side by side), once for all kw taps that read it; each tap's output
/// row is then a contiguous run of one phase instead of a strided gather.
fn im2col_strided<T: Float>(
    g: &Conv2dGeometry,
    x: &[T],
    cols: &mut [T],
    ld: usize,
    rows: std::ops::Range<usize>,
    row_ranges: &[(usize, usize)],
    col_ranges: &[(usize, usize)],
) {
    let c = &g.cfg;
    let (kh, kw) = c.kernel;
    let (h, w, ow, s) = (g.in_h, g.in_w, g.out_w, c.stride.1);
    let cg = g.in_channels / c.groups;
    let phase_len = w.div_ceil(s);
    let mut phases = vec![T::zero(); s * phase_len]; // (s, ⌈W/s⌉): phase q holds columns q, q+s, …
    for ch in 0..cg {
        let xc = &x[ch * h * w..(ch + 1) * h * w];
        for (ki, &(r_lo, r_hi)) in row_ranges.iter().enumerate() {
            let row0 = (ch * kh + ki) * kw;
            for (i, o_r) in rows.clone().enumerate() {
                if o_r < r_lo || o_r >= r_hi {
                    for kj in 0..kw {
                        cols[(row0 + kj) * ld + i * ow..][..ow].fill(T::zero());
                    }
                    continue;
                }
                let ih = o_r * c.stride.0 + ki * c.dilation.0 - c.pad_begin.0;
                let src = &xc[ih * w..(ih + 1) * w];
                for (q, ph) in phases.chunks_exact_mut(phase_len).enumerate() {
                    for (p, &v) in ph.iter_mut().zip(src.iter().skip(q).step_by(s)) {
                        *p = v;
                    }
                }
                for (kj, &(c_lo, c_hi)) in col_ranges.iter().enumerate() {
                    let d = &mut cols[(row0 + kj) * ld + i * ow..][..ow];
                    d[..c_lo].fill(T::zero());
                    d[c_hi..].fill(T::zero());
                    if c_lo == c_hi {
                        continue;
                    }
                    let iw0 = c_lo * s + kj * c.dilation.1 - c.pad_begin.1;
                    let run = &phases[(iw0 % s) * phase_len + iw0 / s..][..c_hi - c_lo];
                    for (dv, &sv) in d[c_lo..c_hi].iter_mut().zip(run) {
                        *dv = sv;
                    }
                }
            }
        }
    }
}

/// Folds columns back, adding: the adjoint of [`im2col`], cols → dx (C_g, H, W).
fn col2im<T: Float>(
    g: &Conv2dGeometry,
    cols: &[T],
    dx: &mut [T],
    ld: usize,
    rows: std::ops::Range<usize>,
) {
    let c = &g.cfg;
    let (kh, kw) = c.kernel;
    let (h, w, ow) = (g.in_h, g.in_w, g.out_w);
    let plane = rows.len() * ow;
    let cg = g.in_channels / c.groups;
    let (row_ranges, col_ranges) = tap_ranges(g);
    for ch in 0..cg {
        let xc = &mut dx[ch * h * w..(ch + 1) * h * w];
        for (ki, &(r_lo, r_hi)) in row_ranges.iter().enumerate() {
            let (r_lo, r_hi) = (r_lo.max(rows.start), r_hi.min(rows.end));
            for (kj, &(c_lo, c_hi)) in col_ranges.iter().enumerate() {
                if c_lo == c_hi {
                    continue;
                }
                let row = (ch * kh + ki) * kw + kj;
                let src = &cols[row * ld..row * ld + plane];
                let iw0 = c_lo * c.stride.1 + kj * c.dilation.1 - c.pad_begin.1;
                for o_r in r_lo..r_hi {
                    let ih = o_r * c.stride.0 + ki * c.dilation.0 - c.pad_begin.0;
                    let d = &mut xc[ih * w..(ih + 1) * w];
                    let s = &src[(o_r - rows.start) * ow..][c_lo..c_hi];
                    if c.stride.1 == 1 {
                        // Contiguous: a plain vectorisable add.
                        for (dv, &v) in d[iw0..iw0 + s.len()].iter_mut().zip(s) {
                            *dv += v;
                        }
                    } else {
                        for (i, &v) in s.iter().enumerate() {
                            d[iw0 + i * c.stride.1] += v;
                        }
                    }
                }
            }
        }
    }
}

/// [`super::conv2d_forward`] by im2col + GEMM, for any geometry.
pub(super) fn forward_im2col<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    let groups = g.cfg.groups;
    let (opg, kpg, plane) = (g.out_channels / groups, g.k_per_group(), g.out_plane());
    let (in_len, out_len, in_group) = (g.in_len(), g.out_len(), g.in_len() / groups);
    let chunk = samples_per_chunk(g);
    let tile_rows = tile_rows(g, chunk);
    let tile = tile_rows * g.out_w;
    let par = gemm_par(g, n, n.div_ceil(chunk));
    y[..n * out_len]
        .par_chunks_mut(chunk * out_len)
        .zip(x[..n * in_len].par_chunks(chunk * in_len))
        .for_each_init(
            || {
                (
                    vec![T::zero(); kpg * chunk * tile], // cols (kpg, chunk·tile)
                    // GEMM output (opg, chunk·tile); one sample's goes straight into y.
                    vec![T::zero(); if chunk > 1 { opg * chunk * tile } else { 0 }],
                )
            },
            |(cols, tmp), (ys, xs)| {
                let s = ys.len() / out_len;
                for gi in 0..groups {
                    for r0 in (0..g.out_h).step_by(tile_rows) {
                        let rows = r0..(r0 + tile_rows).min(g.out_h);
                        let tl = rows.len() * g.out_w; // columns of one sample in this tile
                        let ld = s * tl;
                        // cols (kpg, s·tl): the chunk's samples side by side.
                        for si in 0..s {
                            im2col(
                                g,
                                &xs[si * in_len + gi * in_group..si * in_len + (gi + 1) * in_group],
                                &mut cols[si * tl..],
                                ld,
                                rows.clone(),
                            );
                        }
                        let wg = &w[gi * opg * kpg..(gi + 1) * opg * kpg];
                        if s == 1 {
                            // One sample: the GEMM writes its rows of y in place, bias after.
                            let yg = &mut ys[gi * opg * plane + r0 * g.out_w..];
                            let lds = Ld {
                                c: plane,
                                ..Ld::dense(opg, kpg, tl, Trans::No, Trans::No)
                            };
                            matmul_ld(
                                yg,
                                wg,
                                Trans::No,
                                &cols[..kpg * tl],
                                Trans::No,
                                opg,
                                kpg,
                                tl,
                                lds,
                                false,
                                par,
                            );
                            if let Some(b) = b {
                                for (oc, row) in yg.chunks_mut(plane).take(opg).enumerate() {
                                    let bc = b[gi * opg + oc];
                                    row[..tl].iter_mut().for_each(|v| *v += bc);
                                }
                            }
                            continue;
                        }
                        // tmp (opg, s·tl) = W_g (opg, kpg) · cols
                        matmul(
                            &mut tmp[..opg * ld],
                            wg,
                            Trans::No,
                            &cols[..kpg * ld],
                            Trans::No,
                            opg,
                            kpg,
                            ld,
                            false,
                            par,
                        );
                        for si in 0..s {
                            for oc in 0..opg {
                                let at = si * out_len + (gi * opg + oc) * plane + r0 * g.out_w;
                                let dst = &mut ys[at..][..tl];
                                let src = &tmp[oc * ld + si * tl..][..tl];
                                match b {
                                    Some(b) => {
                                        let bc = b[gi * opg + oc];
                                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + bc);
                                    }
                                    None => dst.copy_from_slice(src),
                                }
                            }
                        }
                    }
                }
            },
        );
}

/// The kernels of the transposed convolution ([`Conv2dGeometry::transposed`], whose forward
/// pass over dY is dX): flipped, their channel axes swapped, w' (C_in, C_out, kh, kw).
pub(super) fn transposed_weights<T: Float>(g: &Conv2dGeometry, w: &[T]) -> Vec<T> {
    let (kh, kw) = g.cfg.kernel;
    let (ci, co) = (g.in_channels, g.out_channels);
    let mut wt = vec![T::zero(); w.len()]; // (C_in, C_out, kh, kw), flipped
    for oc in 0..co {
        for c in 0..ci {
            for ki in 0..kh {
                for kj in 0..kw {
                    wt[((c * co + oc) * kh + kh - 1 - ki) * kw + kw - 1 - kj] =
                        w[((oc * ci + c) * kh + ki) * kw + kj];
                }
            }
        }
    }
    wt
}

/// Where [`backward_im2col`] takes dW (and db) from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum WeightGrad {
    /// The column GEMM, dY · colsᵀ: any geometry.
    Columns,
    /// The direct kernel on the wide plane (stride 1 without dilation only): no column matrix,
    /// and without dx (a first layer) no tiles at all.
    Direct,
    /// Computed by the caller: only dx, from dY's columns (no column matrix of x either).
    Elsewhere,
}

/// [`super::conv2d_backward_with`] by im2col + GEMM, for any geometry, with dW from `dw_by`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_im2col<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
    dw_by: WeightGrad,
) {
    let direct_dw = dw_by == WeightGrad::Direct;
    let columns = dw_by == WeightGrad::Columns;
    let groups = g.cfg.groups;
    let (opg, kpg, plane) = (g.out_channels / groups, g.k_per_group(), g.out_plane());
    let (in_len, out_len, in_group) = (g.in_len(), g.out_len(), g.in_len() / groups);
    let chunk = samples_per_chunk(g);
    let par = gemm_par(g, n, n.div_ceil(chunk));

    let want_db = db.is_some();
    // One chunk of samples: fills its dx rows, returns its partial (dw, db).
    let tile_rows = tile_rows(g, chunk);
    let tile = tile_rows * g.out_w;
    let work = |bufs: &mut [Vec<T>; 3], s0: usize, s: usize, mut dxc: Option<&mut [T]>| {
        let mut pdw = vec![T::zero(); g.weight_len()]; // (C_out, C_in/groups·kh·kw)
        let dys = &dy[s0 * out_len..(s0 + s) * out_len]; // (s, C_out, H_out, W_out)
        let mut pdb = bias_sums(g.out_channels, want_db); // (C_out)
        add_bias_sums(&mut pdb, dys, plane);
        let [cols, dyc, dcols] = bufs;
        if direct_dw {
            let xs = &x[s0 * in_len..(s0 + s) * in_len];
            direct::weight_grad(g, xs, dys, &mut pdw, cols);
            if dxc.is_none() {
                return (pdw, pdb.into_iter().map(T::of).collect());
            }
        }
        if let Some(d) = dxc.as_deref_mut() {
            d.fill(T::zero());
        }
        for gi in 0..groups {
            for r0 in (0..g.out_h).step_by(tile_rows) {
                let rows = r0..(r0 + tile_rows).min(g.out_h);
                let tl = rows.len() * g.out_w; // columns of one sample in this tile
                let ld = s * tl;
                let (dyc, dcols) = (&mut dyc[..opg * ld], &mut dcols[..kpg * ld]);
                for si in (0..s).filter(|_| columns) {
                    let xs = &x[(s0 + si) * in_len..(s0 + si + 1) * in_len];
                    im2col(
                        g,
                        &xs[gi * in_group..(gi + 1) * in_group],
                        &mut cols[si * tl..],
                        ld,
                        rows.clone(),
                    );
                }
                // dY_g (opg × s·tl, rows dld apart): one sample's tile is read where it lies,
                // several are gathered side by side.
                let at0 = s0 * out_len + gi * opg * plane + r0 * g.out_w;
                let (dyg, dld): (&[T], usize) = if s == 1 {
                    (&dy[at0..], plane)
                } else {
                    for si in 0..s {
                        for oc in 0..opg {
                            let at = at0 + si * out_len + oc * plane;
                            dyc[oc * ld + si * tl..][..tl].copy_from_slice(&dy[at..][..tl]);
                        }
                    }
                    (dyc, ld)
                };
                if columns {
                    // dW_g += dY_g (opg × s·tl) · colsᵀ (s·tl × kpg)
                    let pdw_g = &mut pdw[gi * opg * kpg..(gi + 1) * opg * kpg];
                    let lds = Ld {
                        a: dld,
                        ..Ld::dense(opg, ld, kpg, Trans::No, Trans::Yes)
                    };
                    matmul_ld(
                        pdw_g,
                        dyg,
                        Trans::No,
                        &cols[..kpg * ld],
                        Trans::Yes,
                        opg,
                        ld,
                        kpg,
                        lds,
                        true,
                        par,
                    );
                }
                if let Some(d) = dxc.as_deref_mut() {
                    // dcols = W_gᵀ (kpg × opg) · dY_g (opg × s·tl)
                    let wg = &w[gi * opg * kpg..(gi + 1) * opg * kpg];
                    let lds = Ld {
                        b: dld,
                        ..Ld::dense(kpg, opg, ld, Trans::Yes, Trans::No)
                    };
                    matmul_ld(
                        dcols,
                        wg,
                        Trans::Yes,
                        dyg,
                        Trans::No,
                        kpg,
                        opg,
                        ld,
                        lds,
                        false,
                        par,
                    );
                    for si in 0..s {
                        col2im(
                            g,
                            &dcols[si * tl..],
                            &mut d[si * in_len + gi * in_group..si * in_len + (gi + 1) * in_group],
                            ld,
                            rows.clone(),
                        );
                    }
                }
            }
        }
        (pdw, pdb.into_iter().map(T::of).collect())
    };

    let mut sizes = [kpg, opg, kpg].map(|rows| rows * chunk * tile);
    sizes[0] = match dw_by {
        WeightGrad::Columns => sizes[0],
        // The columns' buffer holds the direct kernel's scratch instead.
        WeightGrad::Direct => direct::weight_grad_scratch(g, chunk),
        WeightGrad::Elsewhere => 0,
    };
    backward_chunks(n, chunk, in_len, dx, dw, db, scratch, sizes, work);
}

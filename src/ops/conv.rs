//! 2-D cross-correlation (what deep nets call convolution) as im2col + GEMM, forward and
//! backward, with stride, asymmetric padding, dilation and groups; plus naive references.
use super::gemm::{matmul, matmul_ld, Ld, Par, Trans};
use super::pool::Pool2dGeometry;
use super::shape::conv_output_size;
use super::reduce::sum_f64;
use super::simd::Isa;
use super::{conv_batch, conv_direct, conv_rows_winograd, conv_taps, conv_winograd};
use crate::tensor::Float;
use rayon::prelude::*;

/// Samples unfolded side by side into one column matrix, so that one GEMM covers them all
/// (per-sample GEMMs on LeNet-sized planes are dominated by packing overhead). A function of
/// the geometry only, never of the thread count: the backward pass reduces weight gradients
/// chunk by chunk in this order, so results are bit-identical on any machine.
fn samples_per_chunk(g: &Conv2dGeometry) -> usize {
    (4096 / (g.out_h * g.out_w).max(1)).clamp(1, 16)
}

/// Whether the GEMMs of a convolution over `n` samples in `tasks` parallel tasks use the threads
/// themselves: only when there are too few tasks to keep every thread busy and enough work.
pub(crate) fn gemm_par(g: &Conv2dGeometry, n: usize, tasks: usize) -> Par {
    if tasks < rayon::current_num_threads() && n * g.out_len() * g.k_per_group() >= 1 << 22 {
        Par::Rayon
    } else {
        Par::Seq
    }
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

/// Options of a convolution, candle-style: `Conv2dConfig { stride: (2, 2), ..Default::default() }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    /// Padding before the first row / column.
    pub pad_begin: (usize, usize),
    /// Padding after the last row / column (differs from `pad_begin` only for "same" with even extents).
    pub pad_end: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig {
            kernel: (3, 3),
            stride: (1, 1),
            dilation: (1, 1),
            pad_begin: (0, 0),
            pad_end: (0, 0),
            groups: 1,
        }
    }
}

/// Every size of one convolution, derived once from the input shape and the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub cfg: Conv2dConfig,
}

impl Conv2dGeometry {
    /// Checks the configuration against the input `[C, H, W]`; the error says what does not fit.
    pub fn new(input: [usize; 3], out_channels: usize, cfg: Conv2dConfig) -> Result<Self, String> {
        let [c, h, w] = input;
        if cfg.groups == 0 || c % cfg.groups != 0 || !out_channels.is_multiple_of(cfg.groups) {
            return Err(format!(
                "groups = {} must divide both the input channels ({c}) and out_channels ({out_channels})",
                cfg.groups
            ));
        }
        let (kh, kw) = cfg.kernel;
        let out_h = conv_output_size(
            h,
            cfg.pad_begin.0 + cfg.pad_end.0,
            kh,
            cfg.stride.0,
            cfg.dilation.0,
        );
        let out_w = conv_output_size(
            w,
            cfg.pad_begin.1 + cfg.pad_end.1,
            kw,
            cfg.stride.1,
            cfg.dilation.1,
        );
        match (out_h, out_w) {
            (Some(out_h), Some(out_w)) => Ok(Conv2dGeometry {
                in_channels: c,
                in_h: h,
                in_w: w,
                out_channels,
                out_h,
                out_w,
                cfg,
            }),
            _ => Err(format!(
                "the kernel {kh}×{kw} (dilation {}×{}) is larger than the padded input {}×{}",
                cfg.dilation.0,
                cfg.dilation.1,
                h + cfg.pad_begin.0 + cfg.pad_end.0,
                w + cfg.pad_begin.1 + cfg.pad_end.1
            )),
        }
    }
    /// Elements of one input sample, C_in·H·W.
    pub fn in_len(&self) -> usize {
        self.in_channels * self.in_h * self.in_w
    }
    /// Elements of one output sample, C_out·H_out·W_out.
    pub fn out_len(&self) -> usize {
        self.out_channels * self.out_h * self.out_w
    }
    /// Rows of a group's column matrix, C_in/groups·kh·kw (the GEMM's reduction length).
    pub fn k_per_group(&self) -> usize {
        self.in_channels / self.cfg.groups * self.cfg.kernel.0 * self.cfg.kernel.1
    }
    /// Elements of the weight tensor (C_out, C_in/groups, kh, kw).
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.k_per_group()
    }
    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }
}

/// Output positions `o` in `0..out` whose input index `o·s + off − pad` lies in `0..n`.
fn valid_range(n: usize, out: usize, s: usize, off: usize, pad: usize) -> (usize, usize) {
    // o·s + off ≥ pad  and  o·s + off < n + pad
    let lo = if off >= pad {
        0
    } else {
        (pad - off).div_ceil(s)
    };
    let hi = if n + pad > off {
        (n + pad - off).div_ceil(s)
    } else {
        0
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// Half-open ranges of output positions, one per kernel row or column.
type Ranges = Vec<(usize, usize)>;

/// For each kernel row ki (column kj): the output rows (columns) whose tap lands inside the
/// input, as [`valid_range`] gives them.
fn tap_ranges(g: &Conv2dGeometry) -> (Ranges, Ranges) {
    let c = &g.cfg;
    let rows = (0..c.kernel.0)
        .map(|ki| {
            valid_range(
                g.in_h,
                g.out_h,
                c.stride.0,
                ki * c.dilation.0,
                c.pad_begin.0,
            )
        })
        .collect();
    let cols = (0..c.kernel.1)
        .map(|kj| {
            valid_range(
                g.in_w,
                g.out_w,
                c.stride.1,
                kj * c.dilation.1,
                c.pad_begin.1,
            )
        })
        .collect();
    (rows, cols)
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

/// y = conv(x, w) + b for a batch of `n` samples.
/// x: (N, C_in, H, W), w: (C_out, C_in/groups, kh, kw), b: (C_out), y: (N, C_out, H_out, W_out).
pub fn conv2d_forward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    conv2d_forward_with(g, n, x, w, b, y, &mut ConvScratch::default())
}

/// [`conv2d_forward`] with scratch buffers kept by the caller across calls. 3×3 at stride 1
/// with many channels goes to Winograd's F(2×2, 3×3); with AVX-512, whole vectors of output
/// channels and a short reduction, 7 or 8 wide at stride 2 to Winograd's F(4, 4) along the
/// rows, else (stride 1 or 2) the direct kernel with the channels across the lanes; else stride 1 goes to the tap GEMMs when channels and plane are large, or to the
/// direct kernels; the rest (dilated, other strides, long reductions) to im2col + GEMM.
pub fn conv2d_forward_with<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    if conv_winograd::prefers_forward(g, n) {
        conv_winograd::forward(Isa::detect(), g, n, x, w, b, y, scratch)
    } else if conv_rows_winograd::prefers(g) {
        conv_rows_winograd::forward(g, n, x, w, b, y)
    } else if conv_direct::prefers_lanes(g) {
        conv_direct::forward_by_lanes(g, n, x, w, b, y)
    } else if conv_taps::applies_forward(g) {
        conv_taps::forward(g, n, x, w, b, y)
    } else if conv_direct::applies(g) {
        conv_direct::forward(g, n, x, w, b, y)
    } else {
        forward_im2col(g, n, x, w, b, y)
    }
}

/// Whether a convolution followed by `pool` (with or without a ReLU between) can run as one
/// pass, [`conv2d_pool_forward`], for some batch sizes: stride 1 without dilation or groups,
/// pooling 2×2 at stride 2 without padding.
pub fn conv2d_pool_fits(g: &Conv2dGeometry, pool: &Pool2dGeometry) -> bool {
    conv_batch::PoolAfter::fits(g, pool)
}

/// Whether [`conv2d_pool_forward`] takes a batch of `n`: it [`conv2d_pool_fits`] and the
/// batch-lanes kernels are the ones this convolution would run on.
pub fn conv2d_pool_applies(g: &Conv2dGeometry, pool: &Pool2dGeometry, n: usize) -> bool {
    conv2d_pool_fits(g, pool) && conv_batch::applies(g, n)
}

/// Bytes of the winners' record of [`conv2d_pool_forward`] for `n` samples.
pub fn conv2d_pool_winners_len(g: &Conv2dGeometry, n: usize) -> usize {
    conv_batch::PoolAfter::winners_len(g, n)
}

/// y = maxpool2x2(conv(x, w) + b), or maxpool2x2 then ReLU with `relu` (the same values as the
/// ReLU before the pooling), in one pass: y (N, C_out, H_out / 2, W_out / 2); `winners`
/// ([`conv2d_pool_winners_len`]) records each window's winner for [`conv2d_pool_backward`].
/// Needs [`conv2d_pool_applies`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_pool_forward<T: Float>(
    g: &Conv2dGeometry,
    relu: bool,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    winners: &mut [u8],
    scratch: &mut ConvScratch<T>,
) {
    let pool = Some(conv_batch::PoolAfter { relu });
    conv_batch::forward(Isa::detect(), g, pool, n, x, w, b, y, winners, scratch)
}

/// Gradients of [`conv2d_pool_forward`] from dy (N, C_out, H_out / 2, W_out / 2) and its
/// winners: writes dx (if asked), adds into dw and db.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_pool_backward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    winners: &[u8],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
) {
    conv_batch::backward_pooled(Isa::detect(), g, n, x, w, dy, winners, dx, dw, db, scratch)
}

/// Scratch buffers of the backward pass, one set per worker thread, kept across calls (a layer
/// owns one) so that a training step neither allocates nor clears them: every buffer is fully
/// overwritten before it is read.
pub struct ConvScratch<T> {
    // Per thread, three buffers. im2col path: cols (C_in/groups·kh·kw, chunk·tile) or, with
    // the direct dW, that kernel's padded inputs, wide dY and lane sums; dY gathered
    // (opg, chunk·tile); dcols (C_in/groups·kh·kw, chunk·tile). Tap GEMMs: see conv_taps.
    slots: Vec<[Vec<T>; 3]>,
}

impl<T> Default for ConvScratch<T> {
    fn default() -> Self {
        ConvScratch { slots: Vec::new() }
    }
}

/// [`conv2d_forward`] by im2col + GEMM, for any geometry.
fn forward_im2col<T: Float>(
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

/// Gradients of [`conv2d_forward`]: writes dx (if asked) and adds into dw and db.
impl<T: Float> ConvScratch<T> {
    /// At least `nt` sets, each buffer at least its entry of `sizes` long.
    fn grow(&mut self, nt: usize, sizes: [usize; 3]) {
        if self.slots.len() < nt {
            self.slots.resize_with(nt, Default::default);
        }
        for slot in &mut self.slots {
            for (buf, &size) in slot.iter_mut().zip(&sizes) {
                if buf.len() < size {
                    buf.resize(size, T::zero());
                }
            }
        }
    }
}

/// dy: (N, C_out, H_out, W_out), dx: (N, C_in, H, W), dw: (C_out, C_in/groups, kh, kw), db: (C_out).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    let mut scratch = ConvScratch::default();
    conv2d_backward_with(g, n, x, w, dy, dx, dw, db, &mut scratch)
}

/// [`conv2d_backward`] with scratch buffers kept by the caller across calls. Few channels at
/// stride 1 go to the batch-lanes kernels, 3×3 at stride 1 with at least 16 channels to
/// Winograd's F(2×2, 3×3), many channels on a large plane at stride 1 to the tap GEMMs,
/// everything else to im2col + GEMM (with the direct dW kernel at stride 1).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_with<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
) {
    if conv_batch::applies(g, n) {
        return conv_batch::backward(Isa::detect(), g, n, x, w, dy, dx, dw, db, scratch);
    }
    if conv_winograd::applies(g) {
        return conv_winograd::backward(Isa::detect(), g, n, x, w, dy, dx, dw, db, scratch);
    }
    if conv_taps::applies_backward(g) {
        return conv_taps::backward(g, n, x, w, dy, dx, dw, db, scratch);
    }
    if dx.is_none() && conv_direct::applies_weight_grad_strided(g) {
        return conv_direct::weight_grad_strided(g, n, x, dy, dw, db, scratch);
    }
    let direct_dw = conv_direct::applies_weight_grad(g);
    match (dx, transposed(g)) {
        // Direct dW and direct dX: no column matrix at all. Best of 10 alternating runs:
        // LeNet's second layer forward + backward 1.45 → 1.29 ms.
        (Some(dx), Some(gt)) if direct_dw => {
            backward_im2col(g, n, x, w, dy, None, dw, db, scratch, true);
            input_grad_direct(g, &gt, n, w, dy, dx);
        }
        (dx, _) => backward_im2col(g, n, x, w, dy, dx, dw, db, scratch, direct_dw),
    }
}

/// The geometry whose forward pass is this convolution's input gradient, for stride 1
/// without dilation or groups: dY (C_out, H_out, W_out) correlated with the flipped kernels,
/// padded by k − 1 − p on each side (so p ≤ k − 1), gives dX (C_in, H, W).
pub(crate) fn transposed(g: &Conv2dGeometry) -> Option<Conv2dGeometry> {
    let c = &g.cfg;
    let (kh, kw) = c.kernel;
    let fits = |p: usize, k: usize| p < k;
    if c.stride != (1, 1) || c.dilation != (1, 1) || c.groups != 1 {
        return None;
    }
    if !(fits(c.pad_begin.0, kh)
        && fits(c.pad_end.0, kh)
        && fits(c.pad_begin.1, kw)
        && fits(c.pad_end.1, kw))
    {
        return None;
    }
    let cfg = Conv2dConfig {
        pad_begin: (kh - 1 - c.pad_begin.0, kw - 1 - c.pad_begin.1),
        pad_end: (kh - 1 - c.pad_end.0, kw - 1 - c.pad_end.1),
        ..*c
    };
    let gt = Conv2dGeometry::new([g.out_channels, g.out_h, g.out_w], g.in_channels, cfg).ok()?;
    ((gt.out_h, gt.out_w) == (g.in_h, g.in_w)).then_some(gt)
}

/// dX of every sample as the forward pass of [`transposed`]'s geometry: the direct kernel
/// with the kernels flipped and their channel axes swapped, w' (C_in, C_out, kh, kw).
fn input_grad_direct<T: Float>(
    g: &Conv2dGeometry,
    gt: &Conv2dGeometry,
    n: usize,
    w: &[T],
    dy: &[T],
    dx: &mut [T],
) {
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
    conv_direct::forward(gt, n, dy, &wt, None, dx)
}

/// [`conv2d_backward_with`] by im2col + GEMM, for any geometry; with `direct_dw` (stride 1
/// without dilation only) dW comes from the direct kernel on the wide plane instead: no column
/// matrix, and without dx (a first layer) no tiles at all.
#[allow(clippy::too_many_arguments)]
fn backward_im2col<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
    direct_dw: bool,
) {
    let groups = g.cfg.groups;
    let (opg, kpg, plane) = (g.out_channels / groups, g.k_per_group(), g.out_plane());
    let (in_len, out_len, in_group) = (g.in_len(), g.out_len(), g.in_len() / groups);
    let chunk = samples_per_chunk(g);
    let par = gemm_par(g, n, n.div_ceil(chunk));

    // One chunk of samples: fills its dx rows, returns its partial (dw, db).
    let tile_rows = tile_rows(g, chunk);
    let tile = tile_rows * g.out_w;
    let work = |bufs: &mut [Vec<T>; 3], s0: usize, s: usize, mut dxc: Option<&mut [T]>| {
        let mut pdw = vec![T::zero(); g.weight_len()]; // (C_out, C_in/groups·kh·kw)
        let dys = &dy[s0 * out_len..(s0 + s) * out_len]; // (s, C_out, H_out, W_out)
        let mut pdb = vec![0.0f64; g.out_channels]; // (C_out)
        for ds in dys.chunks_exact(out_len) {
            for (b, dc) in pdb.iter_mut().zip(ds.chunks_exact(plane)) {
                *b += sum_f64(dc);
            }
        }
        let [cols, dyc, dcols] = bufs;
        if direct_dw {
            let xs = &x[s0 * in_len..(s0 + s) * in_len];
            conv_direct::weight_grad(g, xs, dys, &mut pdw, cols);
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
                for si in (0..s).filter(|_| !direct_dw) {
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
                if !direct_dw {
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
    if direct_dw {
        // The columns' buffer holds the direct kernel's scratch instead.
        sizes[0] = conv_direct::weight_grad_scratch(g, chunk);
    }
    backward_chunks(n, chunk, in_len, dx, dw, db, scratch, sizes, work);
}

/// Runs `work(scratch set, first sample, samples, dx of those samples)` on every chunk of
/// `chunk` samples and adds the partial (dw, db) it returns into dw and db in chunk order, so
/// the result is bit-identical whatever the thread count. Each thread takes a contiguous run
/// of chunks and one scratch set, its buffers grown to at least `sizes`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_chunks<T, F>(
    n: usize,
    chunk: usize,
    in_len: usize,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut ConvScratch<T>,
    sizes: [usize; 3],
    work: F,
) where
    T: Float,
    F: Fn(&mut [Vec<T>; 3], usize, usize, Option<&mut [T]>) -> (Vec<T>, Vec<T>) + Sync,
{
    let chunks = n.div_ceil(chunk);
    if chunks == 0 {
        return;
    }
    // Thread t takes chunks first(t)..first(t + 1).
    let nt = rayon::current_num_threads().clamp(1, chunks);
    let first = |t: usize| t * chunks / nt;
    scratch.grow(nt, sizes);
    let mut dx_runs: Vec<Option<&mut [T]>> = Vec::with_capacity(nt);
    match dx {
        Some(dx) => {
            let mut rest = &mut dx[..n * in_len];
            for t in 0..nt {
                let len = ((first(t + 1) * chunk).min(n) - first(t) * chunk) * in_len;
                let (run, tail) = std::mem::take(&mut rest).split_at_mut(len);
                dx_runs.push(Some(run));
                rest = tail;
            }
        }
        None => dx_runs.resize_with(nt, || None),
    }
    let per_thread: Vec<Vec<(Vec<T>, Vec<T>)>> = scratch.slots[..nt]
        .par_iter_mut()
        .zip(dx_runs.par_iter_mut())
        .enumerate()
        .map(|(t, (bufs, run))| {
            (first(t)..first(t + 1))
                .map(|ci| {
                    let s0 = ci * chunk;
                    let s = chunk.min(n - s0);
                    let d = run.as_deref_mut().map(|r| {
                        let at = (s0 - first(t) * chunk) * in_len;
                        &mut r[at..at + s * in_len]
                    });
                    work(bufs, s0, s, d)
                })
                .collect()
        })
        .collect();
    // Reduce in chunk order: bit-identical whatever the thread count.
    let mut db = db;
    for (pdw, pdb) in per_thread.into_iter().flatten() {
        dw.iter_mut().zip(&pdw).for_each(|(a, &b)| *a += b);
        if let Some(db) = db.as_deref_mut() {
            db.iter_mut().zip(&pdb).for_each(|(a, &b)| *a += b);
        }
    }
}

/// Runs `work(scratch set, first sample, samples, y of those samples, aux of that chunk)` on
/// every chunk of `chunk` samples, each thread on a contiguous run of chunks with one scratch
/// set grown to at least `sizes` (the forward pass's counterpart of [`backward_chunks`]).
/// `aux` is (bytes per chunk, a record the kernel keeps beside y); (0, []) for none.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_chunks<T, F>(
    n: usize,
    chunk: usize,
    out_len: usize,
    y: &mut [T],
    aux: (usize, &mut [u8]),
    scratch: &mut ConvScratch<T>,
    sizes: [usize; 3],
    work: F,
) where
    T: Float,
    F: Fn(&mut [Vec<T>; 3], usize, usize, &mut [T], &mut [u8]) + Sync,
{
    let chunks = n.div_ceil(chunk);
    if chunks == 0 {
        return;
    }
    let nt = rayon::current_num_threads().clamp(1, chunks);
    let first = |t: usize| t * chunks / nt;
    scratch.grow(nt, sizes);
    let (aux_len, aux) = aux;
    let mut runs: Vec<(usize, &mut [T], &mut [u8])> = Vec::with_capacity(nt);
    let (mut rest, mut aux_rest) = (&mut y[..n * out_len], &mut aux[..chunks * aux_len]);
    for t in 0..nt {
        let len = ((first(t + 1) * chunk).min(n) - first(t) * chunk) * out_len;
        let (run, tail) = std::mem::take(&mut rest).split_at_mut(len);
        let alen = (first(t + 1) - first(t)) * aux_len;
        let (arun, atail) = std::mem::take(&mut aux_rest).split_at_mut(alen);
        runs.push((first(t) * chunk, run, arun));
        rest = tail;
        aux_rest = atail;
    }
    scratch.slots[..nt]
        .par_iter_mut()
        .zip(runs)
        .for_each(|(bufs, (s0, run, arun))| {
            for (ci, yc) in run.chunks_mut(chunk * out_len).enumerate() {
                let ac = &mut arun[ci * aux_len..(ci + 1) * aux_len];
                work(bufs, s0 + ci * chunk, yc.len() / out_len, yc, ac);
            }
        });
}

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

#[cfg(test)]
mod tests {
    use super::super::simd::test_isas;
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut impl Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// Random inputs of `n` samples for `g` (x, w, b and dY, drawn in that order) and what the
    /// naive kernels make of them: the reference the fast kernels are tested against.
    struct Reference {
        x: Vec<f64>,
        w: Vec<f64>,
        b: Vec<f64>,
        dy: Vec<f64>,
        y: Vec<f64>,
        dx: Vec<f64>,
        dw: Vec<f64>,
        db: Vec<f64>,
    }

    fn reference(rng: &mut impl Rng, g: &Conv2dGeometry, n: usize) -> Reference {
        let x = rand_vec(rng, n * g.in_len());
        let w = rand_vec(rng, g.weight_len());
        let b = rand_vec(rng, g.out_channels);
        let dy = rand_vec(rng, n * g.out_len());
        let mut y = vec![0.0; n * g.out_len()];
        conv2d_forward_naive(g, n, &x, &w, Some(&b), &mut y);
        let (mut dx, mut dw, mut db) = (
            vec![0.0; x.len()],
            vec![0.0; w.len()],
            vec![0.0; g.out_channels],
        );
        conv2d_backward_naive(g, n, &x, &w, &dy, &mut dx, &mut dw, &mut db);
        Reference {
            x,
            w,
            b,
            dy,
            y,
            dx,
            dw,
            db,
        }
    }

    #[test]
    fn lecture_5x5_input_2x2_filter_gives_4x4() {
        let x: Vec<f64> = (0..25).map(|v| v as f64).collect();
        let w = vec![1.0, 0.0, 0.0, -1.0];
        let cfg = Conv2dConfig {
            kernel: (2, 2),
            ..Default::default()
        };
        let g = Conv2dGeometry::new([1, 5, 5], 1, cfg).unwrap();
        assert_eq!((g.out_h, g.out_w), (4, 4));
        let mut y = vec![0.0; 16];
        conv2d_forward(&g, 1, &x, &w, None, &mut y);
        // x[i,j] − x[i+1,j+1] = −6 everywhere on a ramp with row step 5.
        assert!(y.iter().all(|&v| v == -6.0));
    }

    type Forward = fn(&Conv2dGeometry, usize, &[f64], &[f64], Option<&[f64]>, &mut [f64]);
    /// Whether a path handles a geometry.
    type Handles = fn(&Conv2dGeometry) -> bool;
    /// The backward paths, each run on its own whatever the dispatch would pick.
    #[derive(Clone, Copy, Debug)]
    enum BackwardPath {
        Batch,
        Im2col,
        DirectDw,
        DirectDwDx,
        Taps,
        /// Whatever `conv2d_backward_with` picks on this CPU.
        Dispatch,
    }

    impl BackwardPath {
        #[allow(clippy::too_many_arguments)]
        fn run(
            self,
            g: &Conv2dGeometry,
            n: usize,
            x: &[f64],
            w: &[f64],
            dy: &[f64],
            dx: Option<&mut [f64]>,
            dw: &mut [f64],
            db: Option<&mut [f64]>,
            sc: &mut ConvScratch<f64>,
        ) {
            match self {
                BackwardPath::Batch => {
                    conv_batch::backward(Isa::detect(), g, n, x, w, dy, dx, dw, db, sc)
                }
                BackwardPath::Im2col => backward_im2col(g, n, x, w, dy, dx, dw, db, sc, false),
                BackwardPath::DirectDw => backward_im2col(g, n, x, w, dy, dx, dw, db, sc, true),
                BackwardPath::DirectDwDx => {
                    backward_im2col(g, n, x, w, dy, None, dw, db, sc, true);
                    if let (Some(dx), Some(gt)) = (dx, transposed(g)) {
                        input_grad_direct(g, &gt, n, w, dy, dx);
                    }
                }
                BackwardPath::Taps => conv_taps::backward(g, n, x, w, dy, dx, dw, db, sc),
                BackwardPath::Dispatch => conv2d_backward_with(g, n, x, w, dy, dx, dw, db, sc),
            }
        }
    }

    /// In f32 the lanes kernel stores through a transpose in registers (with AVX-512), which
    /// the f64 cases of the test below never reach: every run length, 1 and 2 vectors of
    /// channels, both strides, partial last runs.
    #[test]
    fn lanes_f32_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let cases = [
            // (C_in, H, W, C_out, kernel, stride, pad)
            (6, 14, 14, 16, 5, 1, 0),
            (3, 13, 13, 64, 7, 2, 3),
            (5, 11, 30, 32, 3, 1, 1),
            (4, 9, 23, 32, 3, 2, 1),
            (2, 8, 12, 16, 3, 1, 1),
            (2, 8, 20, 16, 3, 2, 2),
        ];
        for (ci, h, w, co, k, s, p) in cases {
            let cfg = Conv2dConfig {
                kernel: (k, k),
                stride: (s, s),
                pad_begin: (p, p),
                pad_end: (p, p),
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            let n = 3;
            let x = rand_vec(&mut rng, n * g.in_len());
            let wt = rand_vec(&mut rng, g.weight_len());
            let b = rand_vec(&mut rng, co);
            let mut want = vec![0.0; n * g.out_len()];
            conv2d_forward_naive(&g, n, &x, &wt, Some(&b), &mut want);
            let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let mut y = vec![f32::NAN; n * g.out_len()];
            conv_direct::forward_by_lanes(&g, n, &f32s(&x), &f32s(&wt), Some(&f32s(&b)), &mut y);
            for (i, (&a, &b)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (a as f64 - b).abs() < 1e-4 * b.abs().max(1.0),
                    "{cfg:?} at {i}"
                );
            }
        }
    }

    /// The batch-lanes kernels in f32 (where AVX-512 packs by register transposes) against the
    /// naive f64 kernels: forward, dX, dW and db; planes wider than one transpose, partial groups.
    #[test]
    fn batch_f32_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let cases = [
            // (C_in, H, W, C_out, kernel, pad_begin, pad_end)
            (1, 28, 28, 6, 5, 2, 2),
            (6, 14, 14, 16, 5, 0, 0),
            (3, 9, 37, 5, 3, 1, 0),
            (2, 17, 5, 10, 4, 3, 1),
        ];
        let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let near = |a: &[f32], b: &[f64], what: &str| {
            for (i, (&a, &b)) in a.iter().zip(b).enumerate() {
                assert!(
                    (a as f64 - b).abs() < 1e-4 * b.abs().max(1.0),
                    "{what} at {i}: {a} vs {b}"
                );
            }
        };
        for (ci, h, w, co, k, pb, pe) in cases {
            let cfg = Conv2dConfig {
                kernel: (k, k),
                pad_begin: (pb, pb),
                pad_end: (pe, pe),
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            for n in [3, 16, 21] {
                let Reference {
                    x,
                    w: wt,
                    b,
                    dy,
                    y: want,
                    dx: dx2,
                    dw: dw2,
                    db: db2,
                } = reference(&mut rng, &g, n);

                let (x, wt, b, dy) = (f32s(&x), f32s(&wt), f32s(&b), f32s(&dy));
                // This CPU's kernels, AVX2's and the baseline build's (the narrow blockings).
                for isa in test_isas() {
                    let mut sc = ConvScratch {
                        slots: vec![std::array::from_fn(|_| vec![f32::NAN; 1 << 18]); 2],
                    };
                    let mut y = vec![f32::NAN; n * g.out_len()];
                    let no_pool = &mut [];
                    conv_batch::forward(
                        isa,
                        &g,
                        None,
                        n,
                        &x,
                        &wt,
                        Some(&b),
                        &mut y,
                        no_pool,
                        &mut sc,
                    );
                    near(&y, &want, &format!("forward {cfg:?} n {n}"));
                    let (mut dx1, mut dw1, mut db1) =
                        (vec![f32::NAN; x.len()], vec![0.0; wt.len()], vec![0.0; co]);
                    let (dxr, dbr) = (Some(&mut dx1[..]), Some(&mut db1[..]));
                    conv_batch::backward(isa, &g, n, &x, &wt, &dy, dxr, &mut dw1, dbr, &mut sc);
                    near(&dx1, &dx2, &format!("dx {cfg:?} n {n}"));
                    near(&dw1, &dw2, &format!("dw {cfg:?} n {n}"));
                    near(&db1, &db2, &format!("db {cfg:?} n {n}"));
                }
            }
        }
    }

    /// The Winograd kernels against the naive ones, in f64 (to rounding) and in f32 with each
    /// instruction set's build: forward, dX, dW and db. Channels that fill no register block,
    /// odd and asymmetric planes, padding 0–2 on each side, several blocks of tile rows, NaN
    /// scratch (which the kernels must not read).
    #[test]
    fn winograd_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let cases = [
            // (C_in, H, W, C_out, pad_begin, pad_end)
            (16, 8, 8, 16, (1, 1), (1, 1)),
            (17, 9, 13, 19, (2, 0), (0, 1)),
            (20, 5, 6, 33, (0, 0), (0, 0)),
            (24, 30, 31, 18, (1, 2), (2, 1)),
            (64, 28, 28, 64, (1, 1), (1, 1)),
        ];
        for (ci, h, w, co, pb, pe) in cases {
            let cfg = Conv2dConfig {
                pad_begin: pb,
                pad_end: pe,
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            assert!(conv_winograd::applies(&g));
            for n in [1, 3] {
                let Reference {
                    x,
                    w: wt,
                    b,
                    dy,
                    y: want,
                    dx: dx2,
                    dw: dw2,
                    db: db2,
                } = reference(&mut rng, &g, n);
                let what = |part: &str| format!("{part} {cfg:?} C {ci}→{co} {h}×{w} n {n}");

                let check = |isa: Isa, tol: f64, y: &[f64], dx: &[f64], dw: &[f64], db: &[f64]| {
                    let near = |a: &[f64], b: &[f64], part: &str| {
                        for (i, (&a, &b)) in a.iter().zip(b).enumerate() {
                            assert!(
                                (a - b).abs() < tol * b.abs().max(1.0),
                                "{} at {i}: {a} vs {b} ({})",
                                what(part),
                                isa_name(isa)
                            );
                        }
                    };
                    near(y, &want, "forward");
                    near(dx, &dx2, "dx");
                    near(dw, &dw2, "dw");
                    near(db, &db2, "db");
                };
                for isa in test_isas() {
                    let (y, dx, dw, db) = winograd_pass(isa, &g, n, &x, &wt, &b, &dy, f64::NAN);
                    check(isa, 1e-10, &y, &dx, &dw, &db);
                    let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                    let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
                    let (x, wt, b, dy) = (f32s(&x), f32s(&wt), f32s(&b), f32s(&dy));
                    let (y, dx, dw, db) = winograd_pass(isa, &g, n, &x, &wt, &b, &dy, f32::NAN);
                    check(isa, 1e-4, &f64s(y), &f64s(dx), &f64s(dw), &f64s(db));
                }
            }
        }
    }

    /// The stride-2 weight gradient without dX (the lanes kernel over the padded input, taken
    /// where this CPU has AVX-512) against the naive kernel, in f64 and f32: the 7×7 stem's
    /// shape on a small plane, odd planes and asymmetric padding, non-square kernels, one and
    /// two vectors of output channels, scratch left dirty by a first call.
    #[test]
    fn strided_weight_grad_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
        let cases = [
            // (C_in, H, W, C_out, kernel, pad_begin, pad_end)
            (3, 30, 30, 64, (7, 7), (3, 3), (3, 3)),
            (1, 17, 23, 16, (3, 5), (1, 0), (0, 2)),
            (4, 12, 9, 32, (4, 4), (0, 1), (1, 0)),
            // In tiles of output rows (f64: 16 of the 22 rows, then 6), by kernel rows.
            (2, 44, 250, 32, (7, 7), (3, 3), (3, 3)),
        ];
        for (ci, h, w, co, kernel, pb, pe) in cases {
            let cfg = Conv2dConfig {
                kernel,
                stride: (2, 2),
                pad_begin: pb,
                pad_end: pe,
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            #[cfg(target_arch = "x86_64")]
            if Isa::detect() == Isa::Avx512 {
                assert!(conv_direct::applies_weight_grad_strided(&g));
            }
            for n in [1, 5] {
                let Reference {
                    x,
                    w: wt,
                    dy,
                    dw: dw0,
                    db: db0,
                    ..
                } = reference(&mut rng, &g, n);
                let near = |got: &[f64], want: &[f64], tol: f64, part: &str| {
                    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
                        assert!(
                            (a - b).abs() < tol * b.abs().max(1.0),
                            "{part} {cfg:?} C {ci}→{co} {h}×{w} n {n} at {i}: {a} vs {b}"
                        );
                    }
                };
                let mut scratch = ConvScratch::default();
                for _ in 0..2 {
                    let (mut dw, mut db) = (vec![0.0; wt.len()], vec![0.0; co]);
                    conv2d_backward_with(
                        &g,
                        n,
                        &x,
                        &wt,
                        &dy,
                        None,
                        &mut dw,
                        Some(&mut db),
                        &mut scratch,
                    );
                    near(&dw, &dw0, 1e-10, "dw");
                    near(&db, &db0, 1e-10, "db");
                }
                let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                let (mut dw, mut db) = (vec![0.0f32; wt.len()], vec![0.0f32; co]);
                let mut scratch = ConvScratch::default();
                for _ in 0..2 {
                    dw.fill(0.0);
                    db.fill(0.0);
                    let (xs, ws, dys) = (f32s(&x), f32s(&wt), f32s(&dy));
                    conv2d_backward_with(
                        &g,
                        n,
                        &xs,
                        &ws,
                        &dys,
                        None,
                        &mut dw,
                        Some(&mut db),
                        &mut scratch,
                    );
                }
                let f64s = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
                near(&f64s(&dw), &dw0, 1e-4, "dw f32");
                near(&f64s(&db), &db0, 1e-4, "db f32");
            }
        }
    }

    fn isa_name(isa: Isa) -> &'static str {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "AVX-512",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => "AVX2",
            Isa::Baseline => "baseline",
        }
    }

    /// Winograd forward and backward on scratch and outputs filled with `fill`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn winograd_pass<T: Float>(
        isa: Isa,
        g: &Conv2dGeometry,
        n: usize,
        x: &[T],
        w: &[T],
        b: &[T],
        dy: &[T],
        fill: T,
    ) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
        let mut sc = ConvScratch {
            slots: vec![std::array::from_fn(|_| vec![fill; 1 << 20]); 2],
        };
        let mut y = vec![fill; n * g.out_len()];
        conv_winograd::forward(isa, g, n, x, w, Some(b), &mut y, &mut sc);
        let (mut dx, mut dw, mut db) = (
            vec![fill; x.len()],
            vec![T::zero(); w.len()],
            vec![T::zero(); g.out_channels],
        );
        let (dxr, dbr) = (Some(&mut dx[..]), Some(&mut db[..]));
        conv_winograd::backward(isa, g, n, x, w, dy, dxr, &mut dw, dbr, &mut sc);
        (y, dx, dw, db)
    }

    /// Convolution → [ReLU] → 2×2 max pooling in one pass against the three run apart: the
    /// same convolution kernel, then the pooling and ReLU kernels of the layers, bit for bit
    /// forward; backward against the naive kernels fed the pooling's scatter. A channel of zero
    /// weights makes every window a tie (and its bias decides the ReLU); NaN scratch.
    #[test]
    fn pooled_pass_matches_conv_relu_pool() {
        use super::super::activation::{self, Activation};
        use super::super::pool::{self, Pool2dConfig};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let cases = [
            // (C_in, H, W, C_out, kernel, pad): LeNet's two; odd conv outputs (7×9).
            (1, 28, 28, 6, 5, 2),
            (6, 14, 14, 16, 5, 0),
            (2, 9, 11, 5, 3, 0),
        ];
        for (ci, h, w, co, k, p) in cases {
            let cfg = Conv2dConfig {
                kernel: (k, k),
                pad_begin: (p, p),
                pad_end: (p, p),
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            let pg = Pool2dGeometry::new([co, g.out_h, g.out_w], Pool2dConfig::default()).unwrap();
            assert!(conv2d_pool_fits(&g, &pg));
            for (n, relu) in [(9, true), (16, false), (21, true)] {
                let x = rand_vec(&mut rng, n * g.in_len());
                let mut wt = rand_vec(&mut rng, g.weight_len());
                let mut b = rand_vec(&mut rng, co);
                let per = g.weight_len() / co;
                wt[..per].fill(0.0);
                b[0] = if relu { -0.5 } else { 0.25 };
                if co > 1 {
                    wt[per..2 * per].fill(0.0);
                    b[1] = 0.5;
                }
                let nan = || ConvScratch {
                    slots: vec![std::array::from_fn(|_| vec![f64::NAN; 1 << 18]); 2],
                };
                // The three apart.
                let mut yc = vec![0.0; n * g.out_len()];
                let isa0 = Isa::detect();
                conv_batch::forward(
                    isa0,
                    &g,
                    None,
                    n,
                    &x,
                    &wt,
                    Some(&b),
                    &mut yc,
                    &mut [],
                    &mut nan(),
                );
                let q = n * co * pg.out_h * pg.out_w;
                let (mut want, mut arg) = (vec![0.0; q], vec![0u32; q]);
                pool::maxpool2d_forward(&pg, &yc, &mut want, &mut arg);
                if relu {
                    activation::forward_inplace(Activation::Relu, &mut want);
                }
                // In one pass: this CPU's kernels, AVX2's and the baseline build's.
                for isa in test_isas() {
                    let mut y = vec![f64::NAN; q];
                    let mut win = vec![9u8; conv2d_pool_winners_len(&g, n)];
                    let mut sc = nan();
                    let pool = Some(conv_batch::PoolAfter { relu });
                    conv_batch::forward(
                        isa,
                        &g,
                        pool,
                        n,
                        &x,
                        &wt,
                        Some(&b),
                        &mut y,
                        &mut win,
                        &mut sc,
                    );
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    if isa == Isa::detect() {
                        assert_eq!(bits(&y), bits(&want), "forward {cfg:?} n {n} relu {relu}");
                    } else {
                        let close = |a: &[f64], b: &[f64]| {
                            a.iter()
                                .zip(b)
                                .all(|(a, b)| (a - b).abs() < 1e-12 * b.abs().max(1.0))
                        };
                        assert!(
                            close(&y, &want),
                            "baseline forward {cfg:?} n {n} relu {relu}"
                        );
                    }

                    let dy = rand_vec(&mut rng, q);
                    let mut dyc = dy.clone();
                    if relu {
                        activation::backward_inplace(Activation::Relu, &want, &mut dyc);
                    }
                    let mut dyconv = vec![0.0; n * g.out_len()];
                    pool::maxpool2d_backward(&pg, &dyc, &arg, &mut dyconv);
                    let (mut dx2, mut dw2, mut db2) =
                        (vec![0.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                    conv2d_backward_naive(&g, n, &x, &wt, &dyconv, &mut dx2, &mut dw2, &mut db2);
                    let (mut dx1, mut dw1, mut db1) =
                        (vec![9.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                    let (dxr, dbr) = (Some(&mut dx1[..]), Some(&mut db1[..]));
                    conv_batch::backward_pooled(
                        isa, &g, n, &x, &wt, &dy, &win, dxr, &mut dw1, dbr, &mut sc,
                    );
                    let close = |a: &[f64], b: &[f64]| {
                        a.iter()
                            .zip(b)
                            .all(|(a, b)| (a - b).abs() < 1e-12 * b.abs().max(1.0))
                    };
                    assert!(close(&dx1, &dx2), "dx {cfg:?} n {n} relu {relu}");
                    assert!(close(&dw1, &dw2), "dw {cfg:?} n {n} relu {relu}");
                    assert!(close(&db1, &db2), "db {cfg:?} n {n} relu {relu}");
                }
            }
        }
    }

    #[test]
    fn fast_matches_naive_for_every_option() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let cases = [
            // (C_in, H, W, C_out, kernel, stride, dilation, pad_begin, pad_end, groups)
            (1, 5, 5, 1, (2, 2), (1, 1), (1, 1), (0, 0), (0, 0), 1),
            (3, 9, 7, 4, (3, 3), (2, 1), (1, 1), (1, 1), (1, 1), 1),
            (4, 8, 8, 6, (3, 2), (1, 2), (2, 1), (2, 0), (2, 1), 2),
            (4, 6, 7, 4, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 4),
            (2, 7, 6, 3, (4, 4), (1, 1), (1, 1), (1, 1), (2, 2), 1),
            (2, 10, 11, 2, (3, 5), (3, 2), (2, 2), (3, 1), (0, 4), 1),
            // A plane large enough to go in row tiles (13 of 4 rows, the last of 2).
            (64, 99, 93, 2, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1),
            // LeNet's two convolutions; a kernel as wide as the padded input; many channels.
            (1, 28, 28, 6, (5, 5), (1, 1), (1, 1), (2, 2), (2, 2), 1),
            (6, 14, 14, 16, (5, 5), (1, 1), (1, 1), (0, 0), (0, 0), 1),
            (3, 4, 9, 5, (2, 11), (1, 1), (1, 1), (0, 1), (1, 1), 1),
            (9, 5, 6, 7, (1, 1), (1, 1), (1, 1), (0, 0), (0, 0), 1),
            // Enough channels for the tap GEMMs: asymmetric padding, a 1×1 kernel.
            (16, 9, 11, 17, (3, 3), (1, 1), (1, 1), (1, 0), (2, 1), 1),
            (20, 6, 5, 16, (2, 4), (1, 1), (1, 1), (0, 2), (1, 1), 1),
            (16, 4, 6, 16, (1, 1), (1, 1), (1, 1), (0, 0), (0, 0), 1),
            // Channels across the lanes: 2 groups of 16, rows of 9 in runs of 10; at stride
            // 2 (rows of 5 in runs of 8); 2 vectors of channels (stride 1 and 2, asymmetric
            // padding, a 7×7 stride-2 stem).
            (4, 7, 9, 32, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 2),
            (4, 9, 9, 32, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 2),
            (5, 6, 9, 32, (3, 3), (1, 1), (1, 1), (1, 0), (0, 2), 1),
            (3, 12, 17, 32, (5, 5), (2, 2), (1, 1), (2, 1), (1, 2), 1),
            (3, 13, 13, 64, (7, 7), (2, 2), (1, 1), (3, 3), (3, 3), 1),
            // Forward across the lanes (2 vectors, rows of 20 in runs of 10), backward by tap GEMMs.
            (32, 12, 20, 32, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),
            // The tap GEMMs' dW by kernel rows in tiles of output rows (f64: 32 of 40, then 8).
            (16, 40, 64, 32, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),
            // 1-D Winograd along the rows at stride 2: 8 columns wide (no zero tap), rows of
            // 11 and 13 (a tile cut short, runs of 8 and 10 tiles), asymmetric and no
            // padding, 2 groups of 16, a kernel of 3 rows.
            (2, 15, 24, 32, (5, 8), (2, 2), (1, 1), (1, 0), (2, 3), 1),
            (4, 9, 27, 32, (7, 7), (2, 2), (1, 1), (0, 2), (1, 0), 2),
            (3, 20, 32, 16, (3, 7), (2, 2), (1, 1), (0, 0), (0, 0), 1),
            (1, 8, 120, 32, (7, 7), (2, 2), (1, 1), (3, 3), (3, 3), 1),
        ];
        // Every path that handles each case; the tap GEMMs one group only.
        fn stride1(g: &Conv2dGeometry) -> bool {
            g.cfg.stride == (1, 1) && g.cfg.dilation == (1, 1)
        }
        fn taps(g: &Conv2dGeometry) -> bool {
            stride1(g) && g.cfg.groups == 1
        }
        fn lanes(g: &Conv2dGeometry) -> bool {
            conv_direct::lanes_fit(g)
        }
        fn batch_forward(
            g: &Conv2dGeometry,
            n: usize,
            x: &[f64],
            w: &[f64],
            b: Option<&[f64]>,
            y: &mut [f64],
        ) {
            let sc = &mut ConvScratch::default();
            conv_batch::forward(Isa::detect(), g, None, n, x, w, b, y, &mut [], sc)
        }
        let forwards: [(&str, Forward, Handles); 7] = [
            ("batch lanes", batch_forward, conv_batch::fits),
            ("im2col", forward_im2col, |_| true),
            ("direct wide", conv_direct::forward_by_wide, stride1),
            ("direct lanes", conv_direct::forward_by_lanes, lanes),
            (
                "rows winograd",
                conv_rows_winograd::forward,
                conv_rows_winograd::fits,
            ),
            ("taps", conv_taps::forward, taps),
            ("dispatch", conv2d_forward, |_| true),
        ];
        let backwards: [(BackwardPath, Handles); 6] = [
            (BackwardPath::Batch, conv_batch::fits),
            (BackwardPath::Im2col, |_| true),
            (BackwardPath::DirectDw, stride1),
            (BackwardPath::DirectDwDx, |g| transposed(g).is_some()),
            (BackwardPath::Taps, taps),
            (BackwardPath::Dispatch, |_| true),
        ];
        // Relative to the sum of the terms' magnitudes (`mag`: the naive kernel on |x|, |w|,
        // |dy|), which bounds the error of any order of summation: a sum of thousands of terms
        // that cancel (the tiled case's dW, 48,640 terms) can end far smaller than its rounding
        // error in another order, while a term missing or added twice moves it by ~mag / n.
        let close = |a: &[f64], b: &[f64], mag: &[f64]| {
            a.iter()
                .zip(b)
                .zip(mag)
                .all(|((a, b), m)| (a - b).abs() < 1e-12 * m.max(1.0))
        };
        let abs = |v: &[f64]| v.iter().map(|v| v.abs()).collect::<Vec<f64>>();
        for (ci, h, w, co, k, s, d, pb, pe, groups) in cases {
            let cfg = Conv2dConfig {
                kernel: k,
                stride: s,
                dilation: d,
                pad_begin: pb,
                pad_end: pe,
                groups,
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            // 1, a part of a parallel task, and more than one task (conv_direct's CHUNK is 8).
            for n in [1, 5, 19] {
                let x = rand_vec(&mut rng, n * g.in_len());
                let wt = rand_vec(&mut rng, g.weight_len());
                let b = rand_vec(&mut rng, co);
                let mut want = vec![0.0; n * g.out_len()];
                conv2d_forward_naive(&g, n, &x, &wt, Some(&b), &mut want);
                let mut y_mag = vec![0.0; n * g.out_len()];
                conv2d_forward_naive(&g, n, &abs(&x), &abs(&wt), Some(&abs(&b)), &mut y_mag);
                for (path, forward, handles) in forwards {
                    if !handles(&g) {
                        continue;
                    }
                    let mut y = vec![0.0; n * g.out_len()];
                    forward(&g, n, &x, &wt, Some(&b), &mut y);
                    assert!(close(&y, &want, &y_mag), "{path} forward {cfg:?}");
                }

                let dy = rand_vec(&mut rng, n * g.out_len());
                let (mut dx2, mut dw2, mut db2) =
                    (vec![0.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                conv2d_backward_naive(&g, n, &x, &wt, &dy, &mut dx2, &mut dw2, &mut db2);
                let (mut dx_mag, mut dw_mag, mut db_mag) =
                    (vec![0.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                let (xa, wa, dya) = (abs(&x), abs(&wt), abs(&dy));
                conv2d_backward_naive(&g, n, &xa, &wa, &dya, &mut dx_mag, &mut dw_mag, &mut db_mag);
                for (path, handles) in backwards {
                    if !handles(&g) {
                        continue;
                    }
                    // dx starts as junk (it is overwritten); dw and db are added into.
                    let (mut dx1, mut dw1, mut db1) =
                        (vec![9.0; x.len()], vec![0.5; wt.len()], vec![0.5; co]);
                    // Scratch full of NaN: a path must never read what it did not write.
                    let mut sc = ConvScratch {
                        slots: vec![std::array::from_fn(|_| vec![f64::NAN; 1 << 18]); 2],
                    };
                    let (dx1r, dw1r, db1r) = (Some(&mut dx1[..]), &mut dw1[..], Some(&mut db1[..]));
                    path.run(&g, n, &x, &wt, &dy, dx1r, dw1r, db1r, &mut sc);
                    assert!(
                        close(&dx1, &dx2, &dx_mag)
                            && close(&dw1, &dw2, &dw_mag)
                            && close(&db1, &db2, &db_mag),
                        "{path:?} backward {cfg:?}"
                    );
                    // Without dx (a network's first layer) the parameter gradients are the
                    // same; the scratch of the call before is reused.
                    let (mut dw3, mut db3) = (vec![0.5; wt.len()], vec![0.5; co]);
                    path.run(&g, n, &x, &wt, &dy, None, &mut dw3, Some(&mut db3), &mut sc);
                    assert!(
                        close(&dw3, &dw2, &dw_mag) && close(&db3, &db2, &db_mag),
                        "{path:?} no-dx {cfg:?}"
                    );
                }
            }
        }
    }
}

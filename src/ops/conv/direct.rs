//! Direct (im2col-free) convolution kernels without dilation: the forward pass and, for
//! stride 1, the weight gradient. On the zero-padded input, every kernel tap is one
//! contiguous shifted window of the "wide" output plane (output rows laid out at the padded
//! width), so each tap is a vectorisable multiply-add over the whole plane (stride 1). Short
//! rows, many output channels and stride 2 instead put the output channels across the vector
//! lanes (`forward_by_lanes`).
//!
//! Wide layout, one channel: the padded input P (Hp × Wp, row-major, zero tail) and the wide
//! output Yw with Yw[r·Wp + c] = Σ_taps w[ki, kj] · P[r·Wp + c + ki·Wp + kj]; columns c ≥ W_out
//! of Yw are junk and never read back.
use super::batch::rows_to_lanes;
use super::geometry::Conv2dGeometry;
use super::parallel::{add_bias_sums, backward_chunks, bias_sums};
use super::Epilogue;
#[cfg(target_arch = "x86_64")]
use crate::ops::simd::transpose16;
use crate::ops::simd::{madd, Isa};
use crate::tensor::Float;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::any::TypeId;

/// Lanes of one accumulator: one AVX-512 register of f32, two of AVX2.
const V: usize = 16;
/// Samples per parallel task.
const CHUNK: usize = 8;

/// Output channels per register block: 6 or 4, whichever wastes fewer channels of the last
/// block (LeNet's 6 and 16 both fit exactly). 8 was tried: its 16 accumulators no longer stay
/// in registers, and LeNet's second layer ran 15× slower.
fn block_channels(opg: usize) -> usize {
    let waste = |ob: usize| opg.div_ceil(ob) * ob - opg;
    if waste(6) < waste(4) {
        6
    } else {
        4
    }
}

/// Sizes of the wide layout for one geometry.
struct Wide {
    wp: usize,
    /// Offset of each kernel tap (ki, kj) in the padded plane: ki·Wp + kj.
    taps: Vec<usize>,
    /// Wide output length O_h·Wp, rounded up to whole accumulators.
    lv: usize,
    /// Padded input buffer per channel: large enough for every tap of every accumulator.
    xlen: usize,
}

impl Wide {
    fn new(g: &Conv2dGeometry) -> Self {
        let c = &g.cfg;
        let (kh, kw) = c.kernel;
        let wp = g.in_w + c.pad_begin.1 + c.pad_end.1;
        let taps = (0..kh)
            .flat_map(|ki| (0..kw).map(move |kj| ki * wp + kj))
            .collect();
        // Whole groups of the widest unroll (2 accumulators of V lanes).
        let lv = (g.out_h * wp).div_ceil(2 * V) * 2 * V;
        // The last accumulator's farthest tap reads lv − 1 + (kh − 1)·Wp + kw − 1.
        let offmax = (kh - 1) * wp + kw - 1;
        Wide {
            wp,
            taps,
            lv,
            xlen: lv + offmax,
        }
    }

    /// Copies one sample's group (C_g, H, W) into the interior of xp (C_g, xlen); the padding
    /// and tail of xp are zero from its allocation and never written.
    fn pad_input<T: Float>(&self, g: &Conv2dGeometry, x: &[T], xp: &mut [T]) {
        self.pad_input_at(g, x, xp, self.xlen)
    }

    /// [`Wide::pad_input`] with channels `stride` elements apart.
    fn pad_input_at<T: Float>(&self, g: &Conv2dGeometry, x: &[T], xp: &mut [T], stride: usize) {
        let (h, w) = (g.in_h, g.in_w);
        let (pt, pl) = (g.cfg.pad_begin.0, g.cfg.pad_begin.1);
        for (xc, pc) in x.chunks_exact(h * w).zip(xp.chunks_exact_mut(stride)) {
            for (r, src) in xc.chunks_exact(w).enumerate() {
                pc[(r + pt) * self.wp + pl..][..w].copy_from_slice(src);
            }
        }
    }

    /// Rebuilds xp as one sample's group (C_g, H, W) padded, its channels `stride` ≥ Hp·Wp
    /// elements apart: every element written once, zeros around the input and in each
    /// channel's slack (no zero-filled allocation first, no copy of padding kept from before).
    fn pad_input_into<T: Float>(
        &self,
        g: &Conv2dGeometry,
        x: &[T],
        xp: &mut Vec<T>,
        stride: usize,
    ) {
        let (h, w) = (g.in_h, g.in_w);
        let (pt, pl) = (g.cfg.pad_begin.0, g.cfg.pad_begin.1);
        let zeros = |xp: &mut Vec<T>, k: usize| {
            if k > 0 {
                xp.resize(xp.len() + k, T::zero())
            }
        };
        xp.clear();
        for xc in x.chunks_exact(h * w) {
            let start = xp.len();
            zeros(xp, pt * self.wp);
            if self.wp == w {
                xp.extend_from_slice(xc);
            } else {
                for src in xc.chunks_exact(w) {
                    zeros(xp, pl);
                    xp.extend_from_slice(src);
                    zeros(xp, self.wp - pl - w);
                }
            }
            zeros(xp, start + stride - xp.len());
        }
    }
}

/// Forward of one sample's group: yw (⌈opg/OB⌉·OB, lv) = Σ_ci Σ_taps w · shifted xp.
/// wpk: (⌈opg/OB⌉, C_g·taps, OB), zero rows for the missing channels of the last block.
#[inline(always)]
fn forward_kernel<T: Float, const FMA: bool, const U: usize, const OB: usize>(
    taps: &[usize],
    xlen: usize,
    lv: usize,
    xp: &[T],
    wpk: &[T],
    yw: &mut [T],
) {
    let cg = xp.len() / xlen;
    let per_block = cg * taps.len() * OB;
    for (wb, yb) in wpk
        .chunks_exact(per_block)
        .zip(yw.chunks_exact_mut(OB * lv))
    {
        for v in (0..lv).step_by(V * U) {
            let mut acc = [[[T::zero(); V]; OB]; U];
            for (ci, xc) in xp.chunks_exact(xlen).enumerate() {
                for (t, &off) in taps.iter().enumerate() {
                    let xs = &xc[v + off..v + off + V * U];
                    let wv = &wb[(ci * taps.len() + t) * OB..][..OB];
                    for u in 0..U {
                        for o in 0..OB {
                            for l in 0..V {
                                acc[u][o][l] = madd::<T, FMA>(acc[u][o][l], wv[o], xs[u * V + l]);
                            }
                        }
                    }
                }
            }
            for (u, au) in acc.iter().enumerate() {
                for (o, a) in au.iter().enumerate() {
                    yb[o * lv + v + u * V..][..V].copy_from_slice(a);
                }
            }
        }
    }
}
multiversion!(forward_wide<OB> => forward_kernel(taps: &[usize], xlen: usize, lv: usize, xp: &[T], wpk: &[T], yw: &mut [T]));

/// Forward of one block of CB·V output channels of one sample with the channels across the
/// vector lanes: for each run of PB pixels of one output row, PB·CB accumulators of V
/// channels; each tap adds CB weight vectors times each pixel's input value (a broadcast, S
/// apart for stride S). No junk columns are computed, which is what the wide kernel wastes on
/// short rows (LeNet's second layer: 4 of 14), and no column matrix is built, which is what
/// im2col costs where few input channels meet a large kernel (7×7 stride 2 on RGB: 12× the
/// input).
/// xp: (C_g, xstride), padded rows Wp apart; wb: (C_g·taps, CB·V); y: (CB·V, H_out·W_out).
#[inline(always)]
fn forward_lanes_kernel<
    T: Float,
    const FMA: bool,
    const U: usize,
    const CB: usize,
    const PB: usize,
    const S: usize,
>(
    taps: &[usize],
    xstride: usize,
    (out_h, out_w, wp): (usize, usize, usize),
    xp: &[T],
    wb: &[T],
    ends: Ends<'_, T>,
    y: &mut [T],
) {
    let nt = taps.len();
    let plane = out_h * out_w;
    let Ends { bias, add, relu } = ends;
    for oh in 0..out_h {
        for ow0 in (0..out_w).step_by(PB) {
            let mut acc = [[[T::zero(); V]; CB]; PB];
            for (xc, wc) in xp.chunks_exact(xstride).zip(wb.chunks_exact(nt * CB * V)) {
                let xr = &xc[(oh * wp + ow0) * S..];
                for (&off, wt) in taps.iter().zip(wc.chunks_exact(CB * V)) {
                    let mut wv = [[T::zero(); V]; CB];
                    for (d, src) in wv.iter_mut().zip(wt.chunks_exact(V)) {
                        d.copy_from_slice(src);
                    }
                    let xs = &xr[off..off + (PB - 1) * S + 1];
                    unroll16!(PB, |p| {
                        let xv = xs[p * S];
                        for (a, w) in acc[p].iter_mut().zip(&wv) {
                            for l in 0..V {
                                a[l] = madd::<T, FMA>(a[l], xv, w[l]);
                            }
                        }
                    });
                }
            }
            // A last partial run computed PB pixels (reading into the next row or the
            // slack); only its own are stored. The sums are read out of a copy: indexing
            // `acc` itself with a run-time lane would keep it in memory, not registers.
            let np = PB.min(out_w - ow0);
            let out = acc;
            #[cfg(target_arch = "x86_64")]
            if FMA && U == 2 && PB <= V && TypeId::of::<T>() == TypeId::of::<f32>() {
                let pos = oh * out_w + ow0;
                assert!(y.len() >= CB * V * plane && pos + np <= plane && bias.len() >= CB * V);
                assert!(add.is_empty() || add.len() >= CB * V * plane);
                // SAFETY: U == 2 only in the AVX-512 build of this kernel (`multiversion!`);
                // T is f32, so the casts are identities; the asserts bound every load and store.
                unsafe {
                    let out = &*(&out as *const [[[T; V]; CB]; PB] as *const [[[f32; V]; CB]; PB]);
                    let bias = &*(bias as *const [T] as *const [f32]);
                    let add = (!add.is_empty()).then_some(add.as_ptr() as *const f32);
                    let y = y.as_mut_ptr() as *mut f32;
                    store_run_avx512::<CB, PB>(out, (bias, add, relu), y, (plane, pos, np));
                }
                continue;
            }
            for cb in 0..CB {
                for l in 0..V {
                    let oc = cb * V + l;
                    let at = oc * plane + oh * out_w + ow0;
                    for (p, a) in out.iter().enumerate().take(np) {
                        let mut v = a[cb][l] + bias[oc];
                        if !add.is_empty() {
                            v += add[at + p];
                        }
                        y[at + p] = if relu && v < T::zero() { T::zero() } else { v };
                    }
                }
            }
        }
    }
}
multiversion!(forward_lanes<CB, PB, S> => forward_lanes_kernel(taps: &[usize], xstride: usize, dims: (usize, usize, usize), xp: &[T], wb: &[T], ends: Ends<'_, T>, y: &mut [T]));

/// What [`forward_lanes_kernel`]'s stores add to a block's sums: the bias (CB·V), the values
/// of `add` at the same places (CB·V, H_out·W_out; empty for none), then a ReLU if `relu`
/// (the [`Epilogue`], while the sums are in registers).
#[derive(Clone, Copy)]
struct Ends<'a, T> {
    bias: &'a [T],
    add: &'a [T],
    relu: bool,
}

/// Stores one run of [`forward_lanes_kernel`] planar with AVX-512: per vector of channels, a
/// 16×16 transpose in registers, then one masked store of `np` pixels per channel:
/// y[oc·plane + pos + p] = out[p][oc / V][oc % V] + bias[oc] (+ add at the same place, then
/// the ReLU: [`Ends`]). Against the scalar stores (gathers, as compiled), best of 6
/// alternating runs: the 7×7 stride-2 stem 7.7 against 8.1 ms.
/// SAFETY: needs AVX-512F, PB ≤ 16, np ≤ PB, and y (and add, if given) valid for CB·V·plane
/// elements with pos + np ≤ plane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_run_avx512<const CB: usize, const PB: usize>(
    out: &[[[f32; V]; CB]; PB],
    (bias, add, relu): (&[f32], Option<*const f32>, bool),
    y: *mut f32,
    (plane, pos, np): (usize, usize, usize),
) {
    use std::arch::x86_64::*;
    let mask = ((1u32 << np) - 1) as __mmask16;
    for cb in 0..CB {
        let mut r = [_mm512_setzero_ps(); V];
        for (rp, op) in r.iter_mut().zip(out) {
            *rp = _mm512_loadu_ps(op[cb].as_ptr());
        }
        for (l, col) in transpose16(r).iter().enumerate() {
            let oc = cb * V + l;
            let mut v = _mm512_add_ps(*col, _mm512_set1_ps(bias[oc]));
            if let Some(a) = add {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.add(oc * plane + pos)));
            }
            if relu {
                // max(0, v) is v where v is NaN, as the scalar ReLU keeps it.
                v = _mm512_max_ps(_mm512_setzero_ps(), v);
            }
            _mm512_mask_storeu_ps(y.add(oc * plane + pos), mask, v);
        }
    }
}

/// Register blocking of [`forward_lanes_kernel`]: (CB channel vectors, PB pixels per run).
/// Two vectors of channels where the group has whole pairs (each broadcast feeds two
/// multiply-adds), else one; the run length wastes the fewest pixels of a row's last run
/// (ties: the longer run). CB·PB sums and CB weight vectors stay within 32 registers (the
/// broadcasts are memory operands). Four vectors lost: × 7 pixels 9.3 against 7.8 ms on the
/// 7×7 stride-2 stem, × 6 and × 4 pixels 40.6 and 49.9 against 29.4 ms on 64→64 3×3 on 56².
/// One vector of channels takes runs of 16 with AVX-512 (17 registers): half the loop and
/// bounds-check instructions per multiply-add of runs of 8, and 16 independent sums where 8
/// only just cover two units' latency.
fn lanes_block(g: &Conv2dGeometry, isa: Isa) -> (usize, usize) {
    let waste = |pb: usize| g.out_w.div_ceil(pb) * pb - g.out_w;
    let opg = g.out_channels / g.cfg.groups;
    let cb = if opg.is_multiple_of(2 * V) { 2 } else { 1 };
    let longest = if cb == 1 && isa.is_avx512() { 16 } else { 14 };
    let pb = [16, 14, 12, 10, 8]
        .into_iter()
        .filter(|&pb| pb <= longest)
        .min_by_key(|&pb| waste(pb))
        .unwrap_or(8);
    (cb, pb)
}

/// [`forward`] with the output channels across the lanes ([`forward_lanes_kernel`]); needs
/// [`lanes_fit`]. One parallel task per block of CB·V output channels of one sample (several
/// where a block is little work).
pub(crate) fn forward_by_lanes<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    epi: Epilogue<'_, T>,
    y: &mut [T],
) {
    let isa = Isa::detect();
    let c = &g.cfg;
    let s = c.stride.0;
    let groups = c.groups;
    let (cg, opg) = (g.in_channels / groups, g.out_channels / groups);
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let plane = g.out_h * g.out_w;
    // The wide layout's row pitch, tap offsets and padding (its stride-1 plane sizes unused).
    let wd = Wide::new(g);
    let (wp, taps) = (wd.wp, &wd.taps[..]);
    let hp = g.in_h + c.pad_begin.0 + c.pad_end.0;
    let nt = taps.len();
    let (cb, pb) = lanes_block(g, isa);
    let bw = cb * V;
    // A run may read (pb − 1)·s values past the last padded row.
    let xstride = hp * wp + pb * s;
    // Weights (C_out/bw, C_g·taps, bw): CB vectors of V output channels per tap.
    let mut wpk = vec![T::zero(); g.weight_len()];
    for (oc, wrow) in w.chunks_exact(cg * nt).enumerate() {
        for (r, &v) in wrow.iter().enumerate() {
            wpk[((oc / bw) * cg * nt + r) * bw + oc % bw] = v;
        }
    }
    let zeros = vec![T::zero(); g.out_channels];
    let bias = b.unwrap_or(&zeros);
    let dims = (g.out_h, g.out_w, wp);
    let blocks = g.out_channels / bw;
    let group_blocks = opg / bw;
    // Blocks per task: at least ~1 MFLOP of work each, so that LeNet-sized blocks are not
    // handed out one by one; and whole sample's groups where there are enough of those to
    // keep every thread busy, so that each input is padded once (with a task per block, the
    // 7×7 stride-2 stem at batch 8 padded every sample twice and zero-filled 16 buffers of
    // 635 KB per call).
    let min_blocks = (1usize << 20).div_ceil((2 * bw * cg * nt * plane).max(1));
    let per_task = if n * groups >= 2 * rayon::current_num_threads() {
        min_blocks.div_ceil(group_blocks) * group_blocks
    } else {
        min_blocks
    };
    // One block of channels of one sample's group, by the kernel instance for its (CB, PB,
    // stride): all are compile-time constants.
    let run_block = |xs: &[T], wb: &[T], ends: Ends<'_, T>, yb: &mut [T]| {
        macro_rules! run {
            ($cb:literal, $pb:literal, $s:literal) => {
                forward_lanes::<T, $cb, $pb, $s>(isa, taps, xstride, dims, xs, wb, ends, yb)
            };
        }
        match (cb, pb, s) {
            (1, 16, 1) => run!(1, 16, 1),
            (1, 16, _) => run!(1, 16, 2),
            (2, 14, 1) => run!(2, 14, 1),
            (2, 12, 1) => run!(2, 12, 1),
            (2, 10, 1) => run!(2, 10, 1),
            (2, _, 1) => run!(2, 8, 1),
            (2, 14, _) => run!(2, 14, 2),
            (2, 12, _) => run!(2, 12, 2),
            (2, 10, _) => run!(2, 10, 2),
            (2, _, _) => run!(2, 8, 2),
            (_, 14, 1) => run!(1, 14, 1),
            (_, 12, 1) => run!(1, 12, 1),
            (_, 10, 1) => run!(1, 10, 1),
            (_, _, 1) => run!(1, 8, 1),
            (_, 14, _) => run!(1, 14, 2),
            (_, 12, _) => run!(1, 12, 2),
            (_, 10, _) => run!(1, 10, 2),
            _ => run!(1, 8, 2),
        }
    };
    let in_group = cg * g.in_h * g.in_w;
    y[..n * out_len]
        .par_chunks_mut(bw * plane * per_task)
        .enumerate()
        .for_each_init(
            // The padded input (C_g, xstride) of one sample's group, and which one it holds:
            // consecutive blocks of a sample pad it once, and it stays in cache for the kernel
            // (padding the whole batch up front took 28 MB of traffic on 64→64 56² at batch
            // 32).
            || (Vec::with_capacity(cg * xstride), usize::MAX),
            |(xp, held), (task, yt)| {
                for (k, yb) in yt.chunks_mut(bw * plane).enumerate() {
                    let i = task * per_task + k;
                    let (si, bi) = (i / blocks, i % blocks);
                    let gi = bi * bw / opg;
                    if *held != si * groups + gi {
                        let xg = &x[si * in_len + gi * in_group..][..in_group];
                        wd.pad_input_into(g, xg, xp, xstride);
                        *held = si * groups + gi;
                    }
                    let wb = &wpk[bi * cg * nt * bw..][..cg * nt * bw];
                    let ends = Ends {
                        bias: &bias[bi * bw..][..bw],
                        add: epi
                            .add
                            .map_or(&[][..], |a| &a[i * bw * plane..][..bw * plane]),
                        relu: epi.relu,
                    };
                    run_block(xp, wb, ends, yb);
                }
            },
        );
}

/// Weight gradient of one group over S samples, as partial sums per vector lane:
/// lanes[(o, c, t)] (V lanes) += Σ_s Σ_v dyw[s, o, v..v+V] · xp[s, c, v + taps[t]..][..V].
/// xp: (S, C_g, xlen); dyw: (S, nb·OB, lv), the wide dY with zero junk columns, tail and
/// missing channels; lanes: (opg, C_g, taps, V). Each block of OB channels × TB taps keeps its
/// sums in registers over every sample's plane and adds them to the lanes once.
#[inline(always)]
fn weight_grad_kernel<T: Float, const FMA: bool, const U: usize, const OB: usize>(
    taps: &[usize],
    (cg, nb): (usize, usize),
    (xlen, lv): (usize, usize),
    xp: &[T],
    dyw: &[T],
    lanes: &mut [T],
) {
    // Taps per block: 6·3 accumulators, 3 inputs and one dY vector fit in 32 registers;
    // with 6·4 LLVM spilled the accumulators to the stack (4× slower).
    const TB: usize = 3;
    let nt = taps.len();
    let opg = lanes.len() / (cg * nt * V);
    let samples = xp.len() / (cg * xlen);
    for ob in 0..nb {
        for c in 0..cg {
            for t0 in (0..nt).step_by(TB) {
                // A last partial block repeats its last tap; the extra sums are dropped.
                let offs: [usize; TB] = std::array::from_fn(|t| taps[(t0 + t).min(nt - 1)]);
                let mut acc = [[[T::zero(); V]; TB]; OB];
                for s in 0..samples {
                    let xc = &xp[(s * cg + c) * xlen..][..xlen];
                    let dyb = &dyw[(s * nb + ob) * OB * lv..][..OB * lv];
                    for v in (0..lv).step_by(V) {
                        // Loaded into arrays of known length: the lane loops below then
                        // compile to vector FMAs without bounds checks.
                        let xs: [[T; V]; TB] = std::array::from_fn(|t| {
                            let mut a = [T::zero(); V];
                            a.copy_from_slice(&xc[v + offs[t]..][..V]);
                            a
                        });
                        for (o, ao) in acc.iter_mut().enumerate() {
                            let d = &dyb[o * lv + v..][..V];
                            for (at, xt) in ao.iter_mut().zip(&xs) {
                                for l in 0..V {
                                    at[l] = madd::<T, FMA>(at[l], d[l], xt[l]);
                                }
                            }
                        }
                    }
                }
                // Read out of a copy: run-time indexing of `acc` itself would keep it in
                // memory instead of registers.
                let out = acc;
                for (o, ao) in out.iter().enumerate() {
                    let oc = ob * OB + o;
                    if oc >= opg {
                        break;
                    }
                    for (t, at) in ao.iter().take(TB.min(nt - t0)).enumerate() {
                        let dst = &mut lanes[((oc * cg + c) * nt + t0 + t) * V..][..V];
                        dst.iter_mut().zip(at).for_each(|(d, &a)| *d += a);
                    }
                }
            }
        }
    }
}
multiversion!(weight_grad_wide<OB> => weight_grad_kernel(taps: &[usize], blocks: (usize, usize), sizes: (usize, usize), xp: &[T], dyw: &[T], lanes: &mut [T]));

/// Weight gradient of one sample with the output channels across the lanes (the dual of
/// [`forward_lanes_kernel`]), for one block of RB runs of KW adjacent (channel, tap) pairs (a
/// kernel row's taps, or single pairs with KW = 1) and CB·V output channels:
/// out[q·KW + j][oc] += Σ_(oh, ow) xp[rows[q] + S·(oh·Wp + ow) + j] · dyt[oh·W_out + ow][oc]
/// (stride S), over output rows oh0..oh1; each pixel loads CB vectors of dY and broadcasts
/// RB·KW input values. One base address per run: with 12 single pairs, five input addresses
/// and both dY addresses were reloaded from the stack for every pixel. The first `valid` runs
/// are stored (a last block is padded with offset 0).
/// xp: (C_in, Hp·Wp) padded, rows Wp apart; dyt: dY by vectors of channels, (C_out/V,
/// H_out·W_out, V), from this block's first vector on; out: (pairs, C_out) from this block's
/// first pair and channel, C_out apart.
#[inline(always)]
fn weight_grad_lanes_kernel<
    T: Float,
    const FMA: bool,
    const U: usize,
    const CB: usize,
    const RB: usize,
    const KW: usize,
    const S: usize,
>(
    rows: &[usize],
    (valid, cout): (usize, usize),
    (out_h, out_w, wp): (usize, usize, usize),
    (oh0, oh1): (usize, usize),
    xp: &[T],
    dyt: &[T],
    out: &mut [T],
) {
    let mut acc = [[[[T::zero(); V]; CB]; KW]; RB];
    let plane = out_h * out_w;
    let run = S * (out_w - 1) + KW;
    for oh in oh0..oh1 {
        let xr: [&[T]; RB] = std::array::from_fn(|q| &xp[rows[q] + S * oh * wp..][..run]);
        let drow = &dyt[oh * out_w * V..];
        for ow in 0..out_w {
            let mut dv = [[T::zero(); V]; CB];
            for (cb, d) in dv.iter_mut().enumerate() {
                d.copy_from_slice(&drow[(cb * plane + ow) * V..][..V]);
            }
            unroll16!(RB, |q| {
                let xs = &xr[q][S * ow..][..KW];
                unroll16!(KW, |j| {
                    let xv = xs[j];
                    for (a, d) in acc[q][j].iter_mut().zip(&dv) {
                        for l in 0..V {
                            a[l] = madd::<T, FMA>(a[l], xv, d[l]);
                        }
                    }
                });
            });
        }
    }
    let res = acc;
    for (q, rq) in res.iter().enumerate().take(valid) {
        for (j, rj) in rq.iter().enumerate() {
            for (cb, rc) in rj.iter().enumerate() {
                let o = &mut out[(q * KW + j) * cout + cb * V..][..V];
                for l in 0..V {
                    o[l] += rc[l];
                }
            }
        }
    }
}
multiversion!(weight_grad_block<CB, RB, KW, S> => weight_grad_lanes_kernel(rows: &[usize], sizes: (usize, usize), dims: (usize, usize, usize), oh: (usize, usize), xp: &[T], dyt: &[T], out: &mut [T]));

/// (channel, tap) pairs per block of [`weight_grad_lanes`] where they are not taken by kernel
/// rows.
const GRAD_PAIRS: usize = 12;

/// Bytes of dY per tile of output rows of [`weight_grad_lanes`]: every block of pairs reads
/// the tile again, so it should stay in the L2 cache (with the input rows it needs). Over a
/// whole plane, the 224² stem's dY is 3.2 MB a sample and came from the L3 cache.
const GRAD_TILE_BYTES: usize = 512 << 10;

/// dW of one sample, added into out (C_in·taps, C_out) (pair-major: transpose it once per
/// chunk). offs: every (channel, tap) pair's offset c·Hp·Wp + ki·Wp + kj in xp (C_in, Hp·Wp),
/// in that order, kw taps per kernel row; dyt: (C_out/V, H_out·W_out, V) ([`dy_to_lanes`]);
/// stride 1 or 2 both ways. Needs [`weight_grad_lanes_fits`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_grad_lanes<T: Float>(
    stride: usize,
    kw: usize,
    offs: &[usize],
    dims: (usize, usize, usize),
    xp: &[T],
    dyt: &[T],
    cout: usize,
    out: &mut [T],
) {
    let isa = Isa::detect();
    let cb = if cout.is_multiple_of(2 * V) { 2 } else { 1 };
    // Blocks of whole kernel rows where there is a blocking for this width and stride (the
    // 224² stem's 7 taps at stride 2: 2 rows, 28 sums; 3×3 at stride 1: 4 rows, 24 sums),
    // else of GRAD_PAIRS single pairs.
    let (rb, run) = match (cb, kw, stride) {
        (2, 7, 2) => (2, 7),
        (2, 3, 1) => (4, 3),
        _ => (GRAD_PAIRS, 1),
    };
    // Runs start every `run` pairs: a kernel row's taps are adjacent in offs.
    let runs = offs.len() / run;
    let (out_h, out_w, _) = dims;
    let tile = (GRAD_TILE_BYTES / (cout * out_w * std::mem::size_of::<T>()).max(1)).max(1);
    for oh0 in (0..out_h).step_by(tile) {
        let rows = (oh0, (oh0 + tile).min(out_h));
        for oc0 in (0..cout).step_by(cb * V) {
            for q0 in (0..runs).step_by(rb) {
                let valid = rb.min(runs - q0);
                let block: [usize; GRAD_PAIRS] =
                    std::array::from_fn(|q| if q < valid { offs[(q0 + q) * run] } else { 0 });
                let o = &mut out[q0 * run * cout + oc0..];
                let (d, sz) = (&dyt[oc0 * out_h * out_w..], (valid, cout));
                let (b, x) = (&block[..], xp);
                match (cb, run, stride) {
                    (2, 7, _) => {
                        weight_grad_block::<T, 2, 2, 7, 2>(isa, b, sz, dims, rows, x, d, o)
                    }
                    (2, 3, _) => {
                        weight_grad_block::<T, 2, 4, 3, 1>(isa, b, sz, dims, rows, x, d, o)
                    }
                    (2, _, 1) => {
                        weight_grad_block::<T, 2, GRAD_PAIRS, 1, 1>(isa, b, sz, dims, rows, x, d, o)
                    }
                    (_, _, 1) => {
                        weight_grad_block::<T, 1, GRAD_PAIRS, 1, 1>(isa, b, sz, dims, rows, x, d, o)
                    }
                    (2, _, _) => {
                        weight_grad_block::<T, 2, GRAD_PAIRS, 1, 2>(isa, b, sz, dims, rows, x, d, o)
                    }
                    _ => {
                        weight_grad_block::<T, 1, GRAD_PAIRS, 1, 2>(isa, b, sz, dims, rows, x, d, o)
                    }
                }
            }
        }
    }
}

/// Samples per chunk of [`weight_grad_strided`]: a constant, so that the partial sums, added
/// in chunk order, do not depend on the thread count.
const STRIDED_GRAD_CHUNK: usize = 2;

/// dW (C_out, C_in, kh, kw) and db (C_out) added into, for a stride-2 convolution, by the
/// lanes kernel over each sample's padded input and its dY by vectors of channels: no column
/// matrix (the 224² stem's is 12× its input). Needs [`applies_weight_grad_strided`].
pub(crate) fn weight_grad_strided<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: Option<&mut [T]>,
    scratch: &mut super::ConvScratch<T>,
) {
    let c = &g.cfg;
    let (cin, cout) = (g.in_channels, g.out_channels);
    let (in_len, out_len, plane) = (g.in_len(), g.out_len(), g.out_h * g.out_w);
    let wd = Wide::new(g);
    let hp = g.in_h + c.pad_begin.0 + c.pad_end.0;
    // The farthest read, (kh − 1 + 2·(H_out − 1))·Wp + kw − 1 + 2·(W_out − 1), is inside the
    // padded plane: the output size is what fits in it.
    let in_plane = hp * wd.wp;
    let pair_offs: Vec<usize> = (0..cin)
        .flat_map(|ci| wd.taps.iter().map(move |&off| ci * in_plane + off))
        .collect();
    let taps = wd.taps.len();
    let dims = (g.out_h, g.out_w, wd.wp);
    // Per thread: xp (C_in, Hp, Wp) and dY by vectors of channels (C_out/V, H_out·W_out, V).
    let sizes = [cin * in_plane, plane * cout, 0];
    let want_db = db.is_some();
    let work = |bufs: &mut [Vec<T>; 3], s0: usize, s: usize, _: Option<&mut [T]>| {
        let [xp, dyt, _] = bufs;
        let mut pt = vec![T::zero(); g.weight_len()]; // (C_in·taps, C_out)
        let mut pdb = bias_sums(cout, want_db);
        // Zero borders once per chunk: the samples overwrite only the interior.
        xp[..cin * in_plane].fill(T::zero());
        for si in s0..s0 + s {
            wd.pad_input_at(g, &x[si * in_len..][..in_len], xp, in_plane);
            let dys = &dy[si * out_len..][..out_len];
            add_bias_sums(&mut pdb, dys, plane);
            dy_to_lanes(dys, plane, dyt);
            weight_grad_lanes(2, c.kernel.1, &pair_offs, dims, xp, dyt, cout, &mut pt);
        }
        let mut pdw = vec![T::zero(); g.weight_len()]; // (C_out, C_in, kh, kw)
        for (pair, row) in pt.chunks_exact(cout).enumerate() {
            let (ci, t) = (pair / taps, pair % taps);
            for (oc, &v) in row.iter().enumerate() {
                pdw[(oc * cin + ci) * taps + t] = v;
            }
        }
        (pdw, pdb.into_iter().map(T::of).collect())
    };
    backward_chunks(
        n,
        STRIDED_GRAD_CHUNK,
        in_len,
        None,
        dw,
        db,
        scratch,
        sizes,
        work,
    );
}

/// One sample's dY (C_out, H_out·W_out) by vectors of channels into dyt (C_out/V,
/// H_out·W_out, V), by the batch-lanes kernels' register transposes; C_out a multiple of V.
pub(crate) fn dy_to_lanes<T: Float>(dy: &[T], plane: usize, dyt: &mut [T]) {
    let isa = Isa::detect();
    for (src, dst) in dy
        .chunks_exact(V * plane)
        .zip(dyt.chunks_exact_mut(V * plane))
    {
        rows_to_lanes(isa, src, plane, V, plane, dst);
    }
}

/// Output channels per register block of [`weight_grad`] with this instruction set: 3 taps ×
/// OB channels of V lanes are 18 or 12 registers of 32 with AVX-512; with 16 registers of 8
/// lanes (AVX2), one channel (6 registers) leaves room for the operands.
fn grad_block(isa: Isa, opg: usize) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => block_channels(opg),
        _ => 1,
    }
}

/// Elements of scratch [`weight_grad`] needs for up to `samples` samples.
pub(crate) fn weight_grad_scratch(g: &Conv2dGeometry, samples: usize) -> usize {
    let wd = Wide::new(g);
    let (cg, opg) = (g.in_channels / g.cfg.groups, g.out_channels / g.cfg.groups);
    let ob = grad_block(Isa::detect(), opg);
    samples * (cg * wd.xlen + opg.div_ceil(ob) * ob * wd.lv) + g.weight_len() * V
}

/// dW (C_out, C_g, kh, kw) = Σ over the samples of `x` (S, C_in, H, W) and `dy` (S, C_out,
/// H_out, W_out) without a column matrix; written to `dw`, not added. `scratch` holds at least
/// [`weight_grad_scratch`] elements for S samples.
pub(crate) fn weight_grad<T: Float>(
    g: &Conv2dGeometry,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    scratch: &mut [T],
) {
    let wd = Wide::new(g);
    let isa = Isa::detect();
    let groups = g.cfg.groups;
    let (cg, opg) = (g.in_channels / groups, g.out_channels / groups);
    let (in_len, out_len, plane) = (g.in_len(), g.out_len(), g.out_h * g.out_w);
    let samples = x.len() / in_len;
    let ob = grad_block(isa, opg);
    let nb = opg.div_ceil(ob);
    let (xp, rest) = scratch.split_at_mut(samples * cg * wd.xlen); // (S, C_g, xlen)
    let (dyw, rest) = rest.split_at_mut(samples * nb * ob * wd.lv); // (S, nb·ob, lv)
    let lanes = &mut rest[..g.weight_len() * V]; // (groups, opg, C_g, taps, V)
    lanes.fill(T::zero());
    let per_group = opg * cg * wd.taps.len() * V;
    for gi in 0..groups {
        // Padding, junk columns, tails and missing channels are zero: fill, then copy the
        // interiors.
        xp.fill(T::zero());
        dyw.fill(T::zero());
        for (s, (xs, dys)) in x
            .chunks_exact(in_len)
            .zip(dy.chunks_exact(out_len))
            .enumerate()
        {
            let xg = &xs[gi * cg * g.in_h * g.in_w..][..cg * g.in_h * g.in_w];
            wd.pad_input(g, xg, &mut xp[s * cg * wd.xlen..][..cg * wd.xlen]);
            for oc in 0..opg {
                let src = &dys[(gi * opg + oc) * plane..][..plane];
                let dst = &mut dyw[(s * nb * ob + oc) * wd.lv..][..wd.lv];
                for (r, row) in src.chunks_exact(g.out_w).enumerate() {
                    dst[r * wd.wp..][..g.out_w].copy_from_slice(row);
                }
            }
        }
        let lg = &mut lanes[gi * per_group..][..per_group];
        let (taps, sizes) = (&wd.taps[..], (wd.xlen, wd.lv));
        match ob {
            6 => weight_grad_wide::<T, 6>(isa, taps, (cg, nb), sizes, xp, dyw, lg),
            4 => weight_grad_wide::<T, 4>(isa, taps, (cg, nb), sizes, xp, dyw, lg),
            _ => weight_grad_wide::<T, 1>(isa, taps, (cg, nb), sizes, xp, dyw, lg),
        }
    }
    for (d, l) in dw.iter_mut().zip(lanes.chunks_exact(V)) {
        *d = l.iter().fold(T::zero(), |a, &b| a + b);
    }
}

/// Weights (C_out, C_g, kh, kw) regrouped per group into blocks of `ob` output channels:
/// (groups, ⌈opg/ob⌉, C_g·taps, ob), zeros for the missing channels of a last block.
fn pack_forward<T: Float>(g: &Conv2dGeometry, w: &[T], ob: usize) -> Vec<T> {
    let groups = g.cfg.groups;
    let (opg, row) = (g.out_channels / groups, g.k_per_group());
    let nb = opg.div_ceil(ob);
    let mut p = vec![T::zero(); groups * nb * row * ob];
    for gi in 0..groups {
        for oc in 0..opg {
            let (blk, o) = (oc / ob, oc % ob);
            for r in 0..row {
                p[((gi * nb + blk) * row + r) * ob + o] = w[(gi * opg + oc) * row + r];
            }
        }
    }
    p
}

/// [`forward`] on the wide plane ([`forward_kernel`]).
pub(crate) fn forward_by_wide<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    let isa = Isa::detect();
    let wd = Wide::new(g);
    let groups = g.cfg.groups;
    let (cg, opg) = (g.in_channels / groups, g.out_channels / groups);
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let (in_group, plane) = (in_len / groups, g.out_h * g.out_w);
    let ob = block_channels(opg);
    let nb = opg.div_ceil(ob);
    let wpk = pack_forward(g, w, ob); // (groups, ⌈opg/ob⌉, C_g·taps, ob)
    let per_group = wpk.len() / groups;
    // Up to CHUNK samples per task, fewer where that leaves a thread idle (a small batch of
    // large images).
    let chunk = n.div_ceil(4 * rayon::current_num_threads()).clamp(1, CHUNK);
    y[..n * out_len]
        .par_chunks_mut(chunk * out_len)
        .zip(x[..n * in_len].par_chunks(chunk * in_len))
        .for_each_init(
            || {
                (
                    vec![T::zero(); cg * wd.xlen],    // padded input (C_g, xlen)
                    vec![T::zero(); nb * ob * wd.lv], // wide output (⌈opg/ob⌉·ob, lv)
                )
            },
            |(xp, yw), (ys, xs)| {
                for (xs1, ys1) in xs.chunks_exact(in_len).zip(ys.chunks_exact_mut(out_len)) {
                    for gi in 0..groups {
                        wd.pad_input(g, &xs1[gi * in_group..(gi + 1) * in_group], xp);
                        let wg = &wpk[gi * per_group..(gi + 1) * per_group];
                        let (taps, xlen, lv) = (&wd.taps[..], wd.xlen, wd.lv);
                        match ob {
                            6 => forward_wide::<T, 6>(isa, taps, xlen, lv, xp, wg, yw),
                            _ => forward_wide::<T, 4>(isa, taps, xlen, lv, xp, wg, yw),
                        }
                        for oc in 0..opg {
                            let bias = b.map_or(T::zero(), |b| b[gi * opg + oc]);
                            let dst = &mut ys1[(gi * opg + oc) * plane..][..plane];
                            for (r, d) in dst.chunks_exact_mut(g.out_w).enumerate() {
                                let src = &yw[oc * wd.lv + r * wd.wp..][..g.out_w];
                                d.iter_mut().zip(src).for_each(|(d, &s)| *d = s + bias);
                            }
                        }
                    }
                }
            },
        );
}

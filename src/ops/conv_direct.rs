//! Direct (im2col-free) convolution kernels for stride 1 without dilation (LeNet's layers):
//! the forward pass and the weight gradient. On the zero-padded input, every kernel tap is one
//! contiguous shifted window of the "wide" output plane (output rows laid out at the padded
//! width), so each tap is a vectorisable multiply-add over the whole plane. Short rows instead
//! put the output channels across the vector lanes (`forward_by_lanes`).
//!
//! Wide layout, one channel: the padded input P (Hp × Wp, row-major, zero tail) and the wide
//! output Yw with Yw[r·Wp + c] = Σ_taps w[ki, kj] · P[r·Wp + c + ki·Wp + kj]; columns c ≥ W_out
//! of Yw are junk and never read back.
use super::conv::Conv2dGeometry;
use crate::tensor::Float;
use rayon::prelude::*;

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

/// Whether the direct forward kernel handles this convolution. Where it does it beat im2col +
/// GEMM at every shape measured (best of 3 alternating runs, bench/README.md): LeNet's first
/// layer 0.19 against 0.33 ms, its second 0.29 against 0.60 ms, 32→64 3×3 on 14² at batch 64
/// 2.7 against 3.1 ms; the many-channel shapes where the tap GEMMs win are sent there first.
pub(crate) fn applies(g: &Conv2dGeometry) -> bool {
    g.cfg.stride == (1, 1) && g.cfg.dilation == (1, 1)
}

/// Instruction set the kernels were compiled for, picked at run time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Baseline,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Baseline
    }
}

/// Compiles `$kernel::<T, FMA, U, OB>` once per instruction set and picks one by `Isa` at run
/// time. U is how many accumulators of V lanes a kernel keeps per channel: 2 where 32 vector
/// registers hold 4·2 independent sums (enough to hide the FMA latency), 1 with 16 registers.
macro_rules! multiversion {
    ($name:ident => $kernel:ident($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<T: Float, const OB: usize>(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512<T: Float, const OB: usize>($($arg: $ty),*) {
                $kernel::<T, true, 2, OB>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2<T: Float, const OB: usize>($($arg: $ty),*) {
                $kernel::<T, true, 1, OB>($($arg),*)
            }
            match isa {
                // SAFETY: Isa::detect found these features on this CPU.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::<T, OB>($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => unsafe { avx2::<T, OB>($($arg),*) },
                Isa::Baseline => $kernel::<T, false, 1, OB>($($arg),*),
            }
        }
    };
}

/// acc + a·b, fused where the CPU has FMA (a separate multiply and add otherwise: the
/// library call behind an unfused `mul_add` would cost more than it saves).
#[inline(always)]
fn madd<T: Float, const FMA: bool>(acc: T, a: T, b: T) -> T {
    if FMA {
        a.mul_add(b, acc)
    } else {
        acc + a * b
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
multiversion!(forward_wide => forward_kernel(taps: &[usize], xlen: usize, lv: usize, xp: &[T], wpk: &[T], yw: &mut [T]));

/// Forward of one sample's group with the output channels across the vector lanes: for each
/// run of PB pixels of one output row, PB accumulators of V channels; each tap adds one weight
/// vector times each pixel's input value (a broadcast). No junk columns are computed, which
/// is what the wide kernel wastes on short rows (LeNet's second layer: 4 of 14).
/// xp: (C_g, xstride), padded rows Wp apart; wpk: (opg/V, C_g·taps, V); bias: (opg);
/// y: (opg, H_out·W_out).
#[inline(always)]
fn forward_lanes_kernel<T: Float, const FMA: bool, const U: usize, const PB: usize>(
    taps: &[usize],
    xstride: usize,
    (out_h, out_w, wp): (usize, usize, usize),
    xp: &[T],
    wpk: &[T],
    bias: &[T],
    y: &mut [T],
) {
    let nt = taps.len();
    let cg = xp.len() / xstride;
    let plane = out_h * out_w;
    for (cb, wb) in wpk.chunks_exact(cg * nt * V).enumerate() {
        for oh in 0..out_h {
            for ow0 in (0..out_w).step_by(PB) {
                let mut acc = [[T::zero(); V]; PB];
                for (c, wc) in wb.chunks_exact(nt * V).enumerate() {
                    let xc = &xp[c * xstride + oh * wp + ow0..];
                    for (&off, wt) in taps.iter().zip(wc.chunks_exact(V)) {
                        let mut wv = [T::zero(); V];
                        wv.copy_from_slice(wt);
                        let xs = &xc[off..off + PB];
                        for (a, &xv) in acc.iter_mut().zip(xs) {
                            for l in 0..V {
                                a[l] = madd::<T, FMA>(a[l], xv, wv[l]);
                            }
                        }
                    }
                }
                // A last partial run computed PB pixels (reading into the next row or the
                // slack); only its own are stored. The sums are read out of a copy: indexing
                // `acc` itself with a run-time lane would keep it in memory, not registers.
                let np = PB.min(out_w - ow0);
                let out = acc;
                for l in 0..V {
                    let oc = cb * V + l;
                    let dst = &mut y[oc * plane + oh * out_w + ow0..][..np];
                    for (d, a) in dst.iter_mut().zip(&out) {
                        *d = a[l] + bias[oc];
                    }
                }
            }
        }
    }
}
multiversion!(forward_lanes => forward_lanes_kernel(taps: &[usize], xstride: usize, dims: (usize, usize, usize), xp: &[T], wpk: &[T], bias: &[T], y: &mut [T]));

/// Pixels per run of [`forward_lanes_kernel`]: the candidate that wastes the fewest pixels of a
/// row's last run (ties: the longer run). PB accumulators and a weight vector fit in 32
/// registers.
fn lanes_run(out_w: usize) -> usize {
    let waste = |pb: usize| out_w.div_ceil(pb) * pb - out_w;
    [14, 12, 10, 8]
        .into_iter()
        .min_by_key(|&pb| waste(pb))
        .unwrap_or(8)
}

/// Whether [`forward_by_lanes`] can run this convolution: whole vectors of output channels
/// per group.
pub(crate) fn lanes_fit(g: &Conv2dGeometry) -> bool {
    (g.out_channels / g.cfg.groups).is_multiple_of(V)
}

/// Whether the forward pass puts output channels across the lanes: with AVX-512 (32
/// registers), whole vectors of channels per group, and rows short enough that the wide plane
/// wastes over a fifth of its columns.
fn lanes_apply(g: &Conv2dGeometry, isa: Isa) -> bool {
    let wp = g.in_w + g.cfg.pad_begin.1 + g.cfg.pad_end.1;
    #[cfg(target_arch = "x86_64")]
    let wide_isa = isa == Isa::Avx512;
    #[cfg(not(target_arch = "x86_64"))]
    let wide_isa = {
        let _ = isa;
        false
    };
    wide_isa && lanes_fit(g) && 5 * (wp - g.out_w) > wp
}

/// [`forward`] with the output channels across the lanes ([`forward_lanes_kernel`]); needs
/// C_out/groups to be a multiple of V.
pub(crate) fn forward_by_lanes<T: Float>(
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
    let (in_group, plane, nt) = (in_len / groups, g.out_h * g.out_w, wd.taps.len());
    let hp = g.in_h + g.cfg.pad_begin.0 + g.cfg.pad_end.0;
    let pb = lanes_run(g.out_w);
    // A run may read pb − 1 values past the last padded row.
    let xstride = hp * wd.wp + pb;
    // Weights (groups, opg/V, C_g·taps, V): one vector of V output channels per tap.
    let mut wpk = vec![T::zero(); g.weight_len()];
    for (oc_all, wrow) in w.chunks_exact(cg * nt).enumerate() {
        let (gi, oc) = (oc_all / opg, oc_all % opg);
        for (r, &v) in wrow.iter().enumerate() {
            wpk[(((gi * opg / V + oc / V) * cg * nt) + r) * V + oc % V] = v;
        }
    }
    let zeros = vec![T::zero(); g.out_channels];
    let bias = b.unwrap_or(&zeros);
    let dims = (g.out_h, g.out_w, wd.wp);
    y[..n * out_len]
        .par_chunks_mut(CHUNK * out_len)
        .zip(x[..n * in_len].par_chunks(CHUNK * in_len))
        .for_each_init(
            || vec![T::zero(); cg * xstride], // padded input (C_g, xstride), zero slack
            |xp, (ys, xs)| {
                for (xs1, ys1) in xs.chunks_exact(in_len).zip(ys.chunks_exact_mut(out_len)) {
                    for gi in 0..groups {
                        let xg = &xs1[gi * in_group..(gi + 1) * in_group];
                        wd.pad_input_at(g, xg, xp, xstride);
                        let wg = &wpk[gi * opg * cg * nt..][..opg * cg * nt];
                        let bg = &bias[gi * opg..][..opg];
                        let yg = &mut ys1[gi * opg * plane..][..opg * plane];
                        let taps = &wd.taps[..];
                        match pb {
                            14 => forward_lanes::<T, 14>(isa, taps, xstride, dims, xp, wg, bg, yg),
                            12 => forward_lanes::<T, 12>(isa, taps, xstride, dims, xp, wg, bg, yg),
                            10 => forward_lanes::<T, 10>(isa, taps, xstride, dims, xp, wg, bg, yg),
                            _ => forward_lanes::<T, 8>(isa, taps, xstride, dims, xp, wg, bg, yg),
                        }
                    }
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
multiversion!(weight_grad_wide => weight_grad_kernel(taps: &[usize], blocks: (usize, usize), sizes: (usize, usize), xp: &[T], dyw: &[T], lanes: &mut [T]));

/// Fewest wide output columns per sample for [`weight_grad`]: below, the per-block overhead
/// outweighs the multiply-adds.
const MIN_GRAD_COLS: usize = 128;

/// Whether [`weight_grad`] handles this convolution's dW.
pub(crate) fn applies_weight_grad(g: &Conv2dGeometry) -> bool {
    applies(g) && g.out_h * (g.in_w + g.cfg.pad_begin.1 + g.cfg.pad_end.1) >= MIN_GRAD_COLS
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

/// y = conv(x, w) + b; the layouts of [`super::conv::conv2d_forward`].
pub(crate) fn forward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    if lanes_apply(g, Isa::detect()) {
        forward_by_lanes(g, n, x, w, b, y)
    } else {
        forward_by_wide(g, n, x, w, b, y)
    }
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
    y[..n * out_len]
        .par_chunks_mut(CHUNK * out_len)
        .zip(x[..n * in_len].par_chunks(CHUNK * in_len))
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

//! Direct (im2col-free) forward convolution for stride 1 without dilation (LeNet's layers): on the zero-padded input, every kernel tap is one contiguous shifted
//! window of the "wide" output plane (output rows laid out at the padded width), so each tap is
//! a vectorisable multiply-add over the whole plane.
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
        let (h, w) = (g.in_h, g.in_w);
        let (pt, pl) = (g.cfg.pad_begin.0, g.cfg.pad_begin.1);
        for (xc, pc) in x.chunks_exact(h * w).zip(xp.chunks_exact_mut(self.xlen)) {
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
    let wd = Wide::new(g);
    let isa = Isa::detect();
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

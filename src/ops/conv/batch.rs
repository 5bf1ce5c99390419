//! Convolution with the samples of a batch across the vector lanes, for layers whose channels
//! and planes are too small to fill the lanes any other way (LeNet's): groups of L samples are
//! packed (C, Hp, Wp, L), and every multiply-add is a whole vector, with no junk columns, no
//! masks and no column matrix. Stride 1 without dilation or groups; the input gradient is the
//! same correlation, of the flipped kernels over the padded dY.
use super::geometry::Conv2dGeometry;
use super::parallel::{add_bias_sums, backward_chunks, bias_sums, forward_chunks, ConvScratch};
use crate::ops::pool::second_wins;
#[cfg(target_arch = "x86_64")]
use crate::ops::simd::{first_lanes, transpose16, transpose8};
use crate::ops::simd::{madd, Isa};
use crate::tensor::Float;

/// Samples per group: one AVX-512 register of f32, two AVX2 ones.
const L: usize = 16;

/// One packed group: channels of an image (h × w) at (top, left) inside an (hp × wp) plane of
/// zeros, each element a vector of L samples: (c, hp, wp, L).
#[derive(Clone, Copy, Debug)]
struct Plane {
    c: usize,
    h: usize,
    w: usize,
    hp: usize,
    wp: usize,
    top: usize,
    left: usize,
}

impl Plane {
    /// The forward pass's input: x (C_in, H, W) inside its padding.
    fn input(g: &Conv2dGeometry) -> Self {
        let c = &g.cfg;
        Plane {
            c: g.in_channels,
            h: g.in_h,
            w: g.in_w,
            hp: g.in_h + c.pad_begin.0 + c.pad_end.0,
            wp: g.in_w + c.pad_begin.1 + c.pad_end.1,
            top: c.pad_begin.0,
            left: c.pad_begin.1,
        }
    }

    /// The input gradient's correlation input: dY (C_out, H_out, W_out) padded so that output
    /// row r of the correlation reads rows r..r + kh (H + kh − 1 rows in all).
    fn output_grad(g: &Conv2dGeometry) -> Self {
        let c = &g.cfg;
        let (kh, kw) = c.kernel;
        Plane {
            c: g.out_channels,
            h: g.out_h,
            w: g.out_w,
            hp: g.in_h + kh - 1,
            wp: g.in_w + kw - 1,
            top: kh - 1 - c.pad_begin.0,
            left: kw - 1 - c.pad_begin.1,
        }
    }

    /// Elements of the packed group, with room for a kernel's reads past the last pixel (a
    /// run of pixels may end up to a block's length past the last row).
    fn len(&self) -> usize {
        (self.c * self.hp * self.wp + self.wp + 16) * L
    }

    /// Packs the `ns` ≤ L samples x (ns, c, h, w) into xt (`len` long): the image rows by
    /// transposes (lanes ns.. zero), and zeros only around them.
    fn pack<T: Float>(&self, isa: Isa, x: &[T], ns: usize, xt: &mut [T]) {
        self.zero_around(xt, self.h, self.w);
        let (img, all) = (self.h * self.w, self.c * self.h * self.w);
        for c in 0..self.c {
            for r in 0..self.h {
                let at = (c * self.hp + self.top + r) * self.wp + self.left;
                let src = &x[c * img + r * self.w..];
                rows_to_lanes(
                    isa,
                    src,
                    all,
                    ns,
                    self.w,
                    &mut xt[at * L..(at + self.w) * L],
                );
            }
        }
    }

    /// Zeros xt (`len` long) except the first h rows × w columns of each channel's image,
    /// which the caller writes.
    fn zero_around<T: Float>(&self, xt: &mut [T], h: usize, w: usize) {
        let (right, bottom) = (self.wp - self.left - w, self.hp - self.top - h);
        let zero = |v: &mut [T]| v.fill(T::zero());
        for ch in xt[..self.c * self.hp * self.wp * L].chunks_exact_mut(self.hp * self.wp * L) {
            zero(&mut ch[..self.top * self.wp * L]);
            zero(&mut ch[(self.top + h) * self.wp * L..][..bottom * self.wp * L]);
            for r in 0..h {
                let row = &mut ch[(self.top + r) * self.wp * L..][..self.wp * L];
                zero(&mut row[..self.left * L]);
                zero(&mut row[(self.left + w) * L..][..right * L]);
            }
        }
        zero(&mut xt[self.c * self.hp * self.wp * L..self.len()]);
    }
}

/// dst[p·L + s] = src[s·stride + p] for p < np and s < ns ≤ L, and 0 for s ≥ ns: ns rows of
/// np values into np vectors of lanes.
pub(crate) fn rows_to_lanes<T: Float>(
    isa: Isa,
    src: &[T],
    stride: usize,
    ns: usize,
    np: usize,
    dst: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && isa != Isa::Baseline {
        assert!(ns <= L && dst.len() >= np * L && (ns == 0 || src.len() >= (ns - 1) * stride + np));
        // SAFETY: `isa` was detected on this CPU (AVX-512F or AVX2); T is f32; the assert
        // bounds every access.
        unsafe {
            let (src, dst) = (src.as_ptr() as *const f32, dst.as_mut_ptr() as *mut f32);
            if isa == Isa::Avx512 {
                transpose_in_avx512(src, stride, ns, np, dst)
            } else {
                transpose_in_avx2(src, stride, ns, np, dst)
            }
        };
        return;
    }
    for (p, d) in dst.chunks_exact_mut(L).take(np).enumerate() {
        for (s, v) in d.iter_mut().enumerate() {
            *v = if s < ns {
                src[s * stride + p]
            } else {
                T::zero()
            };
        }
    }
}

/// dst[s·stride + p] = src[p·L + s] for p < np and s < ns ≤ L: the inverse of
/// [`rows_to_lanes`].
pub(crate) fn lanes_to_rows<T: Float>(
    isa: Isa,
    src: &[T],
    ns: usize,
    np: usize,
    dst: &mut [T],
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && isa != Isa::Baseline {
        assert!(ns <= L && src.len() >= np * L && (ns == 0 || dst.len() >= (ns - 1) * stride + np));
        // SAFETY: `isa` was detected on this CPU (AVX-512F or AVX2); T is f32; the assert
        // bounds every access.
        unsafe {
            let (src, dst) = (src.as_ptr() as *const f32, dst.as_mut_ptr() as *mut f32);
            if isa == Isa::Avx512 {
                transpose_out_avx512(src, ns, np, dst, stride)
            } else {
                transpose_out_avx2(src, ns, np, dst, stride)
            }
        };
        return;
    }
    for (p, v) in src.chunks_exact(L).take(np).enumerate() {
        for (s, &v) in v.iter().take(ns).enumerate() {
            dst[s * stride + p] = v;
        }
    }
}

/// How far ahead (in f32) along each of the 16 planes the transposes into lanes ask for the
/// next cache lines: their loads are the first touch of an activation that a whole-batch pass
/// wrote, and waiting on them was three quarters of their time (AMD EPYC Zen 5, ResNet-20's
/// training step: their share 10.4–10.8 % without, 7.6–8.1 % at 32 or 64, 9.0 % at 16, 9.7–10.4
/// % at 256 or 512).
const PREFETCH: usize = 64;

/// [`rows_to_lanes`] for f32 by 16×16 transposes in registers.
/// SAFETY: needs AVX-512F, ns ≤ 16, src valid for (ns − 1)·stride + np reads and dst for
/// np·16 writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_in_avx512(src: *const f32, stride: usize, ns: usize, np: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    for p0 in (0..np).step_by(16) {
        let m = (np - p0).min(16);
        let mask = ((1u32 << m) - 1) as __mmask16;
        // All 16 loads and stores, those past ns and m masked off (a masked-off lane is not
        // read or written): loops of ns loads or m stores kept the rows on the stack.
        let r: [__m512; 16] = std::array::from_fn(|s| {
            let at = src.wrapping_add(s * stride + p0);
            if s < ns {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH) as *const i8);
            }
            _mm512_maskz_loadu_ps(if s < ns { mask } else { 0 }, at)
        });
        for (p, v) in transpose16(r).iter().enumerate() {
            let keep = if p < m { !0 } else { 0 };
            _mm512_mask_storeu_ps(dst.wrapping_add((p0 + p) * 16), keep, *v);
        }
    }
}

/// [`lanes_to_rows`] for f32 by 16×16 transposes in registers.
/// SAFETY: needs AVX-512F, ns ≤ 16, src valid for np·16 reads and dst for
/// (ns − 1)·stride + np writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_out_avx512(
    src: *const f32,
    ns: usize,
    np: usize,
    dst: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::*;
    for p0 in (0..np).step_by(16) {
        let m = (np - p0).min(16);
        let mask = ((1u32 << m) - 1) as __mmask16;
        // Masked loads, all 16: a loop of m plain ones was turned into a call to memcpy onto
        // the stack.
        let r: [__m512; 16] = std::array::from_fn(|p| {
            let keep = if p < m { !0 } else { 0 };
            _mm512_maskz_loadu_ps(keep, src.wrapping_add((p0 + p) * 16))
        });
        // All 16 stores, those past ns masked off, as in `transpose_in_avx512`.
        for (s, v) in transpose16(r).iter().enumerate() {
            let keep = if s < ns { mask } else { 0 };
            _mm512_mask_storeu_ps(dst.wrapping_add(s * stride + p0), keep, *v);
        }
    }
}

/// [`rows_to_lanes`] for f32 by 8×8 transposes in registers, each half of the L lanes apart.
/// SAFETY: needs AVX2, ns ≤ 16, src valid for (ns − 1)·stride + np reads and dst for np·16
/// writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_in_avx2(src: *const f32, stride: usize, ns: usize, np: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    for p0 in (0..np).step_by(8) {
        let m = (np - p0).min(8);
        let mask = first_lanes(m);
        for h in 0..L / 8 {
            // Loops of a constant 8, as in `transpose_in_avx512`.
            let r: [__m256; 8] = std::array::from_fn(|i| {
                let at = src.wrapping_add((8 * h + i) * stride + p0);
                if 8 * h + i < ns {
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH) as *const i8);
                    _mm256_maskload_ps(at, mask)
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (p, v) in transpose8(r).iter().enumerate() {
                if p < m {
                    _mm256_storeu_ps(dst.add((p0 + p) * L + 8 * h), *v);
                }
            }
        }
    }
}

/// [`lanes_to_rows`] for f32 by 8×8 transposes in registers.
/// SAFETY: needs AVX2, ns ≤ 16, src valid for np·16 reads and dst for (ns − 1)·stride + np
/// writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_out_avx2(src: *const f32, ns: usize, np: usize, dst: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    for p0 in (0..np).step_by(8) {
        let m = (np - p0).min(8);
        let mask = first_lanes(m);
        for h in 0..ns.div_ceil(8) {
            // Loops of a constant 8, as in `transpose_in_avx512`.
            let r: [__m256; 8] = std::array::from_fn(|p| {
                if p < m {
                    _mm256_loadu_ps(src.add((p0 + p) * L + 8 * h))
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (i, v) in transpose8(r).iter().enumerate() {
                if 8 * h + i < ns {
                    _mm256_maskstore_ps(dst.add((8 * h + i) * stride + p0), mask, *v);
                }
            }
        }
    }
}

/// y (ns, c, h, w) ← the first ns lanes of yt (c, h, w, L).
fn unpack<T: Float>(isa: Isa, yt: &[T], (c, h, w): (usize, usize, usize), ns: usize, y: &mut [T]) {
    let (img, all) = (h * w, c * h * w);
    for ch in 0..c {
        let src = &yt[ch * img * L..(ch + 1) * img * L];
        lanes_to_rows(isa, src, ns, img, &mut y[ch * img..], all);
    }
}

/// The correlation of one group: yt[o, i, j] = bias[o] + Σ_{c, ki, kj} w[o, c, ki, kj] ·
/// xt[c, i + ki, j + kj], every operand a vector of L samples, in blocks of OB channels × PB
/// pixels of a row (OB·PB sums in registers; each tap loads PB input vectors and broadcasts OB
/// weights). Tap rows on the zero rows above or below the image are skipped.
/// xt: (C_in, Hp, Wp, L) as `xp` lays it out; w: (C_out, C_in, kh, kw) with C_out a multiple
/// of OB; bias: (C_out); yt: (C_out, H_out, W_out, L).
#[inline(always)]
fn correlate_kernel<T: Float, const FMA: bool, const U: usize, const OB: usize, const PB: usize>(
    xp: &Plane,
    (kh, kw): (usize, usize),
    (out_c, out_h, out_w): (usize, usize, usize),
    xt: &[T],
    w: &[T],
    bias: &[T],
    yt: &mut [T],
) {
    let (cin, k) = (xp.c, kh * kw);
    let plane = xp.hp * xp.wp;
    let (r0, r1) = (xp.top, xp.top + xp.h);
    for ob in 0..out_c / OB {
        let wb = &w[ob * OB * cin * k..(ob + 1) * OB * cin * k]; // (OB, C_in, kh, kw)
        for i in 0..out_h {
            let ki0 = r0.saturating_sub(i).min(kh);
            let ki1 = r1.saturating_sub(i).min(kh);
            for j0 in (0..out_w).step_by(PB) {
                let mut acc = [[[T::zero(); L]; OB]; PB];
                for c in 0..cin {
                    for ki in ki0..ki1 {
                        let at = (c * plane + (i + ki) * xp.wp + j0) * L;
                        // The row's kw − 1 + PB vectors, as whole vectors: one bounds check
                        // per tap instead of two per load.
                        let row = &xt[at..].as_chunks::<L>().0[..kw - 1 + PB];
                        let wr = (c * kh + ki) * kw;
                        let ws: [&[T]; OB] = std::array::from_fn(|o| &wb[o * cin * k + wr..][..kw]);
                        for kj in 0..kw {
                            let mut wv = [T::zero(); OB];
                            for (v, w) in wv.iter_mut().zip(&ws) {
                                *v = w[kj];
                            }
                            let Some(xw) = row[kj..].first_chunk::<PB>() else {
                                unreachable!("the row holds kw − 1 + PB vectors")
                            };
                            unroll16!(PB, |p| {
                                let xv = xw[p];
                                for (a, &w) in acc[p].iter_mut().zip(&wv) {
                                    for l in 0..L {
                                        a[l] = madd::<T, FMA>(a[l], w, xv[l]);
                                    }
                                }
                            });
                        }
                    }
                }
                // Read out of a copy: run-time indexing of `acc` itself (np) would keep the
                // sums in memory instead of registers.
                let res = acc;
                let np = PB.min(out_w - j0);
                for (p, ap) in res.iter().enumerate().take(np) {
                    for (o, a) in ap.iter().enumerate() {
                        let oc = ob * OB + o;
                        let at = ((oc * out_h + i) * out_w + j0 + p) * L;
                        for (d, &v) in yt[at..at + L].iter_mut().zip(a) {
                            *d = v + bias[oc];
                        }
                    }
                }
            }
        }
    }
}
multiversion!(correlate<OB, PB> => correlate_kernel(xp: &Plane, k: (usize, usize), dims: (usize, usize, usize), xt: &[T], w: &[T], bias: &[T], yt: &mut [T]));

/// The weight gradient of one group for OB output channels and TB kernel taps of one input
/// channel: out[o][t] += Σ_{i, j} Σ_lanes dyt[o, i, j] · xt[i + ki_t, j + kj_t], with OB·TB
/// vector sums in registers over the whole plane and their lanes summed at the end.
/// offs: ki·Wp + kj of each tap (a last block is padded with 0 and not stored, `valid` taps);
/// xt: this channel's (Hp, Wp, L); dyt: (C_out, Hq, Wq, L) from this block's first channel,
/// image at (top, left) as `dp` lays it out; out: (OB, k) from this block's first tap, k apart.
#[inline(always)]
fn weight_grad_kernel<
    T: Float,
    const FMA: bool,
    const U: usize,
    const OB: usize,
    const TB: usize,
>(
    offs: &[usize],
    (valid, k, wp): (usize, usize, usize),
    dp: &Plane,
    xt: &[T],
    dyt: &[T],
    out: &mut [T],
) {
    let mut acc = [[[T::zero(); L]; OB]; TB];
    let dplane = dp.hp * dp.wp;
    for i in 0..dp.h {
        let dq = (dp.top + i) * dp.wp + dp.left;
        // Whole vectors, each row exactly dp.w long: no bounds checks in the loop.
        let ds: [&[[T; L]]; OB] =
            std::array::from_fn(|o| &dyt[(o * dplane + dq) * L..].as_chunks::<L>().0[..dp.w]);
        let xs: [&[[T; L]]; TB] =
            std::array::from_fn(|t| &xt[(i * wp + offs[t]) * L..].as_chunks::<L>().0[..dp.w]);
        for j in 0..dp.w {
            let dv: [[T; L]; OB] = std::array::from_fn(|o| ds[o][j]);
            unroll16!(TB, |t| {
                let xv = xs[t][j];
                for (a, d) in acc[t].iter_mut().zip(&dv) {
                    for l in 0..L {
                        a[l] = madd::<T, FMA>(a[l], d[l], xv[l]);
                    }
                }
            });
        }
    }
    let res = acc; // a copy, as in `correlate_kernel`
    for (t, at) in res.iter().enumerate().take(valid) {
        for (o, a) in at.iter().enumerate() {
            out[o * k + t] += lane_sum(a);
        }
    }
}

/// Σ of the L lanes, pairwise (a fixed order). Not inlined: where LLVM saw this reduction
/// beside the kernel's loop, it vectorised the loop across the sums instead of along the
/// lanes, into 128-bit operations with shuffles (AVX2 builds of the narrow blockings: LeNet's
/// second layer's dW took 3× the time).
#[inline(never)]
fn lane_sum<T: Float>(a: &[T; L]) -> T {
    let mut v = *a;
    let mut m = L / 2;
    while m > 0 {
        for l in 0..m {
            v[l] += v[l + m];
        }
        m /= 2;
    }
    v[0]
}
multiversion!(weight_grad_block<OB, TB> => weight_grad_kernel(offs: &[usize], sizes: (usize, usize, usize), dp: &Plane, xt: &[T], dyt: &[T], out: &mut [T]));

/// The two kernels, for [`blocking`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Keeps PB input vectors beside the OB·PB sums.
    Correlate,
    /// Keeps OB dY vectors beside the OB·TB sums.
    WeightGrad,
}

/// Register blockings with AVX-512: 32 registers of one vector each.
const WIDE_BLOCKS: &[(usize, usize)] = &[
    (8, 3),
    (6, 4),
    (4, 6),
    (4, 5),
    (5, 4),
    (6, 3),
    (3, 6),
    (4, 4),
    (6, 2),
    (2, 6),
];

/// Register blockings without AVX-512 (AVX2: 16 registers, two per vector of 16 lanes), one
/// list per kernel, as measured on LeNet-5 (AVX2 build). Correlate: one pixel by many channels
/// (the weights broadcast from memory, one input vector loaded): the same blocking for every
/// layer, inference of 10,000 digits, 6 × 1 49 ms, 2 × 3, 2 × 2 and 4 × 1 51–52, 3 × 1 59,
/// 1 × 6 65, 3 × 2 77; per layer, this list (6 × 1 on 6 channels, 4 × 1 on 16) 43.4–44.4
/// against 45.3–47.6 ms for the cost's picks among 6 × 1, 2 × 3, 2 × 2 and 4 × 1. Weight
/// gradient: 2 × 3 and 3 × 2 ahead of 2 × 2, 1 × 6, 4 × 1 and 3 × 1 (the 6→16 layer's forward
/// + backward at batch 64 0.69–0.71 against 0.71–0.85 ms).
const NARROW_CORRELATE: &[(usize, usize)] = &[(6, 1), (4, 1), (3, 1), (2, 1)];
const NARROW_WEIGHT_GRAD: &[(usize, usize)] = &[(2, 3), (3, 2), (2, 2), (3, 1), (2, 1)];

/// Register blocking (OB channels × PB pixels or TB taps) of `kernel` on this CPU for
/// `channels` channels and `along` pixels of a row or taps: among the blockings that fit the
/// registers, the one with the least work, counting each block's multiply-adds (OB·PB) and its
/// loads (OB + PB) at 0.7 of one, as fitted to LeNet's first layer's dW with AVX-512 (6
/// channels × 2, 3 and 4 taps: 204, 165 and 159 µs at batch 32; 8 × 3, whose 33 vectors
/// spill, 2.9 ms).
fn blocking(isa: Isa, kernel: Kernel, channels: usize, along: usize) -> (usize, usize) {
    let cost = |&(ob, pb): &(usize, usize)| {
        channels.div_ceil(ob) * along.div_ceil(pb) * (10 * ob * pb + 7 * (ob + pb))
    };
    let (list, regs) = match (isa, kernel) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, _) => (WIDE_BLOCKS, 31),
        (_, Kernel::Correlate) => (NARROW_CORRELATE, usize::MAX),
        (_, Kernel::WeightGrad) => (NARROW_WEIGHT_GRAD, usize::MAX),
    };
    // With AVX-512: the sums and the kept vectors (PB inputs or OB dY vectors) within `regs`.
    let fits = |&(ob, pb): &(usize, usize)| {
        let kept = match kernel {
            Kernel::Correlate => pb,
            Kernel::WeightGrad => ob,
        };
        ob * pb + kept <= regs
    };
    *list
        .iter()
        .filter(|b| fits(b))
        .min_by_key(|b| cost(b))
        .expect("a blocking of one row fits")
}

/// Calls `$f::<T, OB, PB>` for a blocking of [`WIDE_BLOCKS`], [`NARROW_CORRELATE`] or
/// [`NARROW_WEIGHT_GRAD`].
macro_rules! dispatch_blocking {
    ($f:ident, $isa:expr, $blk:expr, ($($arg:expr),*)) => {
        match $blk {
            (8, 3) => $f::<T, 8, 3>($isa, $($arg),*),
            (6, 4) => $f::<T, 6, 4>($isa, $($arg),*),
            (4, 6) => $f::<T, 4, 6>($isa, $($arg),*),
            (4, 5) => $f::<T, 4, 5>($isa, $($arg),*),
            (5, 4) => $f::<T, 5, 4>($isa, $($arg),*),
            (6, 3) => $f::<T, 6, 3>($isa, $($arg),*),
            (3, 6) => $f::<T, 3, 6>($isa, $($arg),*),
            (4, 4) => $f::<T, 4, 4>($isa, $($arg),*),
            (6, 2) => $f::<T, 6, 2>($isa, $($arg),*),
            (2, 6) => $f::<T, 2, 6>($isa, $($arg),*),
            (6, 1) => $f::<T, 6, 1>($isa, $($arg),*),
            (3, 1) => $f::<T, 3, 1>($isa, $($arg),*),
            (2, 2) => $f::<T, 2, 2>($isa, $($arg),*),
            (2, 1) => $f::<T, 2, 1>($isa, $($arg),*),
            (2, 3) => $f::<T, 2, 3>($isa, $($arg),*),
            (4, 1) => $f::<T, 4, 1>($isa, $($arg),*),
            (3, 2) => $f::<T, 3, 2>($isa, $($arg),*),
            _ => unreachable!("blockings come from the lists of `blocking`"),
        }
    };
}

/// Weights (C_out, C_in, kh, kw) with the output channels padded to a multiple of `ob` by
/// zeros (and the bias likewise).
fn pad_channels<T: Float>(w: &[T], b: Option<&[T]>, cout: usize, ob: usize) -> (Vec<T>, Vec<T>) {
    let per = w.len() / cout;
    let padded = cout.div_ceil(ob) * ob;
    let mut wp = w.to_vec();
    wp.resize(padded * per, T::zero());
    let mut bp = b.map_or_else(|| vec![T::zero(); cout], <[T]>::to_vec);
    bp.resize(padded, T::zero());
    (wp, bp)
}

/// Max pooling over 2×2 windows at stride 2, and optionally a ReLU after it, run on the packed
/// output of the convolution, where a window's four values are four whole vectors: LeNet's
/// convolution → ReLU → pooling in one pass, without the full-size output in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolAfter {
    pub relu: bool,
}

impl PoolAfter {
    /// Bytes of the winners' record of `n` samples: (groups, C_out, H_out / 2, W_out / 2, L).
    pub(crate) fn winners_len(g: &Conv2dGeometry, n: usize) -> usize {
        n.div_ceil(L) * g.out_channels * (g.out_h / 2) * (g.out_w / 2) * L
    }
}

/// One group's pooling of the packed convolution output: each window's winner by the
/// tournament of the pooling layer (the first NaN, else the first maximum in row-major order),
/// then the ReLU if `RELU` is 1. win records the winner 0..4 (row-major in the window), or 4
/// where the ReLU passes no gradient (a maximum ≤ 0 or NaN).
/// yt: (C_out padded, H_out, W_out, L); pt, win: (C_out, H_out / 2, W_out / 2, L).
#[inline(always)]
fn pool_kernel<T: Float, const FMA: bool, const U: usize, const RELU: usize>(
    (c, ho, wo): (usize, usize, usize),
    yt: &[T],
    pt: &mut [T],
    win: &mut [u8],
) {
    let (hq, wq) = (ho / 2, wo / 2);
    for ch in 0..c {
        for i in 0..hq {
            let r0 = &yt[((ch * ho + 2 * i) * wo) * L..][..2 * wq * L];
            let r1 = &yt[((ch * ho + 2 * i + 1) * wo) * L..][..2 * wq * L];
            let q = (ch * hq + i) * wq * L;
            let (pr, wr) = (&mut pt[q..q + wq * L], &mut win[q..q + wq * L]);
            for j in 0..wq {
                let v = |r: &[T], b: usize| -> [T; L] {
                    let mut a = [T::zero(); L];
                    a.copy_from_slice(&r[(2 * j + b) * L..(2 * j + b + 1) * L]);
                    a
                };
                let (v00, v01, v10, v11) = (v(r0, 0), v(r0, 1), v(r1, 0), v(r1, 1));
                let (po, wn) = (&mut pr[j * L..(j + 1) * L], &mut wr[j * L..(j + 1) * L]);
                for l in 0..L {
                    let (top, kt) = if second_wins(v00[l], v01[l]) {
                        (v01[l], 1u8)
                    } else {
                        (v00[l], 0)
                    };
                    let (bot, kb) = if second_wins(v10[l], v11[l]) {
                        (v11[l], 3u8)
                    } else {
                        (v10[l], 2)
                    };
                    let (m, k) = if second_wins(top, bot) {
                        (bot, kb)
                    } else {
                        (top, kt)
                    };
                    if RELU == 1 {
                        po[l] = if m < T::zero() { T::zero() } else { m };
                        wn[l] = if m > T::zero() { k } else { 4 };
                    } else {
                        po[l] = m;
                        wn[l] = k;
                    }
                }
            }
        }
    }
}
multiversion!(pool_group<RELU> => pool_kernel(dims: (usize, usize, usize), yt: &[T], pt: &mut [T], win: &mut [u8]));

/// The backward of [`pool_kernel`] into the packed dY of the convolution: each pooled
/// gradient goes to its window's winner, zeros to the other three cells (and to all four
/// where the ReLU passed nothing); db[c] gets the sum of what went through. The cells of
/// dyt outside the windows are left to the caller.
/// qt, win: (C_out, H_out / 2, W_out / 2, L); dyt: as `dp` lays it out; db: (C_out).
#[inline(always)]
fn unpool_kernel<T: Float, const FMA: bool, const U: usize, const R: usize>(
    dp: &Plane,
    qt: &[T],
    win: &[u8],
    dyt: &mut [T],
    db: &mut [f64],
) {
    let (hq, wq) = (dp.h / 2, dp.w / 2);
    for (ch, dbc) in db.iter_mut().enumerate().take(dp.c) {
        let mut acc = [0.0f64; L];
        for i in 0..hq {
            let r = (ch * dp.hp + dp.top + 2 * i) * dp.wp + dp.left;
            let (top, bottom) = dyt[r * L..(r + dp.wp + 2 * wq) * L].split_at_mut(dp.wp * L);
            for j in 0..wq {
                let q = ((ch * hq + i) * wq + j) * L;
                let mut d = [T::zero(); L];
                d.copy_from_slice(&qt[q..q + L]);
                // Widened: compares of 32-bit lanes vectorise with AVX-512F alone.
                let mut kb = [0u8; L];
                kb.copy_from_slice(&win[q..q + L]);
                let mut k = [0u32; L];
                for l in 0..L {
                    k[l] = u32::from(kb[l]);
                }
                let (t0, t1) = top[2 * j * L..(2 * j + 2) * L].split_at_mut(L);
                let (b0, b1) = bottom[2 * j * L..(2 * j + 2) * L].split_at_mut(L);
                let z = T::zero();
                for l in 0..L {
                    t0[l] = if k[l] == 0 { d[l] } else { z };
                }
                for l in 0..L {
                    t1[l] = if k[l] == 1 { d[l] } else { z };
                }
                for l in 0..L {
                    b0[l] = if k[l] == 2 { d[l] } else { z };
                }
                for l in 0..L {
                    b1[l] = if k[l] == 3 { d[l] } else { z };
                }
                for l in 0..L {
                    let through = if k[l] < 4 { d[l] } else { T::zero() };
                    acc[l] += through.f64();
                }
            }
        }
        *dbc += acc.iter().sum::<f64>();
    }
}
multiversion!(unpool_group<R> => unpool_kernel(dp: &Plane, qt: &[T], win: &[u8], dyt: &mut [T], db: &mut [f64]));

/// x: (N, C_in, H, W), w: (C_out, C_in, kh, kw), b: (C_out); without `pool`,
/// y: (N, C_out, H_out, W_out); with it ([`PoolAfter::fits`]), y: (N, C_out, H_out / 2,
/// W_out / 2) and the winners for [`backward_pooled`] in `winners`
/// ([`PoolAfter::winners_len`]). The kernels and blockings are `isa`'s (`Isa::detect()`; tests
/// run the narrow ones anywhere). Needs [`fits`]; alone, the forward pass loses to the other
/// kernels ([`applies`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Float>(
    isa: Isa,
    g: &Conv2dGeometry,
    pool: Option<PoolAfter>,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    winners: &mut [u8],
    scratch: &mut ConvScratch<T>,
) {
    let xp = Plane::input(g);
    let (ob, pb) = blocking(isa, Kernel::Correlate, g.out_channels, g.out_w);
    let (wpad, bpad) = pad_channels(w, b, g.out_channels, ob);
    let (co, ho, wo) = (g.out_channels, g.out_h, g.out_w);
    let dims = (bpad.len(), ho, wo); // output channels padded to whole blocks
    let (hq, wq) = (ho / 2, wo / 2);
    let in_len = g.in_len();
    let (out_len, win_len) = match pool {
        Some(_) => (co * hq * wq, co * hq * wq * L),
        None => (g.out_len(), 0),
    };
    // (C_in, Hp, Wp, L) packed input, (C_out padded, H_out, W_out, L) packed output, and the
    // pooled output (C_out, H_out / 2, W_out / 2, L).
    let sizes = [xp.len(), dims.0 * ho * wo * L, win_len];
    let aux = (win_len, winners);
    forward_chunks(
        n,
        L,
        out_len,
        y,
        aux,
        scratch,
        sizes,
        |bufs, s0, ns, yg, win| {
            let [xt, yt, pt] = bufs;
            xp.pack(isa, &x[s0 * in_len..], ns, xt);
            dispatch_blocking!(
                correlate,
                isa,
                (ob, pb),
                (&xp, g.cfg.kernel, dims, xt, &wpad, &bpad, yt)
            );
            match pool {
                None => unpack(isa, yt, (co, ho, wo), ns, yg),
                Some(p) => {
                    if p.relu {
                        pool_group::<T, 1>(isa, (co, ho, wo), yt, pt, win);
                    } else {
                        pool_group::<T, 0>(isa, (co, ho, wo), yt, pt, win);
                    }
                    unpack(isa, pt, (co, hq, wq), ns, yg);
                }
            }
        },
    );
}

/// What the backward pass of one geometry needs in every group: the blockings, the flipped
/// kernels for dX, the dW kernel's tap offsets and the buffer sizes.
struct Backward<T> {
    isa: Isa,
    xp: Plane,
    dp: Plane,
    /// dX: the correlation of dY with the flipped kernels, channel axes swapped:
    /// wf (C_in padded, C_out, kh, kw).
    wf: Vec<T>,
    zero_bias: Vec<T>,
    dx_block: (usize, usize),
    /// dW: blocks of OB output channels × TB taps; tap offsets padded to whole blocks.
    dw_block: (usize, usize),
    offs: Vec<usize>,
    cout_pad: usize,
    /// Per thread: packed x, packed dY (whole blocks of output channels), packed dX.
    sizes: [usize; 3],
}

impl<T: Float> Backward<T> {
    fn new(isa: Isa, g: &Conv2dGeometry, w: &[T]) -> Self {
        let (kh, kw) = g.cfg.kernel;
        let k = kh * kw;
        let (cin, cout) = (g.in_channels, g.out_channels);
        let xp = Plane::input(g);
        let dp = Plane::output_grad(g);
        let dx_block = blocking(isa, Kernel::Correlate, cin, g.in_w);
        let cin_pad = cin.div_ceil(dx_block.0) * dx_block.0;
        let mut wf = vec![T::zero(); cin_pad * cout * k];
        for oc in 0..cout {
            for c in 0..cin {
                for t in 0..k {
                    wf[(c * cout + oc) * k + k - 1 - t] = w[(oc * cin + c) * k + t];
                }
            }
        }
        let dw_block = blocking(isa, Kernel::WeightGrad, cout, k);
        let tbw = dw_block.1;
        let offs = (0..k.div_ceil(tbw) * tbw)
            .map(|t| if t < k { (t / kw) * xp.wp + t % kw } else { 0 })
            .collect();
        let cout_pad = cout.div_ceil(dw_block.0) * dw_block.0;
        let sizes = [
            xp.len(),
            dp.len() + (cout_pad - cout) * dp.hp * dp.wp * L,
            cin_pad * g.in_h * g.in_w * L,
        ];
        Backward {
            isa,
            xp,
            dp,
            wf,
            zero_bias: vec![T::zero(); cin_pad],
            dx_block,
            dw_block,
            offs,
            cout_pad,
            sizes,
        }
    }

    /// dW of one group from its packed x and dY (the padded channels of dY zeroed here), and
    /// dX of its `ns` samples into d when asked.
    #[allow(clippy::too_many_arguments)]
    fn group(
        &self,
        g: &Conv2dGeometry,
        xt: &[T],
        dyt: &mut [T],
        dxt: &mut [T],
        ns: usize,
        dxc: Option<&mut [T]>,
    ) -> Vec<T> {
        let (isa, xp, dp) = (self.isa, &self.xp, &self.dp);
        let (kh, kw) = g.cfg.kernel;
        let k = kh * kw;
        let (cin, cout) = (g.in_channels, g.out_channels);
        // dY's padded channels are zero: they add nothing but zero rows of dW, dropped below.
        dyt[dp.len()..self.sizes[1]].fill(T::zero());
        let (obw, tbw) = self.dw_block;
        let mut pdw = vec![T::zero(); self.cout_pad * cin * k]; // (C_out padded, C_in, kh, kw)
        let dplane = dp.hp * dp.wp * L;
        for ob in 0..self.cout_pad / obw {
            for c in 0..cin {
                for t0 in (0..k).step_by(tbw) {
                    let valid = tbw.min(k - t0);
                    let at = (ob * obw * cin + c) * k + t0;
                    dispatch_blocking!(
                        weight_grad_block,
                        isa,
                        (obw, tbw),
                        (
                            &self.offs[t0..t0 + tbw],
                            (valid, cin * k, xp.wp),
                            dp,
                            &xt[c * xp.hp * xp.wp * L..],
                            &dyt[ob * obw * dplane..],
                            &mut pdw[at..]
                        )
                    );
                }
            }
        }
        if let Some(d) = dxc {
            let cin_pad = self.zero_bias.len();
            let dims = (cin_pad, g.in_h, g.in_w);
            dispatch_blocking!(
                correlate,
                isa,
                self.dx_block,
                (dp, (kh, kw), dims, dyt, &self.wf, &self.zero_bias, dxt)
            );
            unpack(isa, dxt, (cin, g.in_h, g.in_w), ns, d);
        }
        pdw.truncate(cout * cin * k);
        pdw
    }
}

/// dy: (N, C_out, H_out, W_out), dx: (N, C_in, H, W), dw: (C_out, C_in, kh, kw) and db: (C_out)
/// added into. Groups of L samples in parallel, their (dW, db) summed in group order; `isa` as
/// for [`forward`]. Needs [`fits`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Float>(
    isa: Isa,
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
    let plan = Backward::new(isa, g, w);
    let (in_len, out_len, plane) = (g.in_len(), g.out_len(), g.out_h * g.out_w);
    let want_db = db.is_some();
    let work = |bufs: &mut [Vec<T>; 3], s0: usize, s: usize, dxc: Option<&mut [T]>| {
        let [xt, dyt, dxt] = bufs;
        let dys = &dy[s0 * out_len..(s0 + s) * out_len]; // (s, C_out, H_out, W_out)
        let mut pdb = bias_sums(g.out_channels, want_db);
        add_bias_sums(&mut pdb, dys, plane);
        plan.xp.pack(plan.isa, &x[s0 * in_len..], s, xt);
        plan.dp.pack(plan.isa, dys, s, dyt);
        let pdw = plan.group(g, xt, dyt, dxt, s, dxc);
        (pdw, pdb.into_iter().map(T::of).collect())
    };
    backward_chunks(n, L, in_len, dx, dw, db, scratch, plan.sizes, work);
}

/// The backward of [`forward`] with a pooling: dy (N, C_out, H_out / 2, W_out / 2) the pooled
/// output's gradient, `winners` as the forward pass left them; otherwise as [`backward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_pooled<T: Float>(
    isa: Isa,
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
    let mut plan = Backward::new(isa, g, w);
    let (co, hq, wq) = (g.out_channels, g.out_h / 2, g.out_w / 2);
    let (in_len, out_len, win_len) = (g.in_len(), co * hq * wq, co * hq * wq * L);
    // The pooled dY is packed into the dX buffer, which is free until the end.
    plan.sizes[2] = plan.sizes[2].max(win_len);
    let plan = plan;
    let work = |bufs: &mut [Vec<T>; 3], s0: usize, s: usize, dxc: Option<&mut [T]>| {
        let [xt, dyt, dxt] = bufs;
        let dys = &dy[s0 * out_len..(s0 + s) * out_len]; // (s, C_out, H_out / 2, W_out / 2)
        for c in 0..co {
            let src = &dys[c * hq * wq..];
            let dst = &mut dxt[c * hq * wq * L..(c + 1) * hq * wq * L];
            rows_to_lanes(plan.isa, src, out_len, s, hq * wq, dst);
        }
        let dp = &plan.dp;
        dp.zero_around(dyt, 2 * hq, 2 * wq);
        let mut pdb = vec![0.0f64; co];
        let win = &winners[s0 / L * win_len..][..win_len];
        unpool_group::<T, 0>(plan.isa, dp, &dxt[..win_len], win, dyt, &mut pdb);
        plan.xp.pack(plan.isa, &x[s0 * in_len..], s, xt);
        let pdw = plan.group(g, xt, dyt, dxt, s, dxc);
        (pdw, pdb.into_iter().map(T::of).collect())
    };
    backward_chunks(n, L, in_len, dx, dw, db, scratch, plan.sizes, work);
}

//! 3×3 stride-1 convolution by Winograd's minimal filtering (Lavin & Gray 2016), F(2×2, 3×3)
//! or F(4×4, 3×3): forward, input gradient and weight gradient, each as one GEMM over the
//! channels per position of a transformed tile.
//!
//! Every m×m output tile is Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A, with d the (m+2)×(m+2) input patch
//! under it and g the 3×3 kernel. Summed over the input channels, the element-wise products of
//! a tile become, position by position, one GEMM M_p (tiles × K) = V_p (tiles × C) · U_p (C ×
//! K): (m+2)²/m² multiply-adds per output and channel pair where a direct or im2col convolution
//! does 9, so 2.25× fewer with F(2×2) and 4× fewer with F(4×4), whose transforms cost more
//! per tile (scalings besides additions) but less per output.
//!
//! The channels lie across the vector lanes: a sample is first packed (C/L, Hp, Wp, L) inside
//! its padding, so that a transform is whole-vector arithmetic on neighbouring pixels, and
//! the GEMMs' sums are vectors of output channels; the weight gradient's sums run over the tiles
//! and need no sums across lanes. A sample is taken a block of tiles at a time, so that its
//! transformed input and products stay in the L2 cache.
use super::batch::{lanes_to_rows, rows_to_lanes};
use super::geometry::Conv2dGeometry;
use super::parallel::{add_bias_sums, backward_chunks, bias_sums, forward_chunks, ConvScratch};
use super::Epilogue;
use crate::ops::simd::{madd, Isa};
use crate::tensor::Float;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::any::TypeId;

/// Channels per vector: one AVX-512 register of f32, two AVX2 ones.
const L: usize = 16;
/// Samples whose transformed weight gradient is summed before it is turned back into dW's
/// 3×3 kernels and added in order: an eighth of the batch, 4 to 16 (a function of the batch
/// alone: results must not depend on the thread count). Each chunk's untransform costs as
/// much as a sample's transforms: with chunks of 4 it was 5 % of a ResNet-20 training step
/// at batch 128.
fn grad_chunk(n: usize) -> usize {
    (n / 8).clamp(4, 16)
}
/// Register blocking (tiles or input channels × vectors of output channels) of the GEMM
/// kernels for kp output channels: with AVX-512 the sums and the operands kept beside them
/// fit 32 registers, with AVX2 (two registers a vector) 16. With one or two vectors of
/// output channels, more rows: a block's sums are its independent chains of multiply-adds,
/// and 6 of them (6 × 1) leave the FMA units waiting on their latency.
fn blocking(isa: Isa, kp: usize) -> (usize, usize) {
    match (isa, kp / L) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 1) => (16, 1),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 2) => (8, 2),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, _) => (6, 4),
        (_, 1) => (6, 1),
        _ => (2, 2),
    }
}

/// Which minimal filtering: the edge m of an output tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tile {
    /// F(2×2, 3×3): 4×4 patches, 16 positions.
    F2,
    /// F(4×4, 3×3): 6×6 patches, 36 positions.
    F4,
}

impl Tile {
    /// Outputs along each edge of a tile.
    fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Positions of a transformed tile, (m + 2)².
    fn positions(self) -> usize {
        (self.m() + 2) * (self.m() + 2)
    }

    /// Tiles per block: the transformed input and the products of 64 channels take 384 KB
    /// each (96 tiles of 16 positions, 40 of 36).
    fn block_tiles(self) -> usize {
        match self {
            Tile::F2 => 96,
            Tile::F4 => 40,
        }
    }
}

/// Tiles of one convolution, and the packed planes around them.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    tile: Tile,
    /// Input channels, rows, columns; the channels rounded up to whole vectors.
    c: usize,
    h: usize,
    w: usize,
    cp: usize,
    /// Output channels, rows, columns; the channels rounded up to whole vectors.
    k: usize,
    oh: usize,
    ow: usize,
    kp: usize,
    /// Padding before the first row and column.
    top: usize,
    left: usize,
    /// Tile rows and tiles per row (m×m outputs each).
    th: usize,
    tw: usize,
}

impl Tiling {
    fn new(g: &Conv2dGeometry, tile: Tile) -> Self {
        Tiling {
            tile,
            c: g.in_channels,
            h: g.in_h,
            w: g.in_w,
            cp: g.in_channels.next_multiple_of(L),
            k: g.out_channels,
            oh: g.out_h,
            ow: g.out_w,
            kp: g.out_channels.next_multiple_of(L),
            top: g.cfg.pad_begin.0,
            left: g.cfg.pad_begin.1,
            th: g.out_h.div_ceil(tile.m()),
            tw: g.out_w.div_ceil(tile.m()),
        }
    }

    /// Rows and columns of the packed input plane: every tile's patch inside it.
    fn hp(&self) -> usize {
        self.tile.m() * self.th + 2
    }
    fn wp(&self) -> usize {
        self.tile.m() * self.tw + 2
    }

    /// Rows and columns of the packed output plane: whole tiles.
    fn ohp(&self) -> usize {
        self.tile.m() * self.th
    }
    fn owp(&self) -> usize {
        self.tile.m() * self.tw
    }

    /// Elements of the packed input (C'/L, Hp, Wp, L).
    fn packed_in(&self) -> usize {
        self.cp * self.hp() * self.wp()
    }

    /// Elements of the packed output (K'/L, m·th, m·tw, L).
    fn packed_out(&self) -> usize {
        self.kp * self.ohp() * self.owp()
    }
}

/// Packs x (C, H, W) into xb (C'/L, Hp, Wp, L) at (top, left), zeros around and in the lanes
/// past C.
fn pack<T: Float>(
    isa: Isa,
    x: &[T],
    (c, h, w): (usize, usize, usize),
    at: (usize, usize),
    (hp, wp): (usize, usize),
    xb: &mut [T],
) {
    let (top, left) = at;
    let plane = h * w;
    for (cb, blk) in xb[..c.next_multiple_of(L) * hp * wp]
        .chunks_exact_mut(hp * wp * L)
        .enumerate()
    {
        blk[..top * wp * L].fill(T::zero());
        blk[(top + h) * wp * L..].fill(T::zero());
        let ns = (c - cb * L).min(L);
        for r in 0..h {
            let row = &mut blk[(top + r) * wp * L..(top + r + 1) * wp * L];
            row[..left * L].fill(T::zero());
            row[(left + w) * L..].fill(T::zero());
            let src = &x[cb * L * plane + r * w..];
            rows_to_lanes(isa, src, plane, ns, w, &mut row[left * L..(left + w) * L]);
        }
    }
}

/// The packed output yb (K'/L, m·th, m·tw, L), its whole tiles cropped to (OH, OW), back
/// into y (K, OH, OW).
fn unpack<T: Float>(isa: Isa, t: &Tiling, yb: &[T], y: &mut [T]) {
    let (plane, owp) = (t.oh * t.ow, t.owp());
    for kb in 0..t.kp / L {
        let ns = (t.k - kb * L).min(L);
        for r in 0..t.oh {
            let src = &yb[((kb * t.ohp() + r) * owp) * L..][..t.ow * L];
            lanes_to_rows(
                isa,
                src,
                ns,
                t.ow,
                &mut y[kb * L * plane + r * t.ow..],
                plane,
            );
        }
    }
}

/// G of a filtering, (m + 2) × 3: a kernel's transform is G g Gᵀ.
fn g_matrix(tile: Tile) -> &'static [[f64; 3]] {
    const SIXTH: f64 = 1.0 / 6.0;
    match tile {
        Tile::F2 => &[
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ],
        Tile::F4 => &[
            [0.25, 0.0, 0.0],
            [-SIXTH, -SIXTH, -SIXTH],
            [-SIXTH, SIXTH, -SIXTH],
            [SIXTH / 4.0, SIXTH / 2.0, SIXTH],
            [SIXTH / 4.0, -SIXTH / 2.0, SIXTH],
            [0.0, 0.0, 1.0],
        ],
    }
}

/// Transformed kernels U (P, C_in', K') of w (K, C_in, 3, 3), U_p = (G g Gᵀ)_p, zeros in the
/// padded channels, computed in f64. With `flip`, the input gradient's kernels instead: w's
/// channel axes swapped and each kernel turned by 180°, U (P, K', C_in'). In parallel over the
/// rows of U (run on one thread it was 1.6 % of a ResNet-20 training step, the other core
/// idle), each row's positions first side by side, (ins', P, outs'), then moved into place.
fn transform_kernels<T: Float>(tile: Tile, w: &[T], k: usize, c: usize, flip: bool) -> Vec<T> {
    let (ins, outs) = if flip { (k, c) } else { (c, k) };
    let (ins_p, outs_p) = (ins.next_multiple_of(L), outs.next_multiple_of(L));
    let gm = g_matrix(tile);
    let (a, p) = (gm.len(), gm.len() * gm.len());
    let mut rows = vec![T::zero(); ins_p * p * outs_p]; // (ins', P, outs')
    rows.par_chunks_mut(p * outs_p)
        .take(ins)
        .enumerate()
        .for_each(|(i_in, row)| {
            for i_out in 0..outs {
                let (oc, ic) = if flip { (i_in, i_out) } else { (i_out, i_in) };
                let at = (oc * c + ic) * 9;
                let g: [f64; 9] =
                    std::array::from_fn(|i| if flip { w[at + 8 - i] } else { w[at + i] }.f64());
                // G g (a × 3), then (G g) Gᵀ (a × a).
                let mut gg = [[0.0f64; 3]; 6];
                for (ggi, r) in gg.iter_mut().zip(gm) {
                    *ggi = std::array::from_fn(|j| (0..3).map(|t| r[t] * g[3 * t + j]).sum());
                }
                for (i, ggi) in gg[..a].iter().enumerate() {
                    for (j, gj) in gm.iter().enumerate() {
                        let v: f64 = (0..3).map(|t| ggi[t] * gj[t]).sum();
                        row[(a * i + j) * outs_p + i_out] = T::of(v);
                    }
                }
            }
        });
    let mut u = vec![T::zero(); p * ins_p * outs_p]; // (P, ins', outs')
    u.par_chunks_mut(ins_p * outs_p)
        .enumerate()
        .for_each(|(q, up)| {
            for (i, dst) in up.chunks_exact_mut(outs_p).enumerate() {
                dst.copy_from_slice(&rows[(i * p + q) * outs_p..][..outs_p]);
            }
        });
    u
}

/// dW (K, C, 3, 3) += Gᵀ du G of the transformed gradient du (A², C', K'), A = m + 2: along
/// K', the contiguous axis, for one input channel at a time (gathering each kernel's A²
/// values across the positions was 2.8 % of ResNet-20's training step).
fn untransform_grad<T: Float>(
    tile: Tile,
    du: &[T],
    (k, c, cp, kp): (usize, usize, usize, usize),
    dw: &mut [T],
) {
    let gm = g_matrix(tile);
    let a = gm.len();
    let mut e = vec![T::zero(); 3 * a * kp]; // (3, A, K'): Gᵀ du, down the rows
    let mut out = vec![T::zero(); 9 * kp]; // (3, 3, K'): then · G, along them
    for ic in 0..c {
        e.fill(T::zero());
        for (i, gi) in gm.iter().enumerate() {
            for j in 0..a {
                let row = &du[((i * a + j) * cp + ic) * kp..][..kp];
                for (r, &g) in gi.iter().enumerate().filter(|(_, &g)| g != 0.0) {
                    let g = T::of(g);
                    let dst = &mut e[(r * a + j) * kp..][..kp];
                    dst.iter_mut().zip(row).for_each(|(d, &v)| *d += g * v);
                }
            }
        }
        out.fill(T::zero());
        for r in 0..3 {
            for (j, gj) in gm.iter().enumerate() {
                let src = &e[(r * a + j) * kp..][..kp];
                for (q, &g) in gj.iter().enumerate().filter(|(_, &g)| g != 0.0) {
                    let g = T::of(g);
                    let dst = &mut out[(3 * r + q) * kp..][..kp];
                    dst.iter_mut().zip(src).for_each(|(d, &v)| *d += g * v);
                }
            }
        }
        for oc in 0..k {
            let at = (oc * c + ic) * 9;
            for (q, d) in dw[at..at + 9].iter_mut().enumerate() {
                *d += out[q * kp + oc];
            }
        }
    }
}

/// Bᵀ applied to one line of a patch: A (4 or 6) vectors of `src`, `s` apart, into A
/// vectors of `dst`, `d` apart. In f32 with AVX2 or AVX-512, by the build's registers: the
/// compiler's own vectorisation of these lines shuffled lanes across neighbouring vectors
/// and went through the stack (a third of F(4×4, 3×3)'s time).
#[inline(always)]
fn input_line<T: Float, const FMA: bool, const U: usize, const A: usize>(
    src: &[T],
    s: usize,
    dst: &mut [T],
    d: usize,
) {
    assert!(src.len() >= (A - 1) * s + L && dst.len() >= (A - 1) * d + L);
    #[cfg(target_arch = "x86_64")]
    if FMA && TypeId::of::<T>() == TypeId::of::<f32>() {
        let (src, dst) = (src.as_ptr() as *const f32, dst.as_mut_ptr() as *mut f32);
        // SAFETY: FMA is set only in the AVX2 and AVX-512 builds (`multiversion!`), U == 2
        // only in the latter; T is f32; the assert bounds every access (A vectors of L).
        unsafe {
            if U == 2 {
                input_line_avx512::<A>(src, s, dst, d);
            } else {
                input_line_avx2::<A>(src, s, dst, d);
            }
        }
        return;
    }
    let (two, four, five) = (T::of(2.0), T::of(4.0), T::of(5.0));
    for l in 0..L {
        let x = |k: usize| src[k * s + l];
        let r: [T; A] = std::array::from_fn(|i| match (A, i) {
            // Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]
            (4, 0) => x(0) - x(2),
            (4, 1) => x(1) + x(2),
            (4, 2) => x(2) - x(1),
            (4, 3) => x(1) - x(3),
            // Bᵀ = [4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0;
            //       0 2 −1 −2 1 0; 0 4 0 −5 0 1]
            (_, 0) => four * x(0) - five * x(2) + x(4),
            (_, 1) => (x(4) - four * x(2)) + (x(3) - four * x(1)),
            (_, 2) => (x(4) - four * x(2)) - (x(3) - four * x(1)),
            (_, 3) => (x(4) - x(2)) + two * (x(3) - x(1)),
            (_, 4) => (x(4) - x(2)) - two * (x(3) - x(1)),
            _ => four * x(1) - five * x(3) + x(5),
        });
        for (i, &v) in r.iter().enumerate() {
            dst[i * d + l] = v;
        }
    }
}

/// Aᵀ applied to one line of A (4 or 6) products, `src` vectors `s` apart, into m = A − 2
/// vectors of `dst`, `d` apart, each plus `bias` (L values). By the build's registers in f32,
/// as [`input_line`].
#[inline(always)]
fn output_line<T: Float, const FMA: bool, const U: usize, const A: usize>(
    src: &[T],
    s: usize,
    dst: &mut [T],
    d: usize,
    bias: &[T],
) {
    assert!(src.len() >= (A - 1) * s + L && dst.len() >= (A - 3) * d + L && bias.len() >= L);
    #[cfg(target_arch = "x86_64")]
    if FMA && TypeId::of::<T>() == TypeId::of::<f32>() {
        let (src, dst) = (src.as_ptr() as *const f32, dst.as_mut_ptr() as *mut f32);
        let bias = bias.as_ptr() as *const f32;
        // SAFETY: as in `input_line`; the assert bounds every access.
        unsafe {
            if U == 2 {
                output_line_avx512::<A>(src, s, dst, d, bias);
            } else {
                output_line_avx2::<A>(src, s, dst, d, bias);
            }
        }
        return;
    }
    let (two, four, eight) = (T::of(2.0), T::of(4.0), T::of(8.0));
    for l in 0..L {
        let x = |k: usize| src[k * s + l];
        let b = bias[l];
        if A == 4 {
            // Aᵀ = [1 1 1 0; 0 1 −1 −1]
            dst[l] = x(0) + x(1) + x(2) + b;
            dst[d + l] = x(1) - x(2) - x(3) + b;
        } else {
            // Aᵀ = [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1]
            let (s12, d12, s34, d34) = (x(1) + x(2), x(1) - x(2), x(3) + x(4), x(3) - x(4));
            dst[l] = x(0) + s12 + s34 + b;
            dst[d + l] = d12 + two * d34 + b;
            dst[2 * d + l] = s12 + four * s34 + b;
            dst[3 * d + l] = d12 + eight * d34 + x(5) + b;
        }
    }
}

/// [`input_line`] and [`output_line`] in f32 with one instruction set, `$w` lanes a register.
macro_rules! simd_lines {
    ($input:ident, $output:ident, $grad:ident, $feature:literal, $w:literal, $load:ident,
     $store:ident, $add:ident, $sub:ident, $mul:ident, $set1:ident) => {
        /// [`grad_line`] in f32 (its safety contract: A − 2 vectors of L at `s` apart, A at
        /// `d` apart).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn $grad<const A: usize>(src: *const f32, s: usize, dst: *mut f32, d: usize) {
            use std::arch::x86_64::*;
            let (two, four, eight) = ($set1(2.0), $set1(4.0), $set1(8.0));
            for h in (0..L).step_by($w) {
                macro_rules! y {
                    ($k:expr) => {
                        $load(src.add($k * s + h))
                    };
                }
                macro_rules! put {
                    ($k:expr, $v:expr) => {
                        $store(dst.add($k * d + h), $v)
                    };
                }
                if A == 4 {
                    let (y0, y1) = (y!(0), y!(1));
                    put!(0, y0);
                    put!(1, $add(y0, y1));
                    put!(2, $sub(y0, y1));
                    put!(3, $sub($set1(0.0), y1));
                } else {
                    let (y0, y1, y2, y3) = (y!(0), y!(1), y!(2), y!(3));
                    let (a, b) = ($add(y0, y2), $add(y1, y3));
                    let c = $add(y0, $mul(four, y2));
                    let e = $add($mul(two, y1), $mul(eight, y3));
                    put!(0, y0);
                    put!(1, $add(a, b));
                    put!(2, $sub(a, b));
                    put!(3, $add(c, e));
                    put!(4, $sub(c, e));
                    put!(5, y3);
                }
            }
        }

        /// [`input_line`] in f32 (its safety contract: A vectors of L at `s` and `d` apart).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn $input<const A: usize>(src: *const f32, s: usize, dst: *mut f32, d: usize) {
            use std::arch::x86_64::*;
            let (two, four, five) = ($set1(2.0), $set1(4.0), $set1(5.0));
            for h in (0..L).step_by($w) {
                macro_rules! x {
                    ($k:expr) => {
                        $load(src.add($k * s + h))
                    };
                }
                macro_rules! put {
                    ($k:expr, $v:expr) => {
                        $store(dst.add($k * d + h), $v)
                    };
                }
                if A == 4 {
                    let (d0, d1, d2, d3) = (x!(0), x!(1), x!(2), x!(3));
                    put!(0, $sub(d0, d2));
                    put!(1, $add(d1, d2));
                    put!(2, $sub(d2, d1));
                    put!(3, $sub(d1, d3));
                } else {
                    let (d0, d1, d2, d3, d4, d5) = (x!(0), x!(1), x!(2), x!(3), x!(4), x!(5));
                    let (a, b) = ($sub(d4, $mul(four, d2)), $sub(d3, $mul(four, d1)));
                    let (c, e) = ($sub(d4, d2), $mul(two, $sub(d3, d1)));
                    put!(0, $add($sub($mul(four, d0), $mul(five, d2)), d4));
                    put!(1, $add(a, b));
                    put!(2, $sub(a, b));
                    put!(3, $add(c, e));
                    put!(4, $sub(c, e));
                    put!(5, $add($sub($mul(four, d1), $mul(five, d3)), d5));
                }
            }
        }

        /// [`output_line`] in f32 (its safety contract: A vectors of L at `s` apart, A − 2 at
        /// `d` apart, L of bias).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn $output<const A: usize>(
            src: *const f32,
            s: usize,
            dst: *mut f32,
            d: usize,
            bias: *const f32,
        ) {
            use std::arch::x86_64::*;
            let (two, four, eight) = ($set1(2.0), $set1(4.0), $set1(8.0));
            for h in (0..L).step_by($w) {
                macro_rules! x {
                    ($k:expr) => {
                        $load(src.add($k * s + h))
                    };
                }
                let b = $load(bias.add(h));
                macro_rules! put {
                    ($k:expr, $v:expr) => {
                        $store(dst.add($k * d + h), $add($v, b))
                    };
                }
                if A == 4 {
                    let (m0, m1, m2, m3) = (x!(0), x!(1), x!(2), x!(3));
                    put!(0, $add($add(m0, m1), m2));
                    put!(1, $sub($sub(m1, m2), m3));
                } else {
                    let (m1, m2, m3, m4) = (x!(1), x!(2), x!(3), x!(4));
                    let (s12, d12) = ($add(m1, m2), $sub(m1, m2));
                    let (s34, d34) = ($add(m3, m4), $sub(m3, m4));
                    put!(0, $add($add(x!(0), s12), s34));
                    put!(1, $add(d12, $mul(two, d34)));
                    put!(2, $add(s12, $mul(four, s34)));
                    put!(3, $add($add(d12, $mul(eight, d34)), x!(5)));
                }
            }
        }
    };
}

simd_lines!(
    input_line_avx512,
    output_line_avx512,
    grad_line_avx512,
    "avx512f",
    16,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_add_ps,
    _mm512_sub_ps,
    _mm512_mul_ps,
    _mm512_set1_ps
);
simd_lines!(
    input_line_avx2,
    output_line_avx2,
    grad_line_avx2,
    "avx2,fma",
    8,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_add_ps,
    _mm256_sub_ps,
    _mm256_mul_ps,
    _mm256_set1_ps
);

/// V (A², nt, C') of tiles t0..t0 + nt from the packed input xb (C'/L, Hp, Wp, L): Bᵀ d B of
/// each A×A patch (A = m + 2) and channel vector.
#[inline(always)]
fn transform_input<T: Float, const FMA: bool, const U: usize, const A: usize>(
    t: &Tiling,
    xb: &[T],
    t0: usize,
    nt: usize,
    v: &mut [T],
) {
    debug_assert_eq!(A, t.tile.m() + 2);
    let (hp, wp, cp, m) = (t.hp(), t.wp(), t.cp, A - 2);
    // Each row of the patch transformed along the row: e (A, A, L).
    let mut e = [T::zero(); 36 * L];
    let pos = A * nt * cp; // between two rows of positions in v
    for ti in 0..nt {
        let (tr, tc) = ((t0 + ti) / t.tw, (t0 + ti) % t.tw);
        for cb in 0..cp / L {
            let base = cb * hp * wp;
            for i in 0..A {
                let row = (base + (m * tr + i) * wp + m * tc) * L;
                input_line::<T, FMA, U, A>(&xb[row..], L, &mut e[i * A * L..], L);
            }
            // Then each column of that, down the rows, into positions (·, j).
            for j in 0..A {
                let at = (j * nt + ti) * cp + cb * L;
                input_line::<T, FMA, U, A>(&e[j * L..], A * L, &mut v[at..], pos);
            }
        }
    }
}

/// Aᵀ m A + bias of tiles t0..t0 + nt: m (A², nt, K') into the packed output yb (K'/L, m·th,
/// m·tw, L).
#[inline(always)]
fn transform_output<T: Float, const FMA: bool, const U: usize, const A: usize>(
    t: &Tiling,
    m: &[T],
    bias: &[T],
    t0: usize,
    nt: usize,
    yb: &mut [T],
) {
    let (kp, ohp, owp, mo) = (t.kp, t.ohp(), t.owp(), A - 2);
    // Each column of the A×A products transformed down the rows: a (m, A, L).
    let mut a = [T::zero(); 24 * L];
    let zero = [T::zero(); L];
    for ti in 0..nt {
        let (tr, tc) = ((t0 + ti) / t.tw, (t0 + ti) % t.tw);
        for kb in 0..kp / L {
            for j in 0..A {
                let at = (j * nt + ti) * kp + kb * L;
                output_line::<T, FMA, U, A>(&m[at..], A * nt * kp, &mut a[j * L..], A * L, &zero);
            }
            // Then each row of that, along the row, into m outputs.
            let b = &bias[kb * L..kb * L + L];
            for i in 0..mo {
                let at = ((kb * ohp + mo * tr + i) * owp + mo * tc) * L;
                output_line::<T, FMA, U, A>(&a[i * A * L..], L, &mut yb[at..], L, b);
            }
        }
    }
}

/// A applied to one line of m = A − 2 dY vectors of `src`, `s` apart, into A vectors of
/// `dst`, `d` apart (the weight gradient's counterpart of [`output_line`]). By the build's
/// registers in f32, as [`input_line`].
#[inline(always)]
fn grad_line<T: Float, const FMA: bool, const U: usize, const A: usize>(
    src: &[T],
    s: usize,
    dst: &mut [T],
    d: usize,
) {
    assert!(src.len() >= (A - 3) * s + L && dst.len() >= (A - 1) * d + L);
    #[cfg(target_arch = "x86_64")]
    if FMA && TypeId::of::<T>() == TypeId::of::<f32>() {
        let (src, dst) = (src.as_ptr() as *const f32, dst.as_mut_ptr() as *mut f32);
        // SAFETY: as in `input_line`; the assert bounds every access.
        unsafe {
            if U == 2 {
                grad_line_avx512::<A>(src, s, dst, d);
            } else {
                grad_line_avx2::<A>(src, s, dst, d);
            }
        }
        return;
    }
    let (two, four, eight) = (T::of(2.0), T::of(4.0), T::of(8.0));
    for l in 0..L {
        let y = |k: usize| src[k * s + l];
        let r: [T; A] = std::array::from_fn(|i| match (A, i) {
            // A = [1 0; 1 1; 1 −1; 0 −1]
            (4, 0) => y(0),
            (4, 1) => y(0) + y(1),
            (4, 2) => y(0) - y(1),
            (4, _) => -y(1),
            // A = [1 0 0 0; 1 1 1 1; 1 −1 1 −1; 1 2 4 8; 1 −2 4 −8; 0 0 0 1]
            (_, 0) => y(0),
            (_, 1) => (y(0) + y(2)) + (y(1) + y(3)),
            (_, 2) => (y(0) + y(2)) - (y(1) + y(3)),
            (_, 3) => (y(0) + four * y(2)) + (two * y(1) + eight * y(3)),
            (_, 4) => (y(0) + four * y(2)) - (two * y(1) + eight * y(3)),
            _ => y(3),
        });
        for (i, &v) in r.iter().enumerate() {
            dst[i * d + l] = v;
        }
    }
}

/// A d Aᵀ of the m×m dY tiles t0..t0 + nt of the packed dY (K'/L, planes of `dp`, L) into dm
/// (A², nt, K').
#[inline(always)]
fn transform_output_grad<T: Float, const FMA: bool, const U: usize, const A: usize>(
    t: &Tiling,
    dyb: &[T],
    dp: DyPlanes,
    t0: usize,
    nt: usize,
    dm: &mut [T],
) {
    let (kp, mo) = (t.kp, A - 2);
    // Each row of the dY tile along the row: e (m, A, L).
    let mut e = [T::zero(); 24 * L];
    let pos = A * nt * kp; // between two rows of positions in dm
    for ti in 0..nt {
        let (tr, tc) = ((t0 + ti) / t.tw, (t0 + ti) % t.tw);
        for kb in 0..kp / L {
            for i in 0..mo {
                let at = ((kb * dp.rows + dp.top + mo * tr + i) * dp.cols + dp.left + mo * tc) * L;
                grad_line::<T, FMA, U, A>(&dyb[at..], L, &mut e[i * A * L..], L);
            }
            // Then each column of that, down the rows, into positions (·, j).
            for j in 0..A {
                let at = (j * nt + ti) * kp + kb * L;
                grad_line::<T, FMA, U, A>(&e[j * L..], A * L, &mut dm[at..], pos);
            }
        }
    }
}

/// The planes of a packed dY, (rows, cols) vectors each, dY's first value at (top, left), zeros
/// around it at least up to whole tiles: the weight gradient's own packing, or the input
/// gradient's (inside its padding), which the weight gradient then reads too.
#[derive(Clone, Copy, Debug)]
struct DyPlanes {
    rows: usize,
    cols: usize,
    top: usize,
    left: usize,
}

/// Strides of one [`outer_products`] call: between the scalars of two rows, between the
/// scalars of two steps, between the vectors of two steps, between two rows of sums.
#[derive(Clone, Copy)]
struct Strides {
    row: usize,
    step: usize,
    x_step: usize,
    out_row: usize,
}

/// out[i, q·L..(q + 1)·L] = (or += with ADD) Σ over `steps` r of s[i·row + r·step] ·
/// x[r·x_step + q·L..], for every row i < `rows` and vector q < `vecs`: sums of rank-1 updates,
/// in register blocks of `block` = (rows, vectors) (fewer at the edges). Both GEMM shapes of
/// this module: the products (rows = tiles, steps = input channels) and the weight gradient
/// (rows = input channels, steps = tiles).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn outer_products<T: Float, const FMA: bool, const U: usize, const ADD: bool>(
    block: (usize, usize),
    (rows, steps, vecs): (usize, usize, usize),
    st: Strides,
    s: &[T],
    x: &[T],
    out: &mut [T],
) {
    let (ib, kb) = block;
    let mut r0 = 0;
    while r0 < rows {
        let ni = ib.min(rows - r0);
        let mut k0 = 0;
        while k0 < vecs {
            let nk = kb.min(vecs - k0);
            let (sb, xb) = (&s[r0 * st.row..], &x[k0 * L..]);
            let ob = &mut out[r0 * st.out_row + k0 * L..];
            macro_rules! go {
                ($($i:literal, $k:literal);*) => {
                    match (ni, nk) {
                        $(($i, $k) => outer_block::<T, FMA, U, ADD, $i, $k>(steps, st, sb, xb, ob),)*
                        _ => unreachable!("blocks come from `blocking`"),
                    }
                };
            }
            go!(16, 1; 15, 1; 14, 1; 13, 1; 12, 1; 11, 1; 10, 1; 9, 1; 8, 2; 8, 1; 7, 2; 7, 1;
                6, 4; 6, 3; 6, 2; 6, 1; 5, 4; 5, 3; 5, 2; 5, 1; 4, 4; 4, 3; 4, 2; 4, 1;
                3, 4; 3, 3; 3, 2; 3, 1; 2, 4; 2, 3; 2, 2; 2, 1; 1, 4; 1, 3; 1, 2; 1, 1);
            k0 += nk;
        }
        r0 += ni;
    }
}

/// One register block of [`outer_products`]: I rows × KB vectors of sums, s, x and out at the
/// block's origin.
#[inline(always)]
fn outer_block<
    T: Float,
    const FMA: bool,
    const U: usize,
    const ADD: bool,
    const I: usize,
    const KB: usize,
>(
    steps: usize,
    st: Strides,
    s: &[T],
    x: &[T],
    out: &mut [T],
) {
    if steps == 0 {
        return;
    }
    let last = steps - 1;
    assert!(s.len() > (I - 1) * st.row + last * st.step && x.len() >= last * st.x_step + KB * L);
    assert!(out.len() >= (I - 1) * st.out_row + KB * L);
    #[cfg(target_arch = "x86_64")]
    if FMA && TypeId::of::<T>() == TypeId::of::<f32>() {
        let (s, x) = (s.as_ptr() as *const f32, x.as_ptr() as *const f32);
        let out = out.as_mut_ptr() as *mut f32;
        // SAFETY: FMA is set only in the AVX2 and AVX-512 builds (`multiversion!`), U == 2
        // only in the latter; T is f32, so the casts are identities; the asserts bound every
        // access of the kernels (rows i < I, steps r < steps, vectors q < KB).
        unsafe {
            if U == 2 {
                outer_avx512::<ADD, I, KB>(steps, st, s, x, out);
            } else {
                outer_avx2::<ADD, I, KB>(steps, st, s, x, out);
            }
        }
        return;
    }
    let mut acc = [[[T::zero(); L]; KB]; I];
    for r in 0..steps {
        let mut xv = [[T::zero(); L]; KB];
        for (q, v) in xv.iter_mut().enumerate() {
            v.copy_from_slice(&x[r * st.x_step + q * L..][..L]);
        }
        for (i, ai) in acc.iter_mut().enumerate() {
            let sv = s[i * st.row + r * st.step];
            for (a, v) in ai.iter_mut().zip(&xv) {
                for l in 0..L {
                    a[l] = madd::<T, FMA>(a[l], sv, v[l]);
                }
            }
        }
    }
    for (i, ai) in acc.iter().enumerate() {
        for (q, a) in ai.iter().enumerate() {
            let dst = &mut out[i * st.out_row + q * L..][..L];
            for (d, &a) in dst.iter_mut().zip(a) {
                *d = if ADD { *d + a } else { a };
            }
        }
    }
}

/// [`outer_block`] in f32 with AVX-512. Plain loops, no closures, so that the sums stay in
/// registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn outer_avx512<const ADD: bool, const I: usize, const KB: usize>(
    steps: usize,
    st: Strides,
    s: *const f32,
    x: *const f32,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); KB]; I];
    let mut xv = [_mm512_setzero_ps(); KB];
    for r in 0..steps {
        for (q, v) in xv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(x.add(r * st.x_step + q * L));
        }
        for (i, ai) in acc.iter_mut().enumerate() {
            let sv = _mm512_set1_ps(*s.add(i * st.row + r * st.step));
            for (a, &v) in ai.iter_mut().zip(&xv) {
                *a = _mm512_fmadd_ps(sv, v, *a);
            }
        }
    }
    for (i, ai) in acc.iter().enumerate() {
        for (q, &a) in ai.iter().enumerate() {
            let d = out.add(i * st.out_row + q * L);
            let a = if ADD {
                _mm512_add_ps(_mm512_loadu_ps(d), a)
            } else {
                a
            };
            _mm512_storeu_ps(d, a);
        }
    }
}

/// [`outer_avx512`] with AVX2: a vector of L lanes in two registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn outer_avx2<const ADD: bool, const I: usize, const KB: usize>(
    steps: usize,
    st: Strides,
    s: *const f32,
    x: *const f32,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[[_mm256_setzero_ps(); 2]; KB]; I];
    let mut xv = [[_mm256_setzero_ps(); 2]; KB];
    for r in 0..steps {
        for (q, v) in xv.iter_mut().enumerate() {
            v[0] = _mm256_loadu_ps(x.add(r * st.x_step + q * L));
            v[1] = _mm256_loadu_ps(x.add(r * st.x_step + q * L + 8));
        }
        for (i, ai) in acc.iter_mut().enumerate() {
            let sv = _mm256_set1_ps(*s.add(i * st.row + r * st.step));
            for (a, v) in ai.iter_mut().zip(&xv) {
                a[0] = _mm256_fmadd_ps(sv, v[0], a[0]);
                a[1] = _mm256_fmadd_ps(sv, v[1], a[1]);
            }
        }
    }
    for (i, ai) in acc.iter().enumerate() {
        for (q, a) in ai.iter().enumerate() {
            for (h, &a) in a.iter().enumerate() {
                let d = out.add(i * st.out_row + q * L + 8 * h);
                let a = if ADD {
                    _mm256_add_ps(_mm256_loadu_ps(d), a)
                } else {
                    a
                };
                _mm256_storeu_ps(d, a);
            }
        }
    }
}

/// One sample: the packed output yb (K'/L, m·th, m·tw, L) = the correlation of the packed
/// input xb with the transformed kernels u (A², C', K'), + bias (K'), by the filtering with
/// A×A patches. Scratch v (A², block, C') and m (A², block, K').
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn correlate_sample_kernel<T: Float, const FMA: bool, const U: usize, const A: usize>(
    regs: (usize, usize),
    t: &Tiling,
    xb: &[T],
    u: &[T],
    bias: &[T],
    yb: &mut [T],
    v: &mut [T],
    m: &mut [T],
) {
    let (cp, kp) = (t.cp, t.kp);
    let (tiles, block) = (t.th * t.tw, t.tile.block_tiles());
    // m_p (nt, K') = v_p (nt, C') · u_p (C', K')
    let st = Strides {
        row: cp,
        step: 1,
        x_step: kp,
        out_row: kp,
    };
    for t0 in (0..tiles).step_by(block) {
        let nt = block.min(tiles - t0);
        transform_input::<T, FMA, U, A>(t, xb, t0, nt, v);
        for p in 0..A * A {
            let vp = &v[p * nt * cp..(p + 1) * nt * cp];
            let up = &u[p * cp * kp..(p + 1) * cp * kp];
            let mp = &mut m[p * nt * kp..(p + 1) * nt * kp];
            outer_products::<T, FMA, U, false>(regs, (nt, cp, kp / L), st, vp, up, mp);
        }
        transform_output::<T, FMA, U, A>(t, m, bias, t0, nt, yb);
    }
}
multiversion!(correlate_sample<A> => correlate_sample_kernel(regs: (usize, usize), t: &Tiling, xb: &[T], u: &[T], bias: &[T], yb: &mut [T], v: &mut [T], m: &mut [T]));

/// One sample's transformed weight gradient: du (A², C', K') += Σ over its tiles of
/// (Bᵀ d B)_pᵀ (A dY Aᵀ)_p, from the packed input xb and packed dY dyb (planes `dp`), by the
/// filtering with A×A patches.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_sample_kernel<T: Float, const FMA: bool, const U: usize, const A: usize>(
    regs: (usize, usize),
    t: &Tiling,
    xb: &[T],
    dyb: &[T],
    dp: DyPlanes,
    du: &mut [T],
    v: &mut [T],
    dm: &mut [T],
) {
    let (cp, kp) = (t.cp, t.kp);
    let tiles = t.th * t.tw;
    // du_p (C', K') += v_p (nt, C')ᵀ · dm_p (nt, K')
    let st = Strides {
        row: 1,
        step: cp,
        x_step: kp,
        out_row: kp,
    };
    let block = t.tile.block_tiles();
    for t0 in (0..tiles).step_by(block) {
        let nt = block.min(tiles - t0);
        transform_input::<T, FMA, U, A>(t, xb, t0, nt, v);
        transform_output_grad::<T, FMA, U, A>(t, dyb, dp, t0, nt, dm);
        for p in 0..A * A {
            let vp = &v[p * nt * cp..(p + 1) * nt * cp];
            let dmp = &dm[p * nt * kp..(p + 1) * nt * kp];
            let dup = &mut du[p * cp * kp..(p + 1) * cp * kp];
            outer_products::<T, FMA, U, true>(regs, (cp, nt, kp / L), st, vp, dmp, dup);
        }
    }
}
multiversion!(grad_sample<A> => grad_sample_kernel(regs: (usize, usize), t: &Tiling, xb: &[T], dyb: &[T], dp: DyPlanes, du: &mut [T], v: &mut [T], dm: &mut [T]));

/// The correlation of every sample of x (N, C, H, W) with kernels already transformed, u (P,
/// C', K'), + bias, into y (N, K, OH, OW): one sample per parallel task. Scratch per thread:
/// the packed input; the products and the packed output; the transformed input.
#[allow(clippy::too_many_arguments)]
fn correlate<T: Float>(
    isa: Isa,
    tile: Tile,
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    u: &[T],
    bias: Option<&[T]>,
    epi: Epilogue<'_, T>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    let t = Tiling::new(g, tile);
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let mut bp = vec![T::zero(); t.kp]; // (K')
    if let Some(b) = bias {
        bp[..t.k].copy_from_slice(&b[..t.k]);
    }
    let (p, block) = (tile.positions(), tile.block_tiles());
    let (m_len, v_len) = (p * block * t.kp, p * block * t.cp);
    let work = |bufs: &mut [Vec<T>; 3], s0: usize, s: usize, ys: &mut [T], _: &mut [u8]| {
        let [xb, my, v] = bufs;
        let (m, yb) = my.split_at_mut(m_len);
        for (si, yo) in ys.chunks_exact_mut(out_len).take(s).enumerate() {
            let xs = &x[(s0 + si) * in_len..(s0 + si + 1) * in_len];
            pack(
                isa,
                xs,
                (t.c, t.h, t.w),
                (t.top, t.left),
                (t.hp(), t.wp()),
                xb,
            );
            let regs = blocking(isa, t.kp);
            match tile {
                Tile::F2 => correlate_sample::<T, 4>(isa, regs, &t, xb, u, &bp, yb, v, m),
                Tile::F4 => correlate_sample::<T, 6>(isa, regs, &t, xb, u, &bp, yb, v, m),
            }
            unpack(isa, &t, yb, yo);
            epi.apply_at((s0 + si) * out_len, yo);
        }
    };
    let sizes = [t.packed_in(), m_len + t.packed_out(), v_len];
    forward_chunks(n, 1, out_len, y, (0, &mut []), scratch, sizes, work);
}

/// y = conv(x, w) + b for a batch of `n` by the filtering `tile`; needs [`fits`].
/// x: (N, C_in, H, W), w: (C_out, C_in, 3, 3), b: (C_out), y: (N, C_out, H_out, W_out).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Float>(
    isa: Isa,
    tile: Tile,
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    epi: Epilogue<'_, T>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    let u = transform_forward(tile, g, w);
    correlate(isa, tile, g, n, x, &u, b, epi, y, scratch);
}

/// The transformed kernels U (P, C_in', C_out') of [`forward`] for weights w.
pub(crate) fn transform_forward<T: Float>(tile: Tile, g: &Conv2dGeometry, w: &[T]) -> Vec<T> {
    transform_kernels(tile, w, g.out_channels, g.in_channels, false)
}

/// [`forward`] with its kernels transformed already, u = [`transform_forward`] of the same
/// `tile`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_transformed<T: Float>(
    isa: Isa,
    tile: Tile,
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    u: &[T],
    b: Option<&[T]>,
    epi: Epilogue<'_, T>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    correlate(isa, tile, g, n, x, u, b, epi, y, scratch);
}

/// Gradients of [`forward`] from dy (N, C_out, H_out, W_out): writes dx (N, C_in, H, W) if
/// asked, adds into dw (C_out, C_in, 3, 3) and db (C_out), each by the filtering `tile`.
/// Needs [`fits`]. A sample's dY is packed once for both: the input gradient correlates it,
/// padded, with the flipped kernels, and the weight gradient reads its tiles from the same
/// planes while they are in the cache (where its whole tiles lie inside them; else it packs
/// dY again). Partial sums are added chunk by chunk in order: bit-identical whatever the
/// thread count.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Float>(
    isa: Isa,
    tile: Tile,
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
    let gt = g
        .transposed()
        .expect("fits: the input gradient is a correlation over dY");
    let (t, tt) = (Tiling::new(g, tile), Tiling::new(&gt, tile)); // dW's, dX's
    let want_dx = dx.is_some();
    // (P, C_out', C_in'): the flipped kernels of dX's correlation.
    let u = want_dx.then(|| transform_kernels(tile, w, g.out_channels, g.in_channels, true));
    let zero_bias = vec![T::zero(); tt.kp]; // (C_in')
    let own = DyPlanes {
        rows: t.ohp(),
        cols: t.owp(),
        top: 0,
        left: 0,
    };
    let padded = DyPlanes {
        rows: tt.hp(),
        cols: tt.wp(),
        top: tt.top,
        left: tt.left,
    };
    let shared = padded.top + t.ohp() <= padded.rows && padded.left + t.owp() <= padded.cols;
    let (p, block) = (tile.positions(), tile.block_tiles());
    let (cp, kp) = (t.cp, t.kp);
    let (in_len, out_len, plane) = (g.in_len(), g.out_len(), g.out_h * g.out_w);
    // Products: dX's (P, block, C_in') and dW's (P, block, C_out'); transformed input: dX's
    // (P, block, C_out') and dW's (P, block, C_in').
    let m_len = p * block * cp.max(kp);
    let (dyb_len, dxb_len) = (tt.packed_in().max(t.packed_out()), tt.packed_out());
    let want_db = db.is_some();
    let work = |bufs: &mut [Vec<T>; 3], s0: usize, s: usize, mut dxc: Option<&mut [T]>| {
        let [xb, m_dyb_dxb, v] = bufs;
        let (m, rest) = m_dyb_dxb.split_at_mut(m_len);
        let (dyb, dxb) = rest.split_at_mut(dyb_len);
        let mut du = vec![T::zero(); p * cp * kp]; // (P, C', K')
        let mut pdb = bias_sums(t.k, want_db); // (C_out)
        for si in s0..s0 + s {
            let (xs, dys) = (&x[si * in_len..][..in_len], &dy[si * out_len..][..out_len]);
            let dp = match (dxc.as_deref_mut(), &u) {
                (Some(dxc), Some(u)) => {
                    let dk = (t.k, t.oh, t.ow);
                    pack(isa, dys, dk, (tt.top, tt.left), (tt.hp(), tt.wp()), dyb);
                    let regs = blocking(isa, tt.kp);
                    match tile {
                        Tile::F2 => {
                            correlate_sample::<T, 4>(isa, regs, &tt, dyb, u, &zero_bias, dxb, v, m)
                        }
                        Tile::F4 => {
                            correlate_sample::<T, 6>(isa, regs, &tt, dyb, u, &zero_bias, dxb, v, m)
                        }
                    }
                    unpack(isa, &tt, dxb, &mut dxc[(si - s0) * in_len..][..in_len]);
                    shared.then_some(padded)
                }
                _ => None,
            };
            // Else dY inside whole tiles: zeros past (OH, OW).
            let dp = dp.unwrap_or_else(|| {
                pack(isa, dys, (t.k, t.oh, t.ow), (0, 0), (t.ohp(), t.owp()), dyb);
                own
            });
            pack(
                isa,
                xs,
                (t.c, t.h, t.w),
                (t.top, t.left),
                (t.hp(), t.wp()),
                xb,
            );
            let regs = blocking(isa, kp);
            match tile {
                Tile::F2 => grad_sample::<T, 4>(isa, regs, &t, xb, dyb, dp, &mut du, v, m),
                Tile::F4 => grad_sample::<T, 6>(isa, regs, &t, xb, dyb, dp, &mut du, v, m),
            }
            add_bias_sums(&mut pdb, dys, plane);
        }
        let mut pdw = vec![T::zero(); g.weight_len()]; // (C_out, C_in, 3, 3)
        untransform_grad(tile, &du, (t.k, t.c, cp, kp), &mut pdw);
        (pdw, pdb.into_iter().map(T::of).collect())
    };
    let sizes = [t.packed_in(), m_len + dyb_len + dxb_len, m_len];
    backward_chunks(n, grad_chunk(n), in_len, dx, dw, db, scratch, sizes, work);
}

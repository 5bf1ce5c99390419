//! 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray 2016):
//! forward, input gradient and weight gradient, each as 16 GEMMs over the channels.
//!
//! Every 2×2 output tile is Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A, with d the 4×4 input patch under it and
//! g the 3×3 kernel. Summed over the input channels, the 16 element-wise products of a tile
//! become, position by position, one GEMM M_p (tiles × K) = V_p (tiles × C) · U_p (C × K): 16
//! multiply-adds per channel pair and tile where a direct or im2col convolution does 36, so
//! 2.25× fewer. The transforms are additions only (and halvings of the kernels).
//!
//! The channels lie across the vector lanes: a sample is first packed (C/L, Hp, Wp, L) inside
//! its padding, so that a transform is whole-vector additions of 16 neighbouring pixels, and
//! the GEMMs' sums are vectors of output channels; the weight gradient's sums run over the tiles
//! and need no sums across lanes. A sample is taken a block of tiles at a time, so that its
//! transformed input and products stay in the L2 cache.
use super::batch::{lanes_to_rows, rows_to_lanes};
use super::geometry::Conv2dGeometry;
use super::parallel::{add_bias_sums, backward_chunks, bias_sums, forward_chunks, ConvScratch};
use super::Epilogue;
use crate::ops::simd::{madd, Isa};
use crate::tensor::Float;
#[cfg(target_arch = "x86_64")]
use std::any::TypeId;

/// Channels per vector: one AVX-512 register of f32, two AVX2 ones.
const L: usize = 16;
/// Positions of a transformed 4×4 tile.
const P: usize = 16;
/// Tiles per block: the transformed input and the products of 64 channels take 384 KB each.
const BLOCK_TILES: usize = 96;
/// Samples whose transformed weight gradient is summed before it is turned back into dW's
/// 3×3 kernels and added in order (a constant: results must not depend on the thread count).
const GRAD_CHUNK: usize = 4;
/// Register blocking (tiles or input channels × vectors of output channels) of the GEMM
/// kernels: with AVX-512 the sums and the operands kept beside them fit 32 registers, with
/// AVX2 (two registers a vector) 16.
fn blocking(isa: Isa) -> (usize, usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (6, 4),
        _ => (2, 2),
    }
}

/// Tiles of one convolution, and the packed planes around them.
#[derive(Clone, Copy, Debug)]
struct Tiling {
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
    /// Tile rows and tiles per row (2×2 outputs each).
    th: usize,
    tw: usize,
}

impl Tiling {
    fn new(g: &Conv2dGeometry) -> Self {
        Tiling {
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
            th: g.out_h.div_ceil(2),
            tw: g.out_w.div_ceil(2),
        }
    }

    /// Rows and columns of the packed input plane: every tile's 4×4 patch inside it.
    fn hp(&self) -> usize {
        2 * self.th + 2
    }
    fn wp(&self) -> usize {
        2 * self.tw + 2
    }

    /// Elements of the packed input (C'/L, Hp, Wp, L).
    fn packed_in(&self) -> usize {
        self.cp * self.hp() * self.wp()
    }

    /// Elements of the packed output (K'/L, 2·th, 2·tw, L): whole tiles.
    fn packed_out(&self) -> usize {
        self.kp * 4 * self.th * self.tw
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

/// Transformed kernels U (P, C_in', K') of w (K, C_in, 3, 3), U_p = (G g Gᵀ)_p, zeros in the
/// padded channels. With `flip`, the input gradient's kernels instead: w's channel axes swapped
/// and each kernel turned by 180°, U (P, K', C_in').
fn transform_kernels<T: Float>(w: &[T], k: usize, c: usize, flip: bool) -> Vec<T> {
    let (ins, outs) = if flip { (k, c) } else { (c, k) };
    let (ins_p, outs_p) = (ins.next_multiple_of(L), outs.next_multiple_of(L));
    let mut u = vec![T::zero(); P * ins_p * outs_p]; // (P, ins', outs')
    let half = T::of(0.5);
    for oc in 0..k {
        for ic in 0..c {
            let at = (oc * c + ic) * 9;
            let g: [T; 9] = std::array::from_fn(|i| if flip { w[at + 8 - i] } else { w[at + i] });
            // G g: rows g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2 (4 × 3); then (G g) Gᵀ.
            let mut gg = [T::zero(); 12];
            for j in 0..3 {
                let (a, b, d) = (g[j], g[3 + j], g[6 + j]);
                gg[j] = a;
                gg[3 + j] = (a + b + d) * half;
                gg[6 + j] = (a - b + d) * half;
                gg[9 + j] = d;
            }
            let (i_in, i_out) = if flip { (oc, ic) } else { (ic, oc) };
            for i in 0..4 {
                let (a, b, d) = (gg[3 * i], gg[3 * i + 1], gg[3 * i + 2]);
                let row = [a, (a + b + d) * half, (a - b + d) * half, d];
                for (j, &v) in row.iter().enumerate() {
                    u[((4 * i + j) * ins_p + i_in) * outs_p + i_out] = v;
                }
            }
        }
    }
    u
}

/// dW (K, C, 3, 3) += Gᵀ du G of the transformed gradient du (P, C', K').
fn untransform_grad<T: Float>(du: &[T], k: usize, c: usize, cp: usize, kp: usize, dw: &mut [T]) {
    let half = T::of(0.5);
    for oc in 0..k {
        for ic in 0..c {
            let d: [T; P] = std::array::from_fn(|p| du[(p * cp + ic) * kp + oc]);
            // Gᵀ = [1 ½ ½ 0; 0 ½ −½ 0; 0 ½ ½ 1] down the columns, then along the rows.
            let mut e = [T::zero(); 12]; // (3, 4)
            for j in 0..4 {
                let (a, b, cc, dd) = (d[j], d[4 + j], d[8 + j], d[12 + j]);
                e[j] = a + (b + cc) * half;
                e[4 + j] = (b - cc) * half;
                e[8 + j] = (b + cc) * half + dd;
            }
            let at = (oc * c + ic) * 9;
            for i in 0..3 {
                let (a, b, cc, dd) = (e[4 * i], e[4 * i + 1], e[4 * i + 2], e[4 * i + 3]);
                dw[at + 3 * i] += a + (b + cc) * half;
                dw[at + 3 * i + 1] += (b - cc) * half;
                dw[at + 3 * i + 2] += (b + cc) * half + dd;
            }
        }
    }
}

/// L channels of one pixel or transformed position; the transforms' element-wise arithmetic
/// on them compiles to whole-vector instructions.
type Vector<T> = [T; L];

#[inline(always)]
fn load<T: Float>(buf: &[T], at: usize) -> Vector<T> {
    let mut v = [T::zero(); L];
    v.copy_from_slice(&buf[at..at + L]);
    v
}

#[inline(always)]
fn add<T: Float>(a: &Vector<T>, b: &Vector<T>) -> Vector<T> {
    let mut r = *a;
    for (r, &b) in r.iter_mut().zip(b) {
        *r += b;
    }
    r
}

#[inline(always)]
fn sub<T: Float>(a: &Vector<T>, b: &Vector<T>) -> Vector<T> {
    let mut r = *a;
    for (r, &b) in r.iter_mut().zip(b) {
        *r -= b;
    }
    r
}

#[inline(always)]
fn neg<T: Float>(a: &Vector<T>) -> Vector<T> {
    let mut r = *a;
    for r in r.iter_mut() {
        *r = -*r;
    }
    r
}

/// Bᵀ d B of the 4×4 patch of one channel vector: Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1].
#[inline(always)]
fn input_tile<T: Float>(d: &[[Vector<T>; 4]; 4]) -> [Vector<T>; P] {
    let mut q = [[[T::zero(); L]; 4]; 4];
    for j in 0..4 {
        q[0][j] = sub(&d[0][j], &d[2][j]);
        q[1][j] = add(&d[1][j], &d[2][j]);
        q[2][j] = sub(&d[2][j], &d[1][j]);
        q[3][j] = sub(&d[1][j], &d[3][j]);
    }
    let mut out = [[T::zero(); L]; P];
    for (i, qi) in q.iter().enumerate() {
        out[4 * i] = sub(&qi[0], &qi[2]);
        out[4 * i + 1] = add(&qi[1], &qi[2]);
        out[4 * i + 2] = sub(&qi[2], &qi[1]);
        out[4 * i + 3] = sub(&qi[1], &qi[3]);
    }
    out
}

/// V (P, nt, C') of tiles t0..t0 + nt from the packed input xb (C'/L, Hp, Wp, L).
#[inline(always)]
fn transform_input<T: Float>(t: &Tiling, xb: &[T], t0: usize, nt: usize, v: &mut [T]) {
    let (hp, wp, cp) = (t.hp(), t.wp(), t.cp);
    for ti in 0..nt {
        let (tr, tc) = ((t0 + ti) / t.tw, (t0 + ti) % t.tw);
        for cb in 0..cp / L {
            let base = cb * hp * wp;
            let mut d = [[[T::zero(); L]; 4]; 4];
            for (i, di) in d.iter_mut().enumerate() {
                let row = (base + (2 * tr + i) * wp + 2 * tc) * L;
                for (j, dij) in di.iter_mut().enumerate() {
                    dij.copy_from_slice(&xb[row + j * L..row + (j + 1) * L]);
                }
            }
            for (p, vp) in input_tile(&d).iter().enumerate() {
                let at = (p * nt + ti) * cp + cb * L;
                v[at..at + L].copy_from_slice(vp);
            }
        }
    }
}

/// Aᵀ m A + bias of tiles t0..t0 + nt: m (P, nt, K') into the packed output yb (K'/L, 2·th,
/// 2·tw, L). Aᵀ = [1 1 1 0; 0 1 −1 −1].
#[inline(always)]
fn transform_output<T: Float>(t: &Tiling, m: &[T], bias: &[T], t0: usize, nt: usize, yb: &mut [T]) {
    let (kp, oh2, ow2) = (t.kp, 2 * t.th, 2 * t.tw);
    for ti in 0..nt {
        let (tr, tc) = ((t0 + ti) / t.tw, (t0 + ti) % t.tw);
        for kb in 0..kp / L {
            let mut mm = [[T::zero(); L]; P];
            for (p, mp) in mm.iter_mut().enumerate() {
                let at = (p * nt + ti) * kp + kb * L;
                mp.copy_from_slice(&m[at..at + L]);
            }
            let b = load(bias, kb * L);
            let mut a0 = [[T::zero(); L]; 4];
            let mut a1 = [[T::zero(); L]; 4];
            for j in 0..4 {
                a0[j] = add(&add(&mm[j], &mm[4 + j]), &mm[8 + j]);
                a1[j] = sub(&sub(&mm[4 + j], &mm[8 + j]), &mm[12 + j]);
            }
            let out = [
                add(&add(&add(&a0[0], &a0[1]), &a0[2]), &b),
                add(&sub(&sub(&a0[1], &a0[2]), &a0[3]), &b),
                add(&add(&add(&a1[0], &a1[1]), &a1[2]), &b),
                add(&sub(&sub(&a1[1], &a1[2]), &a1[3]), &b),
            ];
            for (q, o) in out.iter().enumerate() {
                let at = ((kb * oh2 + 2 * tr + q / 2) * ow2 + 2 * tc + q % 2) * L;
                yb[at..at + L].copy_from_slice(o);
            }
        }
    }
}

/// A d Aᵀ of the 2×2 dY tiles t0..t0 + nt of the packed dY (K'/L, 2·th, 2·tw, L) into dm (P,
/// nt, K'). A = [1 0; 1 1; 1 −1; 0 −1].
#[inline(always)]
fn transform_output_grad<T: Float>(t: &Tiling, dyb: &[T], t0: usize, nt: usize, dm: &mut [T]) {
    let (kp, oh2, ow2) = (t.kp, 2 * t.th, 2 * t.tw);
    for ti in 0..nt {
        let (tr, tc) = ((t0 + ti) / t.tw, (t0 + ti) % t.tw);
        for kb in 0..kp / L {
            let at = |a: usize, b: usize| ((kb * oh2 + 2 * tr + a) * ow2 + 2 * tc + b) * L;
            let d = [
                [load(dyb, at(0, 0)), load(dyb, at(0, 1))],
                [load(dyb, at(1, 0)), load(dyb, at(1, 1))],
            ];
            let rows = [
                d[0],
                [add(&d[0][0], &d[1][0]), add(&d[0][1], &d[1][1])],
                [sub(&d[0][0], &d[1][0]), sub(&d[0][1], &d[1][1])],
                [neg(&d[1][0]), neg(&d[1][1])],
            ];
            for (i, [a, b]) in rows.iter().enumerate() {
                let out = [*a, add(a, b), sub(a, b), neg(b)];
                for (j, o) in out.iter().enumerate() {
                    let dst = ((4 * i + j) * nt + ti) * kp + kb * L;
                    dm[dst..dst + L].copy_from_slice(o);
                }
            }
        }
    }
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
            go!(6, 4; 6, 3; 6, 2; 6, 1; 5, 4; 5, 3; 5, 2; 5, 1; 4, 4; 4, 3; 4, 2; 4, 1;
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

/// One sample: the packed output yb (K'/L, 2·th, 2·tw, L) = the correlation of the packed
/// input xb with the transformed kernels u (P, C', K'), + bias (K'). Scratch v (P, BLOCK_TILES,
/// C') and m (P, BLOCK_TILES, K').
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn correlate_sample_kernel<
    T: Float,
    const FMA: bool,
    const U: usize,
    const TB: usize,
    const KB: usize,
>(
    t: &Tiling,
    xb: &[T],
    u: &[T],
    bias: &[T],
    yb: &mut [T],
    v: &mut [T],
    m: &mut [T],
) {
    let (cp, kp) = (t.cp, t.kp);
    let tiles = t.th * t.tw;
    // m_p (nt, K') = v_p (nt, C') · u_p (C', K')
    let st = Strides {
        row: cp,
        step: 1,
        x_step: kp,
        out_row: kp,
    };
    for t0 in (0..tiles).step_by(BLOCK_TILES) {
        let nt = BLOCK_TILES.min(tiles - t0);
        transform_input(t, xb, t0, nt, v);
        for p in 0..P {
            let vp = &v[p * nt * cp..(p + 1) * nt * cp];
            let up = &u[p * cp * kp..(p + 1) * cp * kp];
            let mp = &mut m[p * nt * kp..(p + 1) * nt * kp];
            outer_products::<T, FMA, U, false>((TB, KB), (nt, cp, kp / L), st, vp, up, mp);
        }
        transform_output(t, m, bias, t0, nt, yb);
    }
}
multiversion!(correlate_sample<TB, KB> => correlate_sample_kernel(t: &Tiling, xb: &[T], u: &[T], bias: &[T], yb: &mut [T], v: &mut [T], m: &mut [T]));

/// One sample's transformed weight gradient: du (P, C', K') += Σ over its tiles of
/// (Bᵀ d B)_pᵀ (A dY Aᵀ)_p, from the packed input xb and packed dY dyb.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_sample_kernel<
    T: Float,
    const FMA: bool,
    const U: usize,
    const CB: usize,
    const KB: usize,
>(
    t: &Tiling,
    xb: &[T],
    dyb: &[T],
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
    for t0 in (0..tiles).step_by(BLOCK_TILES) {
        let nt = BLOCK_TILES.min(tiles - t0);
        transform_input(t, xb, t0, nt, v);
        transform_output_grad(t, dyb, t0, nt, dm);
        for p in 0..P {
            let vp = &v[p * nt * cp..(p + 1) * nt * cp];
            let dmp = &dm[p * nt * kp..(p + 1) * nt * kp];
            let dup = &mut du[p * cp * kp..(p + 1) * cp * kp];
            outer_products::<T, FMA, U, true>((CB, KB), (cp, nt, kp / L), st, vp, dmp, dup);
        }
    }
}
multiversion!(grad_sample<CB, KB> => grad_sample_kernel(t: &Tiling, xb: &[T], dyb: &[T], du: &mut [T], v: &mut [T], dm: &mut [T]));

/// The correlation of every sample of x (N, C, H, W) with kernels already transformed, u (P,
/// C', K'), + bias, into y (N, K, OH, OW): one sample per parallel task. Scratch per thread:
/// the packed input; the products and the packed output; the transformed input.
#[allow(clippy::too_many_arguments)]
fn correlate<T: Float>(
    isa: Isa,
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    u: &[T],
    bias: Option<&[T]>,
    epi: Epilogue<'_, T>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    let t = Tiling::new(g);
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let mut bp = vec![T::zero(); t.kp]; // (K')
    if let Some(b) = bias {
        bp[..t.k].copy_from_slice(&b[..t.k]);
    }
    let (m_len, v_len) = (P * BLOCK_TILES * t.kp, P * BLOCK_TILES * t.cp);
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
            match blocking(isa) {
                (6, 4) => correlate_sample::<T, 6, 4>(isa, &t, xb, u, &bp, yb, v, m),
                _ => correlate_sample::<T, 2, 2>(isa, &t, xb, u, &bp, yb, v, m),
            }
            // The packed output's whole tiles, cropped to (OH, OW), back to (K, OH, OW).
            let (plane, ow2) = (t.oh * t.ow, 2 * t.tw);
            for kb in 0..t.kp / L {
                let ns = (t.k - kb * L).min(L);
                for r in 0..t.oh {
                    let src = &yb[((kb * 2 * t.th + r) * ow2) * L..][..t.ow * L];
                    lanes_to_rows(
                        isa,
                        src,
                        ns,
                        t.ow,
                        &mut yo[kb * L * plane + r * t.ow..],
                        plane,
                    );
                }
            }
            epi.apply_at((s0 + si) * out_len, yo);
        }
    };
    let sizes = [t.packed_in(), m_len + t.packed_out(), v_len];
    forward_chunks(n, 1, out_len, y, (0, &mut []), scratch, sizes, work);
}

/// y = conv(x, w) + b for a batch of `n`; needs [`fits`].
/// x: (N, C_in, H, W), w: (C_out, C_in, 3, 3), b: (C_out), y: (N, C_out, H_out, W_out).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Float>(
    isa: Isa,
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    epi: Epilogue<'_, T>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    let u = transform_forward(g, w);
    correlate(isa, g, n, x, &u, b, epi, y, scratch);
}

/// The transformed kernels U (P, C_in', C_out') of [`forward`] for weights w.
pub(crate) fn transform_forward<T: Float>(g: &Conv2dGeometry, w: &[T]) -> Vec<T> {
    transform_kernels(w, g.out_channels, g.in_channels, false)
}

/// [`forward`] with its kernels transformed already, u = [`transform_forward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_transformed<T: Float>(
    isa: Isa,
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    u: &[T],
    b: Option<&[T]>,
    epi: Epilogue<'_, T>,
    y: &mut [T],
    scratch: &mut ConvScratch<T>,
) {
    correlate(isa, g, n, x, u, b, epi, y, scratch);
}

/// Gradients of [`forward`] from dy (N, C_out, H_out, W_out): writes dx (N, C_in, H, W) if
/// asked, adds into dw (C_out, C_in, 3, 3) and db (C_out). Needs [`fits`]. Partial sums are
/// added sample by sample in order: bit-identical whatever the thread count.
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
    let gt = g
        .transposed()
        .expect("fits: the input gradient is a correlation over dY");
    if let Some(dx) = dx {
        let u = transform_kernels(w, g.out_channels, g.in_channels, true); // (P, C_out', C_in')
        correlate(isa, &gt, n, dy, &u, None, Epilogue::default(), dx, scratch);
    }
    let t = Tiling::new(g);
    let (cp, kp) = (t.cp, t.kp);
    let (in_len, out_len, plane) = (g.in_len(), g.out_len(), g.out_h * g.out_w);
    let dm_len = P * BLOCK_TILES * kp;
    let want_db = db.is_some();
    let work = |bufs: &mut [Vec<T>; 3], s0: usize, s: usize, _: Option<&mut [T]>| {
        let [xb, dyb_dm, v] = bufs;
        let (dm, dyb) = dyb_dm.split_at_mut(dm_len);
        let mut du = vec![T::zero(); P * cp * kp]; // (P, C', K')
        let mut pdb = bias_sums(t.k, want_db); // (C_out)
        for si in s0..s0 + s {
            let (xs, dys) = (&x[si * in_len..][..in_len], &dy[si * out_len..][..out_len]);
            pack(
                isa,
                xs,
                (t.c, t.h, t.w),
                (t.top, t.left),
                (t.hp(), t.wp()),
                xb,
            );
            // dY inside whole tiles: zeros past (OH, OW).
            pack(
                isa,
                dys,
                (t.k, t.oh, t.ow),
                (0, 0),
                (2 * t.th, 2 * t.tw),
                dyb,
            );
            match blocking(isa) {
                (6, 4) => grad_sample::<T, 6, 4>(isa, &t, xb, dyb, &mut du, v, dm),
                _ => grad_sample::<T, 2, 2>(isa, &t, xb, dyb, &mut du, v, dm),
            }
            add_bias_sums(&mut pdb, dys, plane);
        }
        let mut pdw = vec![T::zero(); g.weight_len()]; // (C_out, C_in, 3, 3)
        untransform_grad(&du, t.k, t.c, cp, kp, &mut pdw);
        (pdw, pdb.into_iter().map(T::of).collect())
    };
    let sizes = [t.packed_in(), dm_len + t.packed_out(), P * BLOCK_TILES * cp];
    backward_chunks(n, GRAD_CHUNK, in_len, None, dw, db, scratch, sizes, work);
}

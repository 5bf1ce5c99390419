//! Stride-2 convolutions 7 or 8 columns wide (the 7×7 stem) by Winograd's 1-D minimal
//! filtering F(4, 4) along the rows, with the output channels across the vector lanes.
//!
//! At stride 2, output column x reads the padded columns 2x + j: the even taps j = 2a read the
//! even columns E[x + a], the odd taps j = 2a + 1 the odd columns O[x + a]. So each kernel row
//! is two stride-1 correlations of at most 4 taps (the odd one padded with a zero tap), and
//! F(4, 4) gives 4 outputs of a 4-tap correlation from 7 transformed inputs with 7 products
//! instead of 16: y = Aᵀ [(G g) ⊙ (Bᵀ d)], d the 7 inputs under the tile. The products are
//! summed over the input channels, kernel rows and both phases in the transformed domain, so
//! 4 outputs of one output channel cost 7·2·C·kh multiply-adds where the direct kernel spends
//! 4·C·kh·kw: half as many for 7×7. Down the columns the convolution stays direct (row
//! 2·y + i of the transformed input), so the transforms stay 1-D: 7 values per 4 outputs,
//! where the 2-D F(2×2, 4×4) over the four phases needed 25 per 4 and lost to the direct
//! kernel (bench/README.md).
//!
//! Layouts: the transformed input V (7, C_g, 2 phases, Hp, pitch), a padded row per (channel,
//! phase, row) with one value per tile; the transformed weights U (7, C_g·kh·2, CB·16) per
//! block of CB·16 output channels, k = (channel, kernel row, phase).
use super::geometry::Conv2dGeometry;
#[cfg(target_arch = "x86_64")]
use crate::ops::simd::{first_lanes, transpose16, transpose8};
use crate::ops::simd::{madd, Isa};
use crate::tensor::Float;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::any::TypeId;

/// Lanes of one accumulator: one AVX-512 register of f32, two AVX2 ones.
const V: usize = 16;
/// Outputs per tile, taps per phase, and points of F(4, 4).
const M: usize = 4;
const R: usize = 4;
const N: usize = M + R - 1;

/// Kernel transform G (N × R): the phase kernel g evaluated at the points 0, 1, −1, 2, −2, ½
/// and ∞ (its last tap): row i is (1, pᵢ, pᵢ², pᵢ³).
const G: [[f64; R]; N] = [
    [1.0, 0.0, 0.0, 0.0],
    [1.0, 1.0, 1.0, 1.0],
    [1.0, -1.0, 1.0, -1.0],
    [1.0, 2.0, 4.0, 8.0],
    [1.0, -2.0, 4.0, -8.0],
    [1.0, 0.5, 0.25, 0.125],
    [0.0, 0.0, 0.0, 1.0],
];

/// Input transform Bᵀ (N × N): the transpose of the inverse of the 7-point evaluation
/// (Vandermonde) matrix of those points, exact rationals (Toom–Cook).
const BT: [[f64; N]; N] = [
    [1.0, -2.0, -5.0 / 4.0, 5.0 / 2.0, 1.0 / 4.0, -1.0 / 2.0, 0.0],
    [
        0.0,
        -2.0 / 3.0,
        2.0 / 3.0,
        3.0 / 2.0,
        -1.0 / 6.0,
        -1.0 / 3.0,
        0.0,
    ],
    [
        0.0,
        -2.0 / 9.0,
        2.0 / 3.0,
        -7.0 / 18.0,
        -1.0 / 6.0,
        1.0 / 9.0,
        0.0,
    ],
    [
        0.0,
        1.0 / 36.0,
        -1.0 / 24.0,
        -1.0 / 18.0,
        1.0 / 24.0,
        1.0 / 36.0,
        0.0,
    ],
    [
        0.0,
        1.0 / 60.0,
        -1.0 / 24.0,
        0.0,
        1.0 / 24.0,
        -1.0 / 60.0,
        0.0,
    ],
    [0.0, 128.0 / 45.0, 0.0, -32.0 / 9.0, 0.0, 32.0 / 45.0, 0.0],
    [0.0, -2.0, 4.0, 5.0 / 2.0, -5.0, -1.0 / 2.0, 1.0],
];

/// Output transform Aᵀ (M × N): row j holds pᵢ^j (and 1 for ∞ in the last row). Applied as
/// written out in [`output_tile`]; kept here for the test of the three matrices.
#[cfg(test)]
const AT: [[f64; N]; M] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 0.125, 1.0],
];

/// Sizes of the transformed input of one sample's group.
struct Rows {
    /// Input channels of a group, input rows and columns, padding before them.
    cg: usize,
    h: usize,
    w: usize,
    top: usize,
    left: usize,
    /// Padded rows; tiles per output row; values per transformed row (whole runs of tiles).
    hp: usize,
    tiles: usize,
    pitch: usize,
    /// A padded row, zero past the input: 8 columns per tile of the pitch and one more tile's.
    pad_len: usize,
    /// Distance between the points' planes: C_g · 2 · Hp · pitch.
    point_stride: usize,
    /// Offset of each k = (channel, kernel row, phase) in a point's plane.
    koffs: Vec<usize>,
}

impl Rows {
    fn new(g: &Conv2dGeometry, pb: usize) -> Self {
        let c = &g.cfg;
        let cg = g.in_channels / c.groups;
        let hp = g.in_h + c.pad_begin.0 + c.pad_end.0;
        let tiles = g.out_w.div_ceil(M);
        // Whole runs of tiles (a run never reads the next row's), whole vectors (the
        // transform writes V tiles at a time).
        let pitch = tiles.next_multiple_of(pb).next_multiple_of(V);
        let kh = c.kernel.0;
        let koffs = (0..cg)
            .flat_map(|ci| (0..kh).flat_map(move |ky| (0..2).map(move |ph| (ci, ky, ph))))
            .map(|(ci, ky, ph)| ((ci * 2 + ph) * hp + ky) * pitch)
            .collect();
        Rows {
            cg,
            h: g.in_h,
            w: g.in_w,
            top: c.pad_begin.0,
            left: c.pad_begin.1,
            hp,
            tiles,
            pitch,
            pad_len: 8 * pitch + 8,
            point_stride: cg * 2 * hp * pitch,
            koffs,
        }
    }

    /// Elements of the transformed input.
    fn len(&self) -> usize {
        N * self.point_stride
    }
}

/// Transforms one sample's group x (C_g, H, W) into v (N, C_g, 2, Hp, pitch): per padded row
/// and phase ph, tile t holds Bᵀ applied to the phase's columns 4t … 4t + 6 (padded columns
/// 8t + ph, 8t + ph + 2, …), V tiles at a time. pad: scratch of `pad_len`.
#[inline(always)]
fn transform_kernel<T: Float, const FMA: bool, const U: usize>(
    r: &Rows,
    x: &[T],
    v: &mut [T],
    pad: &mut [T],
) {
    let pad = &mut pad[..r.pad_len];
    for (ci, xc) in x.chunks_exact(r.h * r.w).enumerate() {
        for rr in 0..r.hp {
            let at =
                |pi: usize, ph: usize| pi * r.point_stride + ((ci * 2 + ph) * r.hp + rr) * r.pitch;
            if !(r.top..r.top + r.h).contains(&rr) {
                for pi in 0..N {
                    for ph in 0..2 {
                        v[at(pi, ph)..][..r.pitch].fill(T::zero());
                    }
                }
                continue;
            }
            let xrow = &xc[(rr - r.top) * r.w..][..r.w];
            #[cfg(target_arch = "x86_64")]
            if FMA && U == 2 && TypeId::of::<T>() == TypeId::of::<f32>() {
                let offs: [usize; 2 * N] = std::array::from_fn(|k| at(k % N, k / N));
                assert!(offs.iter().all(|&o| o + r.pitch <= v.len()));
                // SAFETY: U == 2 only in the AVX-512 build (`multiversion!`); T is f32, so the
                // casts are identities; the assert bounds every store.
                unsafe {
                    let xrow = &*(xrow as *const [T] as *const [f32]);
                    let v = &mut *(&mut v[..] as *mut [T] as *mut [f32]);
                    transform_row_avx512(xrow, r.left, r.pitch, v, offs);
                }
                continue;
            }
            pad.fill(T::zero());
            pad[r.left..r.left + r.w].copy_from_slice(xrow);
            for t0 in (0..r.pitch).step_by(V) {
                // d[q][l] = padded column 8(t0 + l) + q; input i of phase ph is q = 2i + ph.
                let d = deinterleave(&pad[8 * t0..]);
                for ph in 0..2 {
                    for (pi, bt) in BT.iter().enumerate() {
                        let dst = &mut v[at(pi, ph) + t0..][..V];
                        dst.fill(T::zero());
                        for (i, &b) in bt.iter().enumerate() {
                            if b != 0.0 {
                                let b = T::of(b);
                                for (a, &s) in dst.iter_mut().zip(&d[2 * i + ph]) {
                                    *a = madd::<T, FMA>(*a, b, s);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The first 2N = 14 of the 16 columns (8 per tile and the next tile's 8) of V consecutive
/// tiles: d[q][l] = row[8l + q]. row: at least 8·V + 8 values.
fn deinterleave<T: Float>(row: &[T]) -> [[T; V]; 2 * N] {
    let mut d = [[T::zero(); V]; 2 * N];
    for (q, dq) in d.iter_mut().enumerate() {
        for (l, x) in dq.iter_mut().enumerate() {
            *x = row[8 * l + q];
        }
    }
    d
}

/// [`transform_kernel`] of one input row with AVX-512: per V tiles, the padded row's columns
/// are read with masked loads (zeros outside the input), split into the 14 columns of each
/// tile by three rounds of even/odd splits of vector pairs (8 vectors of V tiles × 8 columns
/// to 8 columns of V tiles; once at the tiles, once a tile further on), then Bᵀ per phase.
/// xrow: the input row, starting `left` columns into the padded row; v[offs[ph·N + pi] + t]:
/// point pi of phase ph of tile t < pitch.
/// SAFETY: needs AVX-512F; every offs[k] + pitch ≤ v.len(); pitch a multiple of V.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_row_avx512(
    xrow: &[f32],
    left: usize,
    pitch: usize,
    v: &mut [f32],
    offs: [usize; 2 * N],
) {
    use std::arch::x86_64::*;
    let w = xrow.len() as isize;
    // The 16 padded columns from `col` on: masked-off lanes are neither read nor faulted on
    // (no branches: one masked load, whole or not).
    let load = |col: isize| {
        let start = col - left as isize;
        let lo = (-start).clamp(0, 16);
        let hi = (w - start).clamp(lo, 16);
        let mask = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16;
        _mm512_maskz_loadu_ps(mask, xrow.as_ptr().wrapping_offset(start))
    };
    let ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let split = |a: __m512, b: __m512| {
        (
            _mm512_permutex2var_ps(a, ev, b),
            _mm512_permutex2var_ps(a, od, b),
        )
    };
    // Columns 0 … 7 of V tiles whose first padded column is `col`.
    let columns = |col: isize| {
        let a: [__m512; 8] = std::array::from_fn(|k| load(col + 16 * k as isize));
        // Round 1: columns {0, 2, 4, 6} and {1, 3, 5, 7} of 4 tiles per vector.
        let (e0, o0) = split(a[0], a[1]);
        let (e1, o1) = split(a[2], a[3]);
        let (e2, o2) = split(a[4], a[5]);
        let (e3, o3) = split(a[6], a[7]);
        // Round 2: columns {0, 4}, {2, 6}, {1, 5}, {3, 7} of 8 tiles.
        let (c04a, c26a) = split(e0, e1);
        let (c04b, c26b) = split(e2, e3);
        let (c15a, c37a) = split(o0, o1);
        let (c15b, c37b) = split(o2, o3);
        // Round 3: one column of 16 tiles each.
        let (c0, c4) = split(c04a, c04b);
        let (c2, c6) = split(c26a, c26b);
        let (c1, c5) = split(c15a, c15b);
        let (c3, c7) = split(c37a, c37b);
        [c0, c1, c2, c3, c4, c5, c6, c7]
    };
    for t0 in (0..pitch).step_by(V) {
        let here = columns(8 * t0 as isize);
        let next = columns(8 * t0 as isize + 8);
        // Input i of phase ph: column q = 2i + ph of the tile, or q − 8 of the next one.
        let d = |q: usize| if q < 8 { here[q] } else { next[q - 8] };
        for ph in 0..2 {
            for (pi, bt) in BT.iter().enumerate() {
                let mut acc = _mm512_setzero_ps();
                for (i, &b) in bt.iter().enumerate() {
                    if b != 0.0 {
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(b as f32), d(2 * i + ph), acc);
                    }
                }
                _mm512_storeu_ps(v[offs[ph * N + pi] + t0..][..V].as_mut_ptr(), acc);
            }
        }
    }
}

multiversion!(transform => transform_kernel(r: &Rows, x: &[T], v: &mut [T], pad: &mut [T]));

/// Aᵀ m for one tile: the 4 outputs (per lane) from the 7 sums of products.
#[inline(always)]
fn output_tile<T: Float, const FMA: bool>(m: [T; N]) -> [T; M] {
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    let h = m[5];
    [
        m[0] + a + c + h,
        madd::<T, FMA>(madd::<T, FMA>(b, T::of(2.0), d), T::of(0.5), h),
        madd::<T, FMA>(madd::<T, FMA>(a, T::of(4.0), c), T::of(0.25), h),
        madd::<T, FMA>(madd::<T, FMA>(b, T::of(8.0), d), T::of(0.125), h) + m[6],
    ]
}

/// Forward of one block of CB·V output channels of one sample's group: for each run of PB
/// tiles of an output row, per point the PB·CB sums over k of U times V (a broadcast per tile),
/// then Aᵀ per tile and the 4·PB pixels stored planar.
/// v: the transformed input; ub: (N, K, CB·V); bias: (CB·V); y: (CB·V, H_out·W_out);
/// scratch: the sums m (N, PB, CB·V), then one row's outputs (4·pitch, CB·V). Scratch, not
/// local arrays: zero-filling those on every run was 13 % of the stem's profile.
#[inline(always)]
fn forward_kernel<T: Float, const FMA: bool, const U: usize, const CB: usize, const PB: usize>(
    r: &Rows,
    (out_h, out_w): (usize, usize),
    v: &[T],
    ub: &[T],
    bias: &[T],
    y: &mut [T],
    scratch: &mut [T],
) {
    let nk = r.koffs.len();
    let plane = out_h * out_w;
    let bw = CB * V;
    let (m, orow) = scratch.split_at_mut(N * PB * bw);
    let orow = &mut orow[..M * r.pitch * bw];
    for oh in 0..out_h {
        for t0 in (0..r.tiles).step_by(PB) {
            for (pi, mp) in m.chunks_exact_mut(PB * bw).enumerate() {
                let mut acc = [[[T::zero(); V]; CB]; PB];
                let vr = &v[pi * r.point_stride + 2 * oh * r.pitch + t0..];
                let up = &ub[pi * nk * bw..][..nk * bw];
                for (&off, wk) in r.koffs.iter().zip(up.chunks_exact(bw)) {
                    let mut wv = [[T::zero(); V]; CB];
                    for (d, src) in wv.iter_mut().zip(wk.chunks_exact(V)) {
                        d.copy_from_slice(src);
                    }
                    let xs = &vr[off..off + PB];
                    unroll16!(PB, |p| {
                        let xv = xs[p];
                        for (a, w) in acc[p].iter_mut().zip(&wv) {
                            for l in 0..V {
                                a[l] = madd::<T, FMA>(a[l], xv, w[l]);
                            }
                        }
                    });
                }
                for (dst, a) in mp.chunks_exact_mut(V).zip(acc.as_flattened()) {
                    dst.copy_from_slice(a);
                }
            }
            // Aᵀ per tile into the row's outputs (tiles past the row's end included).
            for q in 0..PB {
                for cb in 0..CB {
                    // Whole vectors of V channels (lane by lane, indexed by scalars, the
                    // transform compiled to scalar code).
                    let mut mv = [[T::zero(); V]; N];
                    for (pi, d) in mv.iter_mut().enumerate() {
                        d.copy_from_slice(&m[(pi * PB + q) * bw + cb * V..][..V]);
                    }
                    let mut ys = [[T::zero(); V]; M];
                    for l in 0..V {
                        let yl = output_tile::<T, FMA>(std::array::from_fn(|pi| mv[pi][l]));
                        for (yj, v) in ys.iter_mut().zip(yl) {
                            yj[l] = v;
                        }
                    }
                    for (j, yj) in ys.iter().enumerate() {
                        orow[(M * (t0 + q) + j) * bw + cb * V..][..V].copy_from_slice(yj);
                    }
                }
            }
        }
        let pos = oh * out_w;
        #[cfg(target_arch = "x86_64")]
        if FMA && TypeId::of::<T>() == TypeId::of::<f32>() {
            assert!(y.len() >= bw * plane && orow.len() >= out_w * bw && bias.len() >= bw);
            // SAFETY: FMA only in the AVX2 and AVX-512 builds of this kernel, U == 2 only in
            // the AVX-512 one (`multiversion!`); T is f32, so the casts are identities; the
            // assert bounds every load and store.
            unsafe {
                let orow = &*(&orow[..] as *const [T] as *const [f32]);
                let bias = &*(bias as *const [T] as *const [f32]);
                let y = y.as_mut_ptr() as *mut f32;
                if U == 2 {
                    store_row_avx512::<CB>(orow, bias, y, (plane, pos, out_w));
                } else {
                    store_row_avx2(bw, orow, bias, y, (plane, pos, out_w));
                }
            }
            continue;
        }
        for c in 0..bw {
            let dst = &mut y[c * plane + pos..][..out_w];
            for (p, d) in dst.iter_mut().enumerate() {
                *d = orow[p * bw + c] + bias[c];
            }
        }
    }
}
multiversion!(forward_block<CB, PB> => forward_kernel(r: &Rows, dims: (usize, usize), v: &[T], ub: &[T], bias: &[T], y: &mut [T], scratch: &mut [T]));

/// Stores one output row of CB·V channels planar with AVX-512, 16 pixels at a time: a 16×16
/// transpose in registers per vector of channels, then one masked store per channel:
/// y[oc·plane + pos + p] = orow[p·CB·V + oc] + bias[oc]. Streaming whole cache lines past the
/// caches instead (non-temporal stores) was tried: within noise at 2 threads (bench/README.md).
/// SAFETY: needs AVX-512F; y valid for CB·V·plane elements with pos + out_w ≤ plane; orow
/// holds out_w pixels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_row_avx512<const CB: usize>(
    orow: &[f32],
    bias: &[f32],
    y: *mut f32,
    (plane, pos, out_w): (usize, usize, usize),
) {
    use std::arch::x86_64::*;
    let bw = CB * V;
    for px0 in (0..out_w).step_by(16) {
        let np = (out_w - px0).min(16);
        let mask = ((1u32 << np) - 1) as __mmask16;
        for cb in 0..CB {
            let mut r = [_mm512_setzero_ps(); V];
            for (p, rp) in (px0..px0 + np).zip(&mut r) {
                *rp = _mm512_loadu_ps(orow[p * bw + cb * V..][..V].as_ptr());
            }
            for (l, col) in transpose16(r).iter().enumerate() {
                let oc = cb * V + l;
                let v = _mm512_add_ps(*col, _mm512_set1_ps(bias[oc]));
                _mm512_mask_storeu_ps(y.add(oc * plane + pos + px0), mask, v);
            }
        }
    }
}

/// [`store_row_avx512`] with AVX2, 8 pixels × 8 channels per 8×8 transpose, for bw channels.
/// SAFETY: needs AVX2; as [`store_row_avx512`], bw a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_row_avx2(
    bw: usize,
    orow: &[f32],
    bias: &[f32],
    y: *mut f32,
    (plane, pos, out_w): (usize, usize, usize),
) {
    use std::arch::x86_64::*;
    for px0 in (0..out_w).step_by(8) {
        let np = (out_w - px0).min(8);
        let mask = first_lanes(np);
        for c0 in (0..bw).step_by(8) {
            let mut r = [_mm256_setzero_ps(); 8];
            for (p, rp) in (px0..px0 + np).zip(&mut r) {
                *rp = _mm256_loadu_ps(orow[p * bw + c0..][..8].as_ptr());
            }
            for (l, col) in transpose8(r).iter().enumerate() {
                let oc = c0 + l;
                let v = _mm256_add_ps(*col, _mm256_set1_ps(bias[oc]));
                _mm256_maskstore_ps(y.add(oc * plane + pos + px0), mask, v);
            }
        }
    }
}

/// Register blocking: (CB vectors of channels, PB tiles per run). With AVX-512, two vectors
/// where the group has whole pairs, as in the direct lanes kernel, and CB·PB sums and CB
/// weight vectors within 32 registers; with AVX2 (a vector is two registers of 16) one vector
/// and PB·2 sums, 2 weight registers and a broadcast within 16. The run wastes the fewest
/// tiles of a row's last run (ties: the longer run).
fn blocking(isa: Isa, g: &Conv2dGeometry) -> (usize, usize) {
    let tiles = g.out_w.div_ceil(M);
    let waste = |pb: usize| tiles.div_ceil(pb) * pb - tiles;
    let opg = g.out_channels / g.cfg.groups;
    let (cb, runs): (usize, &[usize]) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (
            if opg.is_multiple_of(2 * V) { 2 } else { 1 },
            &[14, 12, 10, 8],
        ),
        _ => (1, &[6, 4]),
    };
    let pb = runs
        .iter()
        .copied()
        .min_by_key(|&pb| waste(pb))
        .unwrap_or(4);
    (cb, pb)
}

/// U for every block of bw output channels: (C_out/bw, N, C_g·kh·2, bw), each phase kernel
/// transformed in f64 and rounded once.
fn transform_weights<T: Float>(g: &Conv2dGeometry, w: &[T], bw: usize) -> Vec<T> {
    let (kh, kw) = g.cfg.kernel;
    let cg = g.in_channels / g.cfg.groups;
    let nk = cg * kh * 2;
    let mut u = vec![T::zero(); g.out_channels * N * nk];
    // w: (C_out, C_g, kh, kw); one kernel row of one channel pair at a time.
    for (oc, wo) in w.chunks_exact(cg * kh * kw).enumerate() {
        let (blk, lane) = (oc / bw, oc % bw);
        for (cr, wr) in wo.chunks_exact(kw).enumerate() {
            for ph in 0..2 {
                let gph: [f64; R] =
                    std::array::from_fn(|j| wr.get(2 * j + ph).map_or(0.0, |v| v.f64()));
                let k = cr * 2 + ph;
                for (pi, gr) in G.iter().enumerate() {
                    let s: f64 = gr.iter().zip(&gph).map(|(a, b)| a * b).sum();
                    u[((blk * N + pi) * nk + k) * bw + lane] = T::of(s);
                }
            }
        }
    }
    u
}

/// y = conv(x, w) + b for `n` samples; needs [`fits`]. One parallel task per block of CB·V
/// output channels of one sample's group, or whole samples where there are at least two per
/// thread (each sample's input is then transformed once).
pub(crate) fn forward<T: Float>(
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    forward_with(Isa::detect(), g, n, x, w, b, y)
}

/// [`forward`] with the kernels of `isa` (tests run every one this CPU has).
fn forward_with<T: Float>(
    isa: Isa,
    g: &Conv2dGeometry,
    n: usize,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    let groups = g.cfg.groups;
    let opg = g.out_channels / groups;
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let plane = g.out_h * g.out_w;
    let (cb, pb) = blocking(isa, g);
    let bw = cb * V;
    let rows = Rows::new(g, pb);
    let u = transform_weights(g, w, bw);
    let ublock = N * rows.koffs.len() * bw;
    let zeros = vec![T::zero(); g.out_channels];
    let bias = b.unwrap_or(&zeros);
    let dims = (g.out_h, g.out_w);
    let blocks = g.out_channels / bw;
    let group_blocks = opg / bw;
    let per_task = if n * groups >= 2 * rayon::current_num_threads() {
        group_blocks
    } else {
        1
    };
    let run_block = |v: &[T], ub: &[T], bb: &[T], yb: &mut [T], sc: &mut [T]| {
        macro_rules! run {
            ($cb:literal, $pb:literal) => {
                forward_block::<T, $cb, $pb>(isa, &rows, dims, v, ub, bb, yb, sc)
            };
        }
        match (cb, pb) {
            (2, 14) => run!(2, 14),
            (2, 12) => run!(2, 12),
            (2, 10) => run!(2, 10),
            (2, _) => run!(2, 8),
            (_, 14) => run!(1, 14),
            (_, 12) => run!(1, 12),
            (_, 10) => run!(1, 10),
            (_, 8) => run!(1, 8),
            (_, 6) => run!(1, 6),
            _ => run!(1, 4),
        }
    };
    let in_group = rows.cg * g.in_h * g.in_w;
    let scratch = rows.pad_len.max((N * pb + M * rows.pitch) * bw);
    y[..n * out_len]
        .par_chunks_mut(bw * plane * per_task)
        .enumerate()
        .for_each_init(
            // The transformed input of one sample's group, which one it holds, the kernels' scratch.
            || (Vec::new(), usize::MAX, vec![T::zero(); scratch]),
            |(v, held, sc), (task, yt)| {
                for (k, yb) in yt.chunks_mut(bw * plane).enumerate() {
                    let i = task * per_task + k;
                    let (si, bi) = (i / blocks, i % blocks);
                    let gi = bi * bw / opg;
                    if *held != si * groups + gi {
                        // Every value is written by the transform; the zeros are for the
                        // first use of this buffer only.
                        v.resize(rows.len(), T::zero());
                        let xg = &x[si * in_len + gi * in_group..][..in_group];
                        transform::<T>(isa, &rows, xg, v, sc);
                        *held = si * groups + gi;
                    }
                    run_block(
                        v,
                        &u[bi * ublock..][..ublock],
                        &bias[bi * bw..][..bw],
                        yb,
                        sc,
                    );
                }
            },
        );
}

#[cfg(test)]
mod tests {
    use super::super::{conv2d_forward_naive, Conv2dConfig};
    use super::*;
    use crate::ops::simd::test_isas;
    use rand::{Rng, SeedableRng};

    /// In f32 the outputs are stored through register transposes (AVX-512 and AVX2) and, with
    /// AVX-512, the rows transformed with masked loads and vector splits, which the f64 cases of
    /// conv's test of every path never reach: every instruction set against the naive kernel
    /// in f64.
    #[test]
    fn f32_matches_naive() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let cases = [
            // (C_in, H, W, C_out, kernel, pad_begin, pad_end, groups): rows of 16, 15, 12 and 60
            // pixels (one, a partial, three and a half groups of 16), 1 and 2 channel vectors.
            (3, 16, 32, 64, (7, 7), (3, 3), (3, 3), 1),
            (2, 31, 29, 32, (7, 7), (3, 3), (3, 3), 1),
            (2, 9, 27, 32, (3, 7), (0, 2), (1, 0), 2),
            (1, 10, 120, 32, (7, 8), (3, 3), (3, 3), 1),
        ];
        for (ci, h, w, co, kernel, pad_begin, pad_end, groups) in cases {
            let cfg = Conv2dConfig {
                kernel,
                stride: (2, 2),
                pad_begin,
                pad_end,
                groups,
                ..Default::default()
            };
            let g = Conv2dGeometry::new([ci, h, w], co, cfg).unwrap();
            assert!(super::super::plan::forward_fits(
                super::super::Forward::RowsWinograd,
                &g
            ));
            let n = 3;
            let mut draw =
                |len: usize| -> Vec<f64> { (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect() };
            let (x, wt, b) = (draw(n * g.in_len()), draw(g.weight_len()), draw(co));
            let mut want = vec![0.0; n * g.out_len()];
            conv2d_forward_naive(&g, n, &x, &wt, Some(&b), &mut want);
            let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            for isa in test_isas() {
                let mut y = vec![f32::NAN; n * g.out_len()];
                forward_with(isa, &g, n, &f32s(&x), &f32s(&wt), Some(&f32s(&b)), &mut y);
                for (i, (&a, &b)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (a as f64 - b).abs() < 1e-4 * b.abs().max(1.0),
                        "{cfg:?} at {i}: {a} against {b}"
                    );
                }
            }
        }
    }

    /// Aᵀ [(G g) ⊙ (Bᵀ d)] is the 4-tap correlation of d, for every pair of unit vectors.
    #[test]
    fn transforms_compute_the_correlation() {
        for j in 0..R {
            for i in 0..N {
                let gg: Vec<f64> = G.iter().map(|r| r[j]).collect();
                let bd: Vec<f64> = BT.iter().map(|r| r[i]).collect();
                for (o, at) in AT.iter().enumerate() {
                    let y: f64 = (0..N).map(|p| at[p] * gg[p] * bd[p]).sum();
                    let want = if i == o + j { 1.0 } else { 0.0 };
                    assert!((y - want).abs() < 1e-14, "g{j} d{i} y{o}: {y}");
                }
            }
        }
        // The written-out output transform is Aᵀ.
        for p in 0..N {
            let m: [f64; N] = std::array::from_fn(|i| if i == p { 1.0 } else { 0.0 });
            let y = output_tile::<f64, false>(m);
            for (o, at) in AT.iter().enumerate() {
                assert_eq!(y[o], at[p]);
            }
        }
    }
}

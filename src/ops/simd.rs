//! What the hand-blocked kernels share: the instruction set picked at run time, one build of a
//! kernel per instruction set, straight-line unrolling and a fused multiply-add.
use crate::tensor::Float;

/// Instruction set the kernels were compiled for, picked at run time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Baseline,
}

impl Isa {
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512_enabled() && is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Baseline
    }

    pub(crate) fn is_avx512(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self == Isa::Avx512
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    pub(crate) fn is_avx2(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self == Isa::Avx2Fma
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// Whether this CPU has AVX-512 (F, BW, VL) and the build lets the kernels use it (the default
/// feature `avx512`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_enabled() -> bool {
    cfg!(feature = "avx512")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

/// The instruction sets this CPU can run the kernels in, for tests: the one picked at run
/// time, AVX2 (the narrow blockings, as on an AVX2-only CPU) and the baseline build.
#[cfg(test)]
pub(crate) fn test_isas() -> Vec<Isa> {
    let mut isas = vec![Isa::detect()];
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        isas.push(Isa::Avx2Fma);
    }
    isas.push(Isa::Baseline);
    isas.dedup();
    isas
}

/// Compiles `$kernel::<T, FMA, U, consts…>` once per instruction set and picks one by `Isa` at
/// run time. U is how many accumulators of V lanes a kernel keeps per channel: 2 where 32
/// vector registers hold 4·2 independent sums (enough to hide the FMA latency), 1 with 16
/// registers.
macro_rules! multiversion {
    ($name:ident => $kernel:ident($($arg:ident: $ty:ty),*)) => {
        fn $name<T: Float>(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512<T: Float>($($arg: $ty),*) {
                $kernel::<T, true, 2>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<T: Float>($($arg: $ty),*) {
                $kernel::<T, true, 1>($($arg),*)
            }
            match isa {
                // SAFETY: Isa::detect found these features on this CPU.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::<T>($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => unsafe { avx2::<T>($($arg),*) },
                Isa::Baseline => $kernel::<T, false, 1>($($arg),*),
            }
        }
    };
    ($name:ident<$($c:ident),+> => $kernel:ident($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<T: Float, $(const $c: usize),+>(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512<T: Float, $(const $c: usize),+>($($arg: $ty),*) {
                $kernel::<T, true, 2, $($c),+>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2<T: Float, $(const $c: usize),+>($($arg: $ty),*) {
                $kernel::<T, true, 1, $($c),+>($($arg),*)
            }
            match isa {
                // SAFETY: Isa::detect found these features on this CPU.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::<T, $($c),+>($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => unsafe { avx2::<T, $($c),+>($($arg),*) },
                Isa::Baseline => $kernel::<T, false, 1, $($c),+>($($arg),*),
            }
        }
    };
}

/// Defines `fn $name<T: Float>(args) -> ret` whose body is compiled once per instruction set
/// (AVX-512, AVX2, baseline) and picked by `Isa::detect()` at each call: for the memory-bound
/// loops (f64 sums, per-channel scale and shift) that LLVM vectorizes itself once the target
/// allows wide registers. No FMA contraction happens (Rust never fuses a·b + c on its own), so
/// the three builds give the same bits.
macro_rules! per_isa {
    ($(#[$m:meta])* $vis:vis fn $name:ident<T>($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        $vis fn $name<T: Float>($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body<T: Float>($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2")]
                unsafe fn avx512<T: Float>($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<T: Float>($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                match $crate::ops::simd::Isa::detect() {
                    // SAFETY: Isa::detect found AVX-512F on this CPU.
                    $crate::ops::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: Isa::detect found AVX2 on this CPU.
                    $crate::ops::simd::Isa::Avx2Fma => return unsafe { avx2($($arg),*) },
                    $crate::ops::simd::Isa::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// Runs `$body` with `$p` = 0, 1, …, n − 1 (n ≤ 16 a constant) as straight-line code. Written
/// as a loop, whether LLVM unrolls it depends on a size estimate, and a loop left rolled
/// indexes the sums at run time, which keeps them in memory: 2 vectors of channels × 14 pixels
/// ran 30× slower at stride 1 while the same blocking at stride 2 was unrolled. Not a closure
/// either: one that was not inlined ran outside the AVX-512 build and called `fmaf`.
macro_rules! unroll16 {
    ($n:expr, |$p:ident| $body:block) => {
        unroll16!(@ $n, $p, $body; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (@ $n:expr, $p:ident, $body:block; $($i:literal)*) => {
        $(
            if $i < $n {
                let $p: usize = $i;
                $body
            }
        )*
    };
}

/// acc + a·b, fused where the CPU has FMA (a separate multiply and add otherwise: the
/// library call behind an unfused `mul_add` would cost more than it saves).
#[inline(always)]
pub(crate) fn madd<T: Float, const FMA: bool>(acc: T, a: T, b: T) -> T {
    if FMA {
        a.mul_add(b, acc)
    } else {
        acc + a * b
    }
}

/// Transposes 16 rows of 16 f32: result[c][r] = rows[r][c]. Interleaves pairs of rows, then
/// pairs of pairs (as f64), then moves 128-bit quarters twice.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved, low and high halves of each quarter.
    let mut t = [z; 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i+j]: in quarter k, rows 4i..4i+4 of column 4k+j.
    let mut u = [z; 16];
    for i in 0..4 {
        let d = |k: usize| _mm512_castps_pd(t[4 * i + k]);
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(d(0), d(2)));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(d(0), d(2)));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(d(1), d(3)));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(d(1), d(3)));
    }
    // v[8i+j], v[8i+4+j]: columns j and 8+j (resp. 4+j and 12+j) of rows 8i..8i+8.
    let mut v = [z; 16];
    for i in 0..2 {
        for j in 0..4 {
            let (a, b) = (u[8 * i + j], u[8 * i + 4 + j]);
            v[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(a, b);
            v[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xdd>(a, b);
        }
    }
    let mut w = [z; 16];
    for j in 0..8 {
        w[j] = _mm512_shuffle_f32x4::<0x88>(v[j], v[8 + j]);
        w[8 + j] = _mm512_shuffle_f32x4::<0xdd>(v[j], v[8 + j]);
    }
    w
}

/// Lane p of the mask is set where p < m (the sign bit of each 32-bit element), for
/// `_mm256_maskload_ps` and `_mm256_maskstore_ps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) fn first_lanes(m: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(m as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// Transposes 8 rows of 8 f32: result[c][r] = rows[r][c]. Interleaves pairs of rows, then
/// pairs of pairs, then swaps 128-bit halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub(crate) fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved, within each 128-bit half.
    let t: [__m256; 8] = std::array::from_fn(|k| {
        let (a, b) = (r[k & !1], r[k | 1]);
        if k % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // u[4i+j]: in each half, rows 4i..4i+4 of column j (of that half's four).
    let mut u = [_mm256_setzero_ps(); 8];
    for i in 0..2 {
        let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        u[4 * i] = _mm256_shuffle_ps::<0x44>(a, c);
        u[4 * i + 1] = _mm256_shuffle_ps::<0xee>(a, c);
        u[4 * i + 2] = _mm256_shuffle_ps::<0x44>(b, d);
        u[4 * i + 3] = _mm256_shuffle_ps::<0xee>(b, d);
    }
    std::array::from_fn(|c| {
        let (a, b) = (u[c % 4], u[4 + c % 4]);
        if c < 4 {
            _mm256_permute2f128_ps::<0x20>(a, b)
        } else {
            _mm256_permute2f128_ps::<0x31>(a, b)
        }
    })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn transpose8_transposes() {
        if !is_x86_feature_detected!("avx") {
            return;
        }
        use std::arch::x86_64::*;
        let rows: [[f32; 8]; 8] =
            std::array::from_fn(|r| std::array::from_fn(|c| (8 * r + c) as f32));
        // SAFETY: AVX is present; every load and store is of 8 f32 in bounds.
        let cols = unsafe {
            let t = transpose8(std::array::from_fn(|r| _mm256_loadu_ps(rows[r].as_ptr())));
            let mut out = [[0f32; 8]; 8];
            for (o, v) in out.iter_mut().zip(t) {
                _mm256_storeu_ps(o.as_mut_ptr(), v);
            }
            out
        };
        for (c, col) in cols.iter().enumerate() {
            for (r, &v) in col.iter().enumerate() {
                assert_eq!(v, rows[r][c], "column {c} row {r}");
            }
        }
    }
}

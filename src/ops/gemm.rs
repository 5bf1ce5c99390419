//! Matrix multiply: a safe, shape-checked front for the `gemm` crate (packed, runtime-dispatched
//! AVX2/FMA kernels), plus the naive triple loop it is tested against.
use crate::tensor::Float;

/// How a matrix operand is stored: row-major as given, or row-major of its transpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    No,
    Yes,
}

/// Whether a GEMM may split its work across the rayon pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    Seq,
    Rayon,
}

/// Row and column strides of an m×k operand stored row-major as itself or as its transpose.
fn strides(rows: usize, cols: usize, t: Trans) -> (isize, isize) {
    match t {
        Trans::No => (cols as isize, 1),
        Trans::Yes => (1, rows as isize),
    }
}

/// C (m×n, row-major) = op(A) · op(B) (+ C when `accumulate`), with op(A) m×k and op(B) k×n.
///
/// Panics if a slice is shorter than its shape requires: shapes here come from the
/// library's own arithmetic, never straight from user input.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Float>(
    c: &mut [T],
    a: &[T],
    ta: Trans,
    b: &[T],
    tb: Trans,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    par: Par,
) {
    assert!(
        c.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "matmul: operand too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|v| *v = T::zero());
        }
        return;
    }
    let (a_rs, a_cs) = strides(m, k, ta);
    let (b_rs, b_cs) = strides(k, n, tb);
    let parallelism = match par {
        Par::Seq => gemm::Parallelism::None,
        Par::Rayon => gemm::Parallelism::Rayon(0),
    };
    // SAFETY: the assert above bounds every index the strided operands can reach
    // (max index of a is (m-1)*rs + (k-1)*cs < m*k for either layout; likewise b and c).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The reference: the same contract as [`matmul`] by the textbook triple loop in f64.
#[allow(clippy::too_many_arguments)]
pub fn matmul_naive<T: Float>(
    c: &mut [T],
    a: &[T],
    ta: Trans,
    b: &[T],
    tb: Trans,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let at = |i: usize, p: usize| {
        if ta == Trans::No {
            a[i * k + p]
        } else {
            a[p * m + i]
        }
    };
    let bt = |p: usize, j: usize| {
        if tb == Trans::No {
            b[p * n + j]
        } else {
            b[j * k + p]
        }
    };
    for i in 0..m {
        for j in 0..n {
            let mut s = if accumulate { c[i * n + j].f64() } else { 0.0 };
            for p in 0..k {
                s += at(i, p).f64() * bt(p, j).f64();
            }
            c[i * n + j] = T::of(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_naive_for_all_transposes_and_odd_sizes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 150, 100), (5, 0, 4)] {
            for ta in [Trans::No, Trans::Yes] {
                for tb in [Trans::No, Trans::Yes] {
                    for acc in [false, true] {
                        let a: Vec<f64> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
                        let b: Vec<f64> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                        let c0: Vec<f64> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                        let (mut c1, mut c2) = (c0.clone(), c0.clone());
                        matmul(&mut c1, &a, ta, &b, tb, m, k, n, acc, Par::Rayon);
                        matmul_naive(&mut c2, &a, ta, &b, tb, m, k, n, acc);
                        for (x, y) in c1.iter().zip(&c2) {
                            assert!((x - y).abs() < 1e-12, "{m}x{k}x{n} {ta:?} {tb:?} {acc}");
                        }
                    }
                }
            }
        }
    }
}

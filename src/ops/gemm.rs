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

/// Row strides ("leading dimensions") of the stored operands, for matrices that are windows
/// of larger ones: each stored row starts `ld` elements after the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ld {
    pub a: usize,
    pub b: usize,
    pub c: usize,
}

impl Ld {
    /// Densely packed operands: op(A) m×k, op(B) k×n, C m×n.
    pub fn dense(m: usize, k: usize, n: usize, ta: Trans, tb: Trans) -> Self {
        Ld {
            a: if ta == Trans::No { k } else { m },
            b: if tb == Trans::No { n } else { k },
            c: n,
        }
    }
}

/// Row and column strides of a rows×cols operand stored row-major with row stride `ld`, as
/// itself or as its transpose.
fn strides(ld: usize, t: Trans) -> Strides {
    match t {
        Trans::No => Strides { rs: ld, cs: 1 },
        Trans::Yes => Strides { rs: 1, cs: ld },
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
    let ld = Ld::dense(m, k, n, ta, tb);
    matmul_ld(c, a, ta, b, tb, m, k, n, ld, accumulate, par)
}

/// [`matmul`] on windows of larger matrices: the operands' rows are `ld` apart.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ld<T: Float>(
    c: &mut [T],
    a: &[T],
    ta: Trans,
    b: &[T],
    tb: Trans,
    m: usize,
    k: usize,
    n: usize,
    ld: Ld,
    accumulate: bool,
    par: Par,
) {
    let ac = if ta == Trans::No { k } else { m };
    let bc = if tb == Trans::No { n } else { k };
    assert!(
        ld.a >= ac && ld.b >= bc && ld.c >= n,
        "matmul: leading dimension below the row length"
    );
    matmul_strided(
        c,
        Strides { rs: ld.c, cs: 1 },
        a,
        strides(ld.a, ta),
        b,
        strides(ld.b, tb),
        m,
        k,
        n,
        accumulate,
        par,
    )
}

/// Where a matrix operand keeps its elements: element (i, j) at `i·rs + j·cs`. Covers
/// transposes, windows of larger matrices and the tap slices of a weight tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    pub rs: usize,
    pub cs: usize,
}

/// Index one past the last element a rows×cols operand with strides `s` reaches.
fn reach(rows: usize, cols: usize, s: Strides) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * s.rs + (cols - 1) * s.cs + 1
    }
}

/// C (m×n) = A (m×k) · B (k×n) (+ C when `accumulate`), every operand addressed by its own
/// [`Strides`]. C's elements must be distinct (no zero or interleaving strides).
///
/// Panics if a slice is shorter than its strides reach: strides here come from the library's
/// own arithmetic, never straight from user input.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided<T: Float>(
    c: &mut [T],
    c_st: Strides,
    a: &[T],
    a_st: Strides,
    b: &[T],
    b_st: Strides,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    par: Par,
) {
    assert!(
        c.len() >= reach(m, n, c_st)
            && a.len() >= reach(m, k, a_st)
            && b.len() >= reach(k, n, b_st),
        "matmul: operand too short"
    );
    // C written in parallel must not alias itself: rows are disjoint runs of columns or the
    // other way round.
    assert!(
        m <= 1
            || n <= 1
            || (c_st.cs >= 1 && c_st.rs >= n * c_st.cs)
            || (c_st.rs >= 1 && c_st.cs >= m * c_st.rs),
        "matmul: C's strides make its elements overlap"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * c_st.rs + j * c_st.cs] = T::zero();
                }
            }
        }
        return;
    }
    let parallelism = match par {
        Par::Seq => gemm::Parallelism::None,
        Par::Rayon => gemm::Parallelism::Rayon(0),
    };
    // SAFETY: the asserts above bound every index the strided operands can reach (the largest
    // is reach − 1), and C's elements are distinct.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_st.cs as isize,
            c_st.rs as isize,
            accumulate,
            a.as_ptr(),
            a_st.cs as isize,
            a_st.rs as isize,
            b.as_ptr(),
            b_st.cs as isize,
            b_st.rs as isize,
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
    fn windows_of_larger_matrices() {
        // Each operand stored with 3 spare columns per row: the same result as packed ones.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (m, k, n) = (5, 7, 6);
        for ta in [Trans::No, Trans::Yes] {
            for tb in [Trans::No, Trans::Yes] {
                let dense = Ld::dense(m, k, n, ta, tb);
                let ld = Ld {
                    a: dense.a + 3,
                    b: dense.b + 3,
                    c: dense.c + 3,
                };
                let a: Vec<f64> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let b: Vec<f64> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let widen = |v: &[f64], from: usize, to: usize| -> Vec<f64> {
                    v.chunks(from)
                        .flat_map(|r| r.iter().copied().chain([9.0; 3]).take(to))
                        .collect()
                };
                let (aw, bw) = (widen(&a, dense.a, ld.a), widen(&b, dense.b, ld.b));
                let mut cw = vec![7.0; m * ld.c];
                let mut c = vec![0.0; m * n];
                matmul_ld(&mut cw, &aw, ta, &bw, tb, m, k, n, ld, false, Par::Seq);
                matmul_naive(&mut c, &a, ta, &b, tb, m, k, n, false);
                for (i, row) in cw.chunks(ld.c).enumerate() {
                    for j in 0..n {
                        assert!((row[j] - c[i * n + j]).abs() < 1e-12, "{ta:?} {tb:?}");
                    }
                    assert!(
                        row[n..].iter().all(|&v| v == 7.0),
                        "spare columns untouched"
                    );
                }
            }
        }
    }

    #[test]
    fn strided_operands_like_a_weight_tap() {
        // A as every 3rd element of rows 10 apart (one tap of a weight tensor), B read as a
        // transpose, C written column-major with a gap: the same as the packed product.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (m, k, n) = (4, 3, 5);
        let a_st = Strides { rs: 10, cs: 3 };
        let b_st = Strides { rs: 1, cs: 7 };
        let c_st = Strides { rs: 1, cs: m + 2 };
        let a: Vec<f64> = (0..40).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let b: Vec<f64> = (0..35).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut c = vec![7.0; n * (m + 2)];
        matmul_strided(&mut c, c_st, &a, a_st, &b, b_st, m, k, n, false, Par::Seq);
        let ad: Vec<f64> = (0..m * k)
            .map(|i| a[i / k * a_st.rs + i % k * a_st.cs])
            .collect();
        let bd: Vec<f64> = (0..k * n)
            .map(|i| b[i / n * b_st.rs + i % n * b_st.cs])
            .collect();
        let mut want = vec![0.0; m * n];
        matmul_naive(&mut want, &ad, Trans::No, &bd, Trans::No, m, k, n, false);
        for i in 0..m {
            for j in 0..n {
                assert!((c[i * c_st.rs + j * c_st.cs] - want[i * n + j]).abs() < 1e-12);
            }
        }
        assert!(
            c.chunks(m + 2).all(|col| col[m..] == [7.0, 7.0]),
            "gaps untouched"
        );
    }

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

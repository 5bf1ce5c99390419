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
fn strides(ld: usize, t: Trans) -> (isize, isize) {
    match t {
        Trans::No => (ld as isize, 1),
        Trans::Yes => (1, ld as isize),
    }
}

/// Elements a stored operand spans: `rows` stored rows of `cols`, `ld` apart.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
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
    let (ar, ac) = if ta == Trans::No { (m, k) } else { (k, m) };
    let (br, bc) = if tb == Trans::No { (k, n) } else { (n, k) };
    assert!(
        ld.a >= ac && ld.b >= bc && ld.c >= n,
        "matmul: leading dimension below the row length"
    );
    assert!(
        c.len() >= span(m, n, ld.c)
            && a.len() >= span(ar, ac, ld.a)
            && b.len() >= span(br, bc, ld.b),
        "matmul: operand too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ld.c)
                .take(m)
                .for_each(|r| r[..n].iter_mut().for_each(|v| *v = T::zero()));
        }
        return;
    }
    let (a_rs, a_cs) = strides(ld.a, ta);
    let (b_rs, b_cs) = strides(ld.b, tb);
    let parallelism = match par {
        Par::Seq => gemm::Parallelism::None,
        Par::Rayon => gemm::Parallelism::Rayon(0),
    };
    // SAFETY: the asserts above bound every index the strided operands can reach: the last
    // element of a stored operand is at span(rows, cols, ld) − 1 (likewise b and c).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ld.c as isize,
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

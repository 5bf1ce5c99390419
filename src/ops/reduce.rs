//! Sums in f64 over f32 or f64 slices, each in one fixed order (8 interleaved partial sums):
//! the reductions behind bias gradients and batch statistics.
use crate::tensor::Float;

/// Partial sums of the one-pass reductions: four AVX-512 registers of f64, so that four add
/// chains hide the add latency (with one, BatchNorm's statistics ran at 0.5 cycles a value).
pub(crate) const LANES: usize = 32;

per_isa! {
    /// Σ v. A long f32 running sum loses digits that Adam then amplifies, and one f64 chain
    /// waits on every add's latency: in the SSE build the bias gradient of the 224² stem took
    /// 9 % of its forward + backward, and BatchNorm's per-element f64 chains took a third of a
    /// ResNet-20 training step.
    pub(crate) fn sum_f64<T>(v: &[T]) -> f64 {
        let mut acc = [0.0f64; 8];
        let mut blocks = v.chunks_exact(8);
        for b in &mut blocks {
            for (a, x) in acc.iter_mut().zip(b) {
                *a += x.f64();
            }
        }
        for (a, x) in acc.iter_mut().zip(blocks.remainder()) {
            *a += x.f64();
        }
        acc.iter().sum()
    }
}

per_isa! {
    /// (Σ (v − k), Σ (v − k)²): one pass of a variance shifted by k, a value near the mean (a
    /// sample of the data), so that the difference of the two sums does not cancel.
    pub(crate) fn shifted_sums_f64<T>(v: &[T], k: f64) -> (f64, f64) {
        let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
        let mut blocks = v.chunks_exact(LANES);
        for b in &mut blocks {
            for ((a1, a2), x) in s1.iter_mut().zip(s2.iter_mut()).zip(b) {
                let d = x.f64() - k;
                *a1 += d;
                *a2 += d * d;
            }
        }
        for ((a1, a2), x) in s1.iter_mut().zip(s2.iter_mut()).zip(blocks.remainder()) {
            let d = x.f64() - k;
            *a1 += d;
            *a2 += d * d;
        }
        (s1.iter().sum(), s2.iter().sum())
    }
}

per_isa! {
    /// (Σ u, Σ u·v) over the common length, in one pass.
    pub(crate) fn sum_and_dot_f64<T>(u: &[T], v: &[T]) -> (f64, f64) {
        let n = u.len().min(v.len());
        let (u, v) = (&u[..n], &v[..n]);
        let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
        let (mut ub, mut vb) = (u.chunks_exact(LANES), v.chunks_exact(LANES));
        for (x, y) in (&mut ub).zip(&mut vb) {
            for (((a1, a2), x), y) in s1.iter_mut().zip(s2.iter_mut()).zip(x).zip(y) {
                *a1 += x.f64();
                *a2 += x.f64() * y.f64();
            }
        }
        let rest = s1.iter_mut().zip(s2.iter_mut());
        for (((a1, a2), x), y) in rest.zip(ub.remainder()).zip(vb.remainder()) {
            *a1 += x.f64();
            *a2 += x.f64() * y.f64();
        }
        (s1.iter().sum(), s2.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_plain_f64_loops() {
        for n in [0usize, 1, 7, 8, 9, 100, 1027] {
            let u: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0 + 1e3)
                .collect();
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 3.0)
                .collect();
            let sum: f64 = u.iter().map(|&x| x as f64).sum();
            let k = 1e3 + 0.5;
            let sq: f64 = u.iter().map(|&x| (x as f64 - k).powi(2)).sum();
            let dot: f64 = u.iter().zip(&v).map(|(&x, &y)| x as f64 * y as f64).sum();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + b.abs());
            assert!(close(sum_f64(&u), sum), "sum n={n}");
            let (s1, s2) = shifted_sums_f64(&u, k);
            assert!(
                close(s1, sum - n as f64 * k) && close(s2, sq),
                "shifted n={n}"
            );
            let (t1, t2) = sum_and_dot_f64(&u, &v);
            assert!(close(t1, sum) && close(t2, dot), "sum and dot n={n}");
        }
    }
}

//! Batch normalisation's kernels over (N, C, plane) data: per-channel statistics in f64 in one
//! fixed order, the normalisation, and its gradients.
use super::activation::Activation;
use super::reduce::{shifted_sums_f64, sum_and_dot_f64, LANES};
use crate::tensor::Float;
use rayon::prelude::*;

/// `f(offset of the plane, channel)` for every (sample, channel) plane of x (N, C, plane), in
/// (N, C) order: two values per plane. The planes are visited in memory order, in parallel;
/// each plane's values are its own, so a batch split into parts (shards, ranks) has the
/// parts' planes whatever the split, and [`fold_sums`] / [`merge_stats`] add them in sample
/// order: one order whatever the thread count or the split.
fn per_plane<T: Float>(
    x: &[T],
    c: usize,
    plane: usize,
    f: impl Fn(usize, usize) -> (f64, f64) + Sync,
) -> Vec<f64> {
    let n = x.len() / (c * plane).max(1);
    let mut parts = vec![0.0; 2 * n * c]; // (N, C, 2)
    parts
        .par_chunks_mut(2)
        .enumerate()
        .with_min_len((4096 / plane.max(1)).max(1))
        .for_each(|(k, p)| (p[0], p[1]) = f(k * plane, k % c));
    parts
}

/// Per-channel sums of planes' pairs ((N, C, 2) as [`per_plane`] makes them), in sample order.
pub fn fold_sums(parts: &[f64], c: usize) -> (Vec<f64>, Vec<f64>) {
    let n = parts.len() / (2 * c).max(1);
    (0..c)
        .map(|ch| {
            (0..n).fold((0.0, 0.0), |(a, b), i| {
                let at = 2 * (i * c + ch);
                (a + parts[at], b + parts[at + 1])
            })
        })
        .unzip()
}

/// Each (sample, channel) plane's mean and Σ(x − mean)² of x (N, C, plane), (N, C, 2), for
/// [`merge_stats`]: from the sums of x − k and (x − k)² with k the plane's first value, which
/// keeps the variance exact where the mean is large beside the spread.
pub fn plane_stats<T: Float>(x: &[T], c: usize, plane: usize) -> Vec<f64> {
    let l = plane.max(1) as f64;
    per_plane(x, c, plane, |at, _| {
        let p = &x[at..at + plane];
        let k = p.first().map_or(0.0, |v| v.f64());
        let (s1, s2) = shifted_sums_f64(p, k);
        (k + s1 / l, (s2 - s1 * s1 / l).max(0.0))
    })
}

/// One part's per-channel statistics from its planes' ((N, C, 2), [`plane_stats`]): count,
/// mean and Σ(x − mean)² per channel, (C, 3), the planes merged one at a time in sample order
/// (the pairwise update of Chan, Golub and LeVeque).
pub fn part_stats(planes: &[f64], c: usize, plane: usize) -> Vec<f64> {
    let n = planes.len() / (2 * c).max(1);
    let l = plane.max(1) as f64;
    let mut out = vec![0.0; 3 * c];
    for (ch, o) in out.chunks_exact_mut(3).enumerate() {
        for i in 0..n {
            let at = 2 * (i * c + ch);
            merge_into(o, [l, planes[at], planes[at + 1]]);
        }
    }
    out
}

/// (count, mean, M2) ← that merged with `b`.
fn merge_into(a: &mut [f64], b: [f64; 3]) {
    let total = a[0] + b[0];
    if total == 0.0 {
        return;
    }
    let d = b[1] - a[1];
    a[1] += d * b[0] / total;
    a[2] += b[2] + d * d * a[0] * b[0] / total;
    a[0] = total;
}

/// Per-channel mean and biased variance of a batch from its parts' statistics ((parts, C,
/// 3), [`part_stats`] of each in batch order), merged in part order; with the values per
/// channel.
pub fn merge_parts(parts: &[f64], c: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let mut all = vec![0.0; 3 * c];
    for part in parts.chunks_exact(3 * c.max(1)) {
        for (a, b) in all.chunks_exact_mut(3).zip(part.chunks_exact(3)) {
            merge_into(a, [b[0], b[1], b[2]]);
        }
    }
    let count = all.first().copied().unwrap_or(0.0);
    let (mean, var) = all
        .chunks_exact(3)
        .map(|a| (a[1], a[2] / a[0].max(1.0)))
        .unzip();
    (mean, var, count)
}

/// Per-channel mean and biased variance from planes' statistics ((N, C, 2), [`plane_stats`]
/// of the whole batch in sample order).
pub fn merge_stats(parts: &[f64], c: usize, plane: usize) -> (Vec<f64>, Vec<f64>) {
    let (mean, var, _) = merge_parts(&part_stats(parts, c, plane), c);
    (mean, var)
}

/// Per-channel mean and biased variance of x (N, C, plane) in f64.
pub fn batch_stats<T: Float>(x: &[T], c: usize, plane: usize) -> (Vec<f64>, Vec<f64>) {
    merge_stats(&plane_stats(x, c, plane), c, plane)
}

per_isa! {
    /// x ← x̂·γ + β with x̂ = (x − μ)·inv, keeping x̂; then the ReLU with `relu`.
    fn normalise_keep<T>(x: &mut [T], x_hat: &mut [T], mu: T, inv: T, g: T, b: T, relu: bool) -> () {
        if relu {
            for (v, h) in x.iter_mut().zip(x_hat) {
                let xh = (*v - mu) * inv;
                *h = xh;
                *v = Activation::Relu.apply(xh * g + b);
            }
        } else {
            for (v, h) in x.iter_mut().zip(x_hat) {
                let xh = (*v - mu) * inv;
                *h = xh;
                *v = xh * g + b;
            }
        }
    }
}

per_isa! {
    /// x ← x·a + b; then the ReLU with `relu`.
    fn scale_shift<T>(x: &mut [T], a: T, b: T, relu: bool) -> () {
        if relu {
            x.iter_mut().for_each(|v| *v = Activation::Relu.apply(*v * a + b));
        } else {
            x.iter_mut().for_each(|v| *v = *v * a + b);
        }
    }
}

per_isa! {
    /// (Σ d, Σ d·x̂) with d = dy·ReLU'(x̂·γ + β): the gradient sums behind a fused ReLU.
    fn masked_sums<T>(dy: &[T], x_hat: &[T], g: T, b: T) -> (f64, f64) {
        let n = dy.len().min(x_hat.len());
        let (mut s1, mut s2) = ([0.0f64; LANES], [0.0f64; LANES]);
        let (mut db, mut hb) = (dy[..n].chunks_exact(LANES), x_hat[..n].chunks_exact(LANES));
        for (d, h) in (&mut db).zip(&mut hb) {
            for (((a1, a2), &d), &h) in s1.iter_mut().zip(s2.iter_mut()).zip(d).zip(h) {
                let d = d * Activation::Relu.derivative(h * g + b);
                *a1 += d.f64();
                *a2 += d.f64() * h.f64();
            }
        }
        let rest = s1.iter_mut().zip(s2.iter_mut());
        for (((a1, a2), &d), &h) in rest.zip(db.remainder()).zip(hb.remainder()) {
            let d = d * Activation::Relu.derivative(h * g + b);
            *a1 += d.f64();
            *a2 += d.f64() * h.f64();
        }
        (s1.iter().sum(), s2.iter().sum())
    }
}

per_isa! {
    /// dy ← s·(d − a − x̂·b) with d = dy, or dy·ReLU'(x̂·γ + β) given `relu` = Some((γ, β)).
    fn input_grad_plane<T>(dy: &mut [T], x_hat: &[T], s: T, a: T, b: T, relu: Option<(T, T)>) -> () {
        match relu {
            Some((g, beta)) => {
                for (v, &h) in dy.iter_mut().zip(x_hat) {
                    let d = *v * Activation::Relu.derivative(h * g + beta);
                    *v = s * (d - a - h * b);
                }
            }
            None => {
                for (v, &h) in dy.iter_mut().zip(x_hat) {
                    *v = s * (*v - a - h * b);
                }
            }
        }
    }
}

/// One channel's normalisation: x̂ = (x − mean)·inv_std, y = x̂·gamma + beta.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelAffine {
    pub mean: f64,
    pub inv_std: f64,
    pub gamma: f64,
    pub beta: f64,
}

/// Normalises x (N, C, plane) in place by each channel's `coef`, then applies the ReLU with
/// `relu`; writes x̂ (N, C, plane) when given (backward needs it), else folds everything into
/// one scale and shift per channel.
pub fn normalise<T: Float>(
    x: &mut [T],
    x_hat: Option<&mut [T]>,
    plane: usize,
    coef: &[ChannelAffine],
    relu: bool,
) {
    let (c, plane) = (coef.len(), plane.max(1));
    match x_hat {
        Some(h) => x
            .par_chunks_mut(plane)
            .zip(h.par_chunks_mut(plane))
            .enumerate()
            .for_each(|(k, (p, h))| {
                let a = coef[k % c];
                let t = T::of;
                normalise_keep(p, h, t(a.mean), t(a.inv_std), t(a.gamma), t(a.beta), relu);
            }),
        None => x.par_chunks_mut(plane).enumerate().for_each(|(k, p)| {
            let a = coef[k % c];
            let s = a.inv_std * a.gamma;
            scale_shift(p, T::of(s), T::of(a.beta - a.mean * s), relu);
        }),
    }
}

/// γ and β of each channel in T, as [`normalise`] applied them: what a fused ReLU's
/// derivative is recomputed from.
fn relu_coef<T: Float>(coef: &[ChannelAffine]) -> Vec<(T, T)> {
    coef.iter()
        .map(|a| (T::of(a.gamma), T::of(a.beta)))
        .collect()
}

/// Each (sample, channel) plane's Σ d and Σ d·x̂ ((N, C, 2), for [`fold_sums`]) of x̂
/// (N, C, plane) and d = dy (N, C, plane); with `relu` (the forward's coefficients, its ReLU
/// fused) d is dy·ReLU'(y), recomputed from x̂.
pub fn grad_sum_parts<T: Float>(
    dy: &[T],
    x_hat: &[T],
    c: usize,
    plane: usize,
    relu: Option<&[ChannelAffine]>,
) -> Vec<f64> {
    let plane = plane.max(1);
    let gb = relu.map(relu_coef::<T>);
    per_plane(dy, c, plane, |at, ch| {
        let (d, h) = (&dy[at..at + plane], &x_hat[at..at + plane]);
        match &gb {
            Some(gb) => masked_sums(d, h, gb[ch].0, gb[ch].1),
            None => sum_and_dot_f64(d, h),
        }
    })
}

/// Per-channel Σ d and Σ d·x̂ (the gradients of β and γ), as [`grad_sum_parts`] folded.
pub fn grad_sums<T: Float>(
    dy: &[T],
    x_hat: &[T],
    c: usize,
    plane: usize,
    relu: Option<&[ChannelAffine]>,
) -> (Vec<f64>, Vec<f64>) {
    fold_sums(&grad_sum_parts(dy, x_hat, c, plane, relu), c)
}

/// dx in place of dy (N, C, plane): with the batch's own statistics (`sums`: [`grad_sums`]'s,
/// over `m` values per channel) dx = γ/σ·(d − mean(d) − x̂·mean(d·x̂)); with fixed statistics
/// dx = γ/σ·d. `scale` is γ/σ per channel; d is dy, or with `relu` dy·ReLU'(y) as in
/// [`grad_sums`].
pub fn input_grad<T: Float>(
    dy: &mut [T],
    x_hat: &[T],
    plane: usize,
    scale: &[f64],
    sums: Option<(&[f64], &[f64], f64)>,
    relu: Option<&[ChannelAffine]>,
) {
    let (c, plane) = (scale.len(), plane.max(1));
    let gb = relu.map(relu_coef::<T>);
    dy.par_chunks_mut(plane)
        .zip(x_hat.par_chunks(plane))
        .enumerate()
        .for_each(|(k, (p, h))| {
            let ch = k % c;
            let s = T::of(scale[ch]);
            let (a, b) = match sums {
                Some((sum_dy, sum_dy_xh, m)) => (sum_dy[ch] / m, sum_dy_xh[ch] / m),
                None => (0.0, 0.0),
            };
            let mask = gb.as_ref().map(|gb| gb[ch]);
            input_grad_plane(p, h, s, T::of(a), T::of(b), mask);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that are not symmetric around anything, deterministic.
    fn values(n: usize, seed: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 1009) as f64 / 1009.0 - 0.3) * 3.0)
            .collect()
    }

    #[test]
    fn statistics_normalisation_and_gradients_match_a_naive_implementation() {
        for (n, c, plane) in [(1, 1, 1), (3, 2, 5), (4, 3, 64), (2, 16, 17), (5, 1, 8)] {
            let x = values(n * c * plane, 1);
            let dy = values(n * c * plane, 2);
            let at = |i: usize, ch: usize, j: usize| (i * c + ch) * plane + j;
            let m = (n * plane) as f64;
            // Naive: every channel by plain loops.
            let mut coef = Vec::new();
            for ch in 0..c {
                let vals: Vec<f64> = (0..n)
                    .flat_map(|i| (0..plane).map(move |j| (i, j)))
                    .map(|(i, j)| x[at(i, ch, j)])
                    .collect();
                let mean = vals.iter().sum::<f64>() / m;
                let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
                coef.push(ChannelAffine {
                    mean,
                    inv_std: 1.0 / (var + 1e-5).sqrt(),
                    gamma: 0.5 + ch as f64,
                    beta: 0.25 - ch as f64,
                });
            }
            let (mean, var) = batch_stats(&x, c, plane);
            for ch in 0..c {
                assert!((mean[ch] - coef[ch].mean).abs() < 1e-12);
                assert!((1.0 / (var[ch] + 1e-5).sqrt() - coef[ch].inv_std).abs() < 1e-9);
            }
            let (mut y, mut h) = (x.clone(), vec![0.0; x.len()]);
            normalise(&mut y, Some(&mut h), plane, &coef, false);
            let mut y_folded = x.clone();
            normalise(&mut y_folded, None, plane, &coef, false);
            for k in 0..x.len() {
                let a = coef[(k / plane) % c];
                let xh = (x[k] - a.mean) * a.inv_std;
                assert!((h[k] - xh).abs() < 1e-12, "x̂ at {k}");
                assert!((y[k] - (xh * a.gamma + a.beta)).abs() < 1e-12, "y at {k}");
                assert!((y_folded[k] - y[k]).abs() < 1e-9, "folded y at {k}");
            }
            let (sdy, sdyh) = grad_sums(&dy, &h, c, plane, None);
            let scale: Vec<f64> = coef.iter().map(|a| a.gamma * a.inv_std).collect();
            let mut dx = dy.clone();
            input_grad(&mut dx, &h, plane, &scale, Some((&sdy, &sdyh, m)), None);
            let mut dx_fixed = dy.clone();
            input_grad(&mut dx_fixed, &h, plane, &scale, None, None);
            for ch in 0..c {
                let idx: Vec<usize> = (0..n)
                    .flat_map(|i| (0..plane).map(move |j| at(i, ch, j)))
                    .collect();
                let s1: f64 = idx.iter().map(|&k| dy[k]).sum();
                let s2: f64 = idx.iter().map(|&k| dy[k] * h[k]).sum();
                assert!((sdy[ch] - s1).abs() < 1e-10 && (sdyh[ch] - s2).abs() < 1e-10);
                for &k in &idx {
                    let want = scale[ch] * (dy[k] - s1 / m - h[k] * s2 / m);
                    assert!((dx[k] - want).abs() < 1e-10, "dx at {k}");
                    assert!((dx_fixed[k] - scale[ch] * dy[k]).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn statistics_merged_from_parts_are_the_whole_batchs() {
        // Channels with a large mean beside the spread, split into parts of 1, 2 and 3
        // samples: merged in part order they give the batch's mean and variance.
        let (n, c, plane) = (6, 3, 7);
        let x: Vec<f64> = values(n * c * plane, 5).iter().map(|v| v + 1e4).collect();
        let (mean, var) = batch_stats(&x, c, plane);
        let per = c * plane;
        let mut parts = Vec::new();
        for (a, b) in [(0, 1), (1, 3), (3, 6)] {
            let planes = plane_stats(&x[a * per..b * per], c, plane);
            parts.extend(part_stats(&planes, c, plane));
        }
        let (m2, v2, count) = merge_parts(&parts, c);
        assert_eq!(count, (n * plane) as f64);
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| x[(i * c + ch) * plane..][..plane].to_vec())
                .collect();
            let mu = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|a| (a - mu).powi(2)).sum::<f64>() / vals.len() as f64;
            assert!((mean[ch] - mu).abs() < 1e-9 && (m2[ch] - mu).abs() < 1e-9);
            assert!((var[ch] - v).abs() < 1e-9 * v && (v2[ch] - v).abs() < 1e-9 * v);
        }
    }

    #[test]
    fn a_fused_relu_equals_the_relu_after_the_normalisation() {
        let (n, c, plane) = (3, 4, 19);
        let x = values(n * c * plane, 3);
        let dy = values(n * c * plane, 4);
        let coef: Vec<ChannelAffine> = (0..c)
            .map(|ch| ChannelAffine {
                mean: 0.1 * ch as f64,
                inv_std: 1.5,
                gamma: if ch == 2 { -0.7 } else { 0.9 },
                beta: 0.2 - 0.1 * ch as f64,
            })
            .collect();
        let (mut plain, mut h) = (x.clone(), vec![0.0; x.len()]);
        normalise(&mut plain, Some(&mut h), plane, &coef, false);
        let mut fused = x.clone();
        normalise(
            &mut fused,
            Some(&mut vec![0.0; x.len()]),
            plane,
            &coef,
            true,
        );
        let mut folded = x.clone();
        normalise(&mut folded, None, plane, &coef, true);
        // The plain path: the ReLU as its own step, forward and backward.
        let relu: Vec<f64> = plain.iter().map(|&v| Activation::Relu.apply(v)).collect();
        let d: Vec<f64> = dy
            .iter()
            .zip(&relu)
            .map(|(&g, &y)| g * Activation::Relu.derivative(y))
            .collect();
        assert_eq!(fused, relu);
        for (a, b) in folded.iter().zip(&relu) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!(relu.contains(&0.0) && relu.iter().any(|&v| v > 0.0));
        let m = (n * plane) as f64;
        let scale = vec![0.8; c];
        let (a1, b1) = grad_sums(&d, &h, c, plane, None);
        let (a2, b2) = grad_sums(&dy, &h, c, plane, Some(&coef));
        assert_eq!((&a1, &b1), (&a2, &b2));
        let (mut dx1, mut dx2) = (d.clone(), dy.clone());
        input_grad(&mut dx1, &h, plane, &scale, Some((&a1, &b1, m)), None);
        input_grad(
            &mut dx2,
            &h,
            plane,
            &scale,
            Some((&a2, &b2, m)),
            Some(&coef),
        );
        assert_eq!(dx1, dx2);
    }
}

//! Objectives E = mean over the batch of a per-sample loss on the raw outputs, with gradients.
use crate::ops::activation::sigmoid;
use crate::tensor::Float;
use std::str::FromStr;

/// The per-sample loss, y being the one-hot label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LossKind {
    /// Softmax cross-entropy, −log softmax(out)_y (PyTorch's `F.cross_entropy`).
    #[default]
    CrossEntropy,
    /// The lecture's square loss Σ_k (out_k − y_k)².
    Square,
    /// Σ_k binary cross-entropy of sigmoid(out_k) against y_k, from the logits.
    Bce,
}

impl LossKind {
    pub fn name(self) -> &'static str {
        match self {
            LossKind::CrossEntropy => "cross-entropy",
            LossKind::Square => "square",
            LossKind::Bce => "bce",
        }
    }
}

impl FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cross-entropy" => Ok(LossKind::CrossEntropy),
            "square" => Ok(LossKind::Square),
            "bce" => Ok(LossKind::Bce),
            _ => Err(format!(
                "unknown loss `{s}` (known: cross-entropy, square, bce)"
            )),
        }
    }
}

/// Mean loss over the batch; writes dE/d(out) into `grad` when given.
/// out: (N, K) raw outputs, labels: (N) class indices < K, grad: (N, K).
pub fn loss<T: Float>(
    kind: LossKind,
    out: &[T],
    labels: &[usize],
    k: usize,
    grad: Option<&mut [T]>,
) -> f64 {
    loss_part(kind, out, labels, k, grad, labels.len())
}

/// [`loss`] of some rows of a batch of `batch` samples: their share of the batch's mean loss
/// (Σ of their losses / batch), and their rows of its gradient, the same values as
/// [`loss`] of the whole batch gives them. The shares of a batch's parts add up to its loss.
pub fn loss_part<T: Float>(
    kind: LossKind,
    out: &[T],
    labels: &[usize],
    k: usize,
    mut grad: Option<&mut [T]>,
    batch: usize,
) -> f64 {
    let inv_n = 1.0 / batch.max(1) as f64;
    let mut total = 0.0;
    for (s, &y) in labels.iter().enumerate() {
        let z = &out[s * k..(s + 1) * k];
        let g = grad.as_deref_mut().map(|g| &mut g[s * k..(s + 1) * k]);
        total += match kind {
            LossKind::CrossEntropy => {
                // log Σ e^z computed around the max, so large logits do not overflow.
                let m = z.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f64()));
                let sum: f64 = z.iter().map(|v| (v.f64() - m).exp()).sum();
                let lse = m + sum.ln();
                if let Some(g) = g {
                    for (j, gj) in g.iter_mut().enumerate() {
                        let p = (z[j].f64() - lse).exp();
                        *gj = T::of((p - if j == y { 1.0 } else { 0.0 }) * inv_n);
                    }
                }
                lse - z[y].f64()
            }
            LossKind::Square => {
                let mut l = 0.0;
                let mut g = g;
                for j in 0..k {
                    let d = z[j].f64() - if j == y { 1.0 } else { 0.0 };
                    l += d * d;
                    if let Some(g) = g.as_deref_mut() {
                        g[j] = T::of(2.0 * d * inv_n);
                    }
                }
                l
            }
            LossKind::Bce => {
                let mut l = 0.0;
                let mut g = g;
                for j in 0..k {
                    let x = z[j].f64();
                    let t = if j == y { 1.0 } else { 0.0 };
                    // −t·log σ(x) − (1−t)·log(1−σ(x)) = max(x,0) − x·t + log(1 + e^−|x|)
                    l += x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
                    if let Some(g) = g.as_deref_mut() {
                        g[j] = T::of((sigmoid(x) - t) * inv_n);
                    }
                }
                l
            }
        };
    }
    total * inv_n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_values() {
        // Two classes, logits (0, 0): CE = ln 2; square = (0−1)² + 0² = 1; BCE = 2·ln 2.
        let out = [0.0f64, 0.0];
        assert!((loss(LossKind::CrossEntropy, &out, &[0], 2, None) - 2f64.ln()).abs() < 1e-15);
        assert!((loss(LossKind::Square, &out, &[0], 2, None) - 1.0).abs() < 1e-15);
        assert!((loss(LossKind::Bce, &out, &[0], 2, None) - 2.0 * 2f64.ln()).abs() < 1e-15);
        // Huge logits stay finite.
        let big = [1000.0f64, -1000.0, 0.0];
        assert!(loss(LossKind::CrossEntropy, &big, &[1], 3, None).is_finite());
        assert!((loss(LossKind::CrossEntropy, &big, &[1], 3, None) - 2000.0).abs() < 1e-9);
        assert!((loss(LossKind::Bce, &big, &[1], 3, None) - (2000.0 + 2f64.ln())).abs() < 1e-9);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let out = [0.3f64, -1.2, 2.0, 0.5, 0.1, -0.4];
        let labels = [2, 0];
        for kind in [LossKind::CrossEntropy, LossKind::Square, LossKind::Bce] {
            let mut g = [0.0; 6];
            loss(kind, &out, &labels, 3, Some(&mut g));
            for i in 0..6 {
                let h = 1e-6;
                let (mut p, mut m) = (out, out);
                p[i] += h;
                m[i] -= h;
                let fd = (loss(kind, &p, &labels, 3, None) - loss(kind, &m, &labels, 3, None))
                    / (2.0 * h);
                assert!((g[i] - fd).abs() < 1e-8, "{kind:?} {i}: {} vs {fd}", g[i]);
            }
        }
    }
}

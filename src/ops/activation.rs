//! The lecture's activation functions and their derivatives, element-wise.
use crate::tensor::Float;
use rayon::prelude::*;

/// Which non-linearity f a layer applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Sigmoid,
    Tanh,
    Relu,
}

impl Activation {
    pub const ALL: [Activation; 4] = [
        Activation::Identity,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Relu,
    ];

    /// The name used in model files.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
        }
    }

    /// f(z).
    pub fn apply<T: Float>(self, z: T) -> T {
        match self {
            Activation::Identity => z,
            Activation::Sigmoid => sigmoid(z),
            Activation::Tanh => z.tanh(),
            // max(z, 0) but NaN-propagating like PyTorch.
            Activation::Relu => {
                if z < T::zero() {
                    T::zero()
                } else {
                    z
                }
            }
        }
    }

    /// f'(z) written through the output y = f(z), so backward needs only the forward's output:
    /// sigmoid' = y(1 − y), tanh' = 1 − y², ReLU' = [z > 0] = [y > 0].
    pub fn derivative<T: Float>(self, y: T) -> T {
        match self {
            Activation::Identity => T::one(),
            Activation::Sigmoid => y * (T::one() - y),
            Activation::Tanh => T::one() - y * y,
            Activation::Relu => {
                if y > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
        }
    }
}

/// Values per task of the element-wise passes of a residual block's sum: memory bound over a
/// few MB, where one thread alone does not reach the memory's bandwidth.
const CHUNK: usize = 1 << 15;

per_isa! {
    /// h ← h + s, then ReLU where `relu` (`positive`, when not empty, ← where the result is > 0).
    fn add_kernel<T>(h: &mut [T], s: &[T], relu: bool, positive: &mut [bool]) -> () {
        let relu_of = |v: T| Activation::Relu.apply(v);
        match (relu, positive.is_empty()) {
            (true, false) => {
                for ((a, &b), p) in h.iter_mut().zip(s).zip(positive) {
                    *a = relu_of(*a + b);
                    *p = *a > T::zero();
                }
            }
            (true, true) => h.iter_mut().zip(s).for_each(|(a, &b)| *a = relu_of(*a + b)),
            (false, _) => h.iter_mut().zip(s).for_each(|(a, &b)| *a += b),
        }
    }
}

per_isa! {
    /// d ← d·ReLU'(y) (1 where `positive`, unless it is empty), and a copy of d ← d.
    fn mask_copy_kernel<T>(d: &mut [T], positive: &[bool], copy: &mut [T]) -> () {
        if positive.is_empty() {
            copy.copy_from_slice(d);
            return;
        }
        for ((d, c), &p) in d.iter_mut().zip(copy).zip(positive) {
            *d *= if p { T::one() } else { T::zero() };
            *c = *d;
        }
    }
}

/// A residual block's sum in place, h ← h + s, then its ReLU if `relu`; `positive` (when
/// given, of h's length) records where the result is > 0, what backward's mask needs.
pub fn add_residual<T: Float>(h: &mut [T], s: &[T], relu: bool, positive: Option<&mut [bool]>) {
    let hc = h.par_chunks_mut(CHUNK).zip(s.par_chunks(CHUNK));
    match positive {
        Some(p) => hc
            .zip(p.par_chunks_mut(CHUNK))
            .for_each(|((h, s), p)| add_kernel(h, s, relu, p)),
        None => hc.for_each(|(h, s)| add_kernel(h, s, relu, &mut [])),
    }
}

/// d ← d·ReLU'(y) where `positive` is given (true where y > 0), and copy ← d: the gradient of
/// a residual block's output for its body and its shortcut each.
pub fn mask_and_copy<T: Float>(d: &mut [T], positive: Option<&[bool]>, copy: &mut [T]) {
    let dc = d.par_chunks_mut(CHUNK).zip(copy.par_chunks_mut(CHUNK));
    match positive {
        Some(p) => dc
            .zip(p.par_chunks(CHUNK))
            .for_each(|((d, c), p)| mask_copy_kernel(d, p, c)),
        None => dc.for_each(|(d, c)| mask_copy_kernel(d, &[], c)),
    }
}

/// Numerically stable logistic function 1/(1 + e^−z).
pub fn sigmoid<T: Float>(z: T) -> T {
    if z >= T::zero() {
        T::one() / (T::one() + (-z).exp())
    } else {
        let e = z.exp();
        e / (T::one() + e)
    }
}

/// Applies `f` to every element, the activation matched once outside the loop so that each
/// loop body is branch-free and the compiler vectorises it (ReLU above all).
fn map_each<T: Float>(act: Activation, x: &mut [T], f: impl Fn(Activation, T) -> T) {
    match act {
        Activation::Identity => x.iter_mut().for_each(|v| *v = f(Activation::Identity, *v)),
        Activation::Sigmoid => x.iter_mut().for_each(|v| *v = f(Activation::Sigmoid, *v)),
        Activation::Tanh => x.iter_mut().for_each(|v| *v = f(Activation::Tanh, *v)),
        Activation::Relu => x.iter_mut().for_each(|v| *v = f(Activation::Relu, *v)),
    }
}

/// x ← f(x) element-wise, in place.
pub fn forward_inplace<T: Float>(act: Activation, x: &mut [T]) {
    if act != Activation::Identity {
        map_each(act, x, |a, v| a.apply(v));
    }
}

/// d ← d · f'(z) in place, with y = f(z) from the forward pass.
pub fn backward_inplace<T: Float>(act: Activation, y: &[T], d: &mut [T]) {
    // The activation matched outside the loop, as in forward_inplace.
    let each = |a: Activation, d: &mut [T]| {
        d.iter_mut()
            .zip(y)
            .for_each(|(d, &y)| *d *= a.derivative(y))
    };
    match act {
        Activation::Identity => {}
        Activation::Sigmoid => each(Activation::Sigmoid, d),
        Activation::Tanh => each(Activation::Tanh, d),
        Activation::Relu => each(Activation::Relu, d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_derivatives_match_finite_differences() {
        for act in Activation::ALL {
            for &z in &[-3.0f64, -0.7, 0.3, 2.5] {
                let y = act.apply(z);
                let h = 1e-6;
                let fd = (act.apply(z + h) - act.apply(z - h)) / (2.0 * h);
                assert!((act.derivative(y) - fd).abs() < 1e-8, "{act:?} at {z}");
            }
        }
        assert_eq!(Activation::Relu.apply(-2.0f64), 0.0);
        assert!((sigmoid(0.0f64) - 0.5).abs() < 1e-15);
        assert!((sigmoid(-800.0f64)).abs() < 1e-300 && sigmoid(800.0f64) == 1.0);
        assert!((Activation::Tanh.apply(1.0f64) - 0.7615941559557649).abs() < 1e-15);
    }

    /// The residual sum and its gradient's mask against plain loops, over several chunks and
    /// a partial one.
    #[test]
    fn residual_passes_match_plain_loops() {
        let n = 2 * CHUNK + 77;
        let value = |i: usize, k: usize| ((i * k) % 997) as f32 / 499.0 - 1.0;
        let (h0, s): (Vec<f32>, Vec<f32>) = (0..n).map(|i| (value(i, 7), value(i, 13))).unzip();
        for relu in [false, true] {
            let mut h = h0.clone();
            let mut positive = vec![false; n];
            add_residual(&mut h, &s, relu, Some(&mut positive));
            let mut h_alone = h0.clone();
            add_residual(&mut h_alone, &s, relu, None);
            assert_eq!(h, h_alone);
            for i in 0..n {
                let sum = h0[i] + s[i];
                let want = if relu { sum.max(0.0) } else { sum };
                assert_eq!(h[i], want, "at {i}");
                if relu {
                    assert_eq!(positive[i], want > 0.0, "at {i}");
                }
            }
        }
        let mut positive = vec![false; n];
        add_residual(&mut h0.clone(), &s, true, Some(&mut positive));
        let (mut d, mut copy) = (s.clone(), vec![f32::NAN; n]);
        mask_and_copy(&mut d, Some(&positive), &mut copy);
        for i in 0..n {
            let want = if positive[i] { s[i] } else { 0.0 };
            assert_eq!((d[i], copy[i]), (want, want), "at {i}");
        }
        let (mut d, mut copy) = (s.clone(), vec![f32::NAN; n]);
        mask_and_copy(&mut d, None, &mut copy);
        assert_eq!((&d, &copy), (&s, &s));
    }
}

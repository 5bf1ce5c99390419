//! The lecture's activation functions and their derivatives, element-wise.
use crate::tensor::Float;

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
}

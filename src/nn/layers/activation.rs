//! The lecture's activations `relu`, `sigmoid`, `tanh` and `identity` (derivatives written
//! through the output), and the layer that runs any other element-wise function f with f'
//! from the input ([`Pointwise`]).
use super::{BuildCx, Layer, LayerDef, Pass, NO_CACHE};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::ops::activation::{self, Activation};
use crate::tensor::{Float, Tensor};
use crate::onnx::graph::Scope;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationSpec(pub Activation);

impl LayerDef for ActivationSpec {
    const TYPES: &'static [&'static str] = &["relu", "sigmoid", "tanh", "identity"];

    fn parse(name: &str, _f: &mut Fields) -> Result<Self> {
        let a = Activation::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .expect("one of TYPES");
        Ok(ActivationSpec(a))
    }

    fn type_name(&self) -> &'static str {
        self.0.name()
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        Ok(input.to_vec())
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn build<T: Float>(&self, _input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        Box::new(Act {
            act: self.0,
            output: None,
        })
    }

    fn onnx(&self, _input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let op = match self.0 {
            Activation::Identity => return Ok(x.to_string()),
            Activation::Sigmoid => "Sigmoid",
            Activation::Tanh => "Tanh",
            Activation::Relu => "Relu",
        };
        Ok(cx.node(op, &[x], &[], self.0.name()))
    }
}

pub struct Act<T> {
    pub(crate) act: Activation,
    output: Option<Tensor<T>>, // y = f(z), same shape as the input; f' is written through y
}

impl<T: Float> Act<T> {
    pub fn new(act: Activation) -> Self {
        Act { act, output: None }
    }
}

impl<T: Float> Layer<T> for Act<T> {
    fn forward(&mut self, mut x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        activation::forward_inplace(self.act, x.data_mut());
        if pass.grad && self.act != Activation::Identity {
            self.output = Some(x.clone());
        }
        x
    }
    fn backward(&mut self, mut dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        if self.act != Activation::Identity {
            let y = self.output.take().expect(NO_CACHE);
            activation::backward_inplace(self.act, y.data(), dy.data_mut());
        }
        need_dx.then_some(dy)
    }
}

/// An element-wise function with its derivative at the input.
pub trait Pointwise: Copy + Send + 'static {
    /// f(z).
    fn value<T: Float>(self, z: T) -> T;
    /// f'(z).
    fn slope<T: Float>(self, z: T) -> T;
}

/// The layer of a [`Pointwise`] function: caches its input for f'.
pub struct PointwiseLayer<T, P> {
    f: P,
    input: Option<Tensor<T>>, // z, same shape as the input
}

impl<T: Float, P: Pointwise> PointwiseLayer<T, P> {
    pub fn boxed(f: P) -> Box<dyn Layer<T>> {
        Box::new(PointwiseLayer { f, input: None })
    }
}

impl<T: Float, P: Pointwise> Layer<T> for PointwiseLayer<T, P> {
    fn forward(&mut self, mut x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        self.input = pass.grad.then(|| x.clone());
        let f = self.f;
        x.data_mut().iter_mut().for_each(|v| *v = f.value(*v));
        x
    }
    fn backward(&mut self, mut dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        let z = self.input.take().expect(NO_CACHE);
        let f = self.f;
        dy.data_mut()
            .iter_mut()
            .zip(z.data())
            .for_each(|(d, &z)| *d *= f.slope(z));
        need_dx.then_some(dy)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testing::{gradcheck, spec};
    use super::*;

    /// f' against central differences of f at points on both sides of 0.
    pub fn check_slope<P: Pointwise>(f: P) {
        for &z in &[-3.0f64, -0.7, -0.01, 0.02, 0.3, 2.5] {
            let h = 1e-6;
            let fd = (f.value(z + h) - f.value(z - h)) / (2.0 * h);
            assert!(
                (f.slope(z) - fd).abs() < 1e-8,
                "at {z}: {} vs {fd}",
                f.slope(z)
            );
        }
    }

    /// Plots sample each activation through its own layer: f and f' as the layer computes them.
    #[test]
    fn sampled_for_plots_by_the_layer_itself() {
        use super::super::sample_activation;
        let (_, f, df) = sample_activation("relu", &[-1.0, 2.0], "t").unwrap();
        assert_eq!((f, df), (vec![0.0, 2.0], vec![0.0, 1.0]));
        let (_, f, df) = sample_activation("{ type = \"elu\", alpha = 2.0 }", &[-1.0], "t").unwrap();
        assert_eq!((f[0], df[0]), (2.0 * (-1.0f64).exp_m1(), 2.0 * (-1.0f64).exp()));
        let e = sample_activation("dropout", &[0.0], "t").unwrap_err().to_string();
        assert!(e.contains("not an element-wise activation"), "{e}");
        assert!(sample_activation("softmax", &[0.0], "t").is_err());
    }

    #[test]
    fn lecture_activations() {
        for t in ["relu", "sigmoid", "tanh", "identity"] {
            let s = spec(&format!("{{ type = \"{t}\" }}")).unwrap();
            assert_eq!(s.type_name(), t);
            assert_eq!(s.output_shape(&[2, 3]).unwrap(), vec![2, 3]);
            gradcheck(
                &format!("{{ type = \"{t}\" }}"),
                &[2, 3, 2, 2],
                Pass::train(0),
            );
        }
        assert!(spec("{ type = \"relu\", slope = 1 }").is_err());
    }
}

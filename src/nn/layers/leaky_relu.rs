//! `leaky_relu`: PyTorch's LeakyReLU, f(z) = z for z > 0, else negative_slope · z.
use super::activation::{Pointwise, PointwiseLayer};
use super::{BuildCx, Layer, LayerDef};
use crate::error::Result;
use crate::nn::keys::{float_text, Fields};
use crate::tensor::Float;
use crate::onnx::graph::{Attr, Scope};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakyReluSpec {
    pub negative_slope: f64,
}

impl Pointwise for LeakyReluSpec {
    fn value<T: Float>(self, z: T) -> T {
        if z > T::zero() {
            z
        } else {
            z * T::of(self.negative_slope)
        }
    }
    fn slope<T: Float>(self, z: T) -> T {
        if z > T::zero() {
            T::one()
        } else {
            T::of(self.negative_slope)
        }
    }
}

impl LayerDef for LeakyReluSpec {
    const TYPES: &'static [&'static str] = &["leaky_relu"];

    fn parse(_name: &str, f: &mut Fields) -> Result<Self> {
        let negative_slope = f.float(
            "negative_slope",
            0.01,
            (f64::MIN, f64::MAX),
            "a finite number",
        )?;
        Ok(LeakyReluSpec { negative_slope })
    }

    fn type_name(&self) -> &'static str {
        "leaky_relu"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        Ok(input.to_vec())
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        vec![("negative_slope", float_text(self.negative_slope))]
    }

    fn build<T: Float>(&self, _input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        PointwiseLayer::boxed(*self)
    }

    fn onnx(&self, _input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let alpha = Attr::Float(self.negative_slope as f32);
        Ok(cx.node("LeakyRelu", &[x], &[("alpha", alpha)], "leaky_relu"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::activation::tests::check_slope;
    use super::super::testing::{gradcheck, spec};
    use super::super::{LayerSpec, Pass};
    use super::*;

    #[test]
    fn values_slopes_and_keys() {
        let f = LeakyReluSpec {
            negative_slope: 0.2,
        };
        assert_eq!((f.value(-2.0f64), f.value(3.0f64)), (-0.4, 3.0));
        check_slope(f);
        check_slope(LeakyReluSpec {
            negative_slope: -0.5,
        });
        assert_eq!(
            spec("{ type = \"leaky_relu\" }").unwrap(),
            LayerSpec::LeakyRelu(LeakyReluSpec {
                negative_slope: 0.01
            })
        );
        assert!(spec("{ type = \"leaky_relu\", negative_slope = \"x\" }").is_err());
        gradcheck(
            "{ type = \"leaky_relu\", negative_slope = 0.1 }",
            &[2, 3, 2, 2],
            Pass::train(0),
        );
    }
}

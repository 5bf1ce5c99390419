//! `elu`: PyTorch's ELU, f(z) = z for z > 0, else α(eᶻ − 1).
use super::activation::{Pointwise, PointwiseLayer};
use super::{BuildCx, Layer, LayerDef};
use crate::error::Result;
use crate::nn::keys::{float_text, Fields};
use crate::tensor::Float;
use crate::onnx::graph::{Attr, Scope};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EluSpec {
    pub alpha: f64,
}

impl Pointwise for EluSpec {
    fn value<T: Float>(self, z: T) -> T {
        if z > T::zero() {
            z
        } else {
            T::of(self.alpha) * z.exp_m1()
        }
    }
    fn slope<T: Float>(self, z: T) -> T {
        if z > T::zero() {
            T::one()
        } else {
            T::of(self.alpha) * z.exp()
        }
    }
}

impl LayerDef for EluSpec {
    const TYPES: &'static [&'static str] = &["elu"];

    fn parse(_name: &str, f: &mut Fields) -> Result<Self> {
        let alpha = f.float("alpha", 1.0, (f64::MIN, f64::MAX), "a finite number")?;
        Ok(EluSpec { alpha })
    }

    fn type_name(&self) -> &'static str {
        "elu"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        Ok(input.to_vec())
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        vec![("alpha", float_text(self.alpha))]
    }

    fn build<T: Float>(&self, _input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        PointwiseLayer::boxed(*self)
    }

    fn onnx(&self, _input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        Ok(cx.node("Elu", &[x], &[("alpha", Attr::Float(self.alpha as f32))], "elu"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::activation::tests::check_slope;
    use super::super::testing::gradcheck;
    use super::super::Pass;
    use super::*;

    #[test]
    fn values_and_slopes() {
        let f = EluSpec { alpha: 1.5 };
        assert_eq!(f.value(2.0f64), 2.0);
        assert!((f.value(-1.0f64) - 1.5 * ((-1.0f64).exp() - 1.0)).abs() < 1e-15);
        check_slope(f);
        gradcheck(
            "{ type = \"elu\", alpha = 0.7 }",
            &[2, 3, 2, 2],
            Pass::train(0),
        );
    }
}

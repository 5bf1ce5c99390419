//! `silu`: PyTorch's SiLU (swish), f(z) = z·σ(z).
use super::activation::{Pointwise, PointwiseLayer};
use super::{BuildCx, Layer, LayerDef};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::ops::activation::sigmoid;
use crate::tensor::Float;
use crate::onnx::graph::Scope;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiluSpec;

impl Pointwise for SiluSpec {
    fn value<T: Float>(self, z: T) -> T {
        z * sigmoid(z)
    }
    /// σ(z)(1 + z(1 − σ(z))).
    fn slope<T: Float>(self, z: T) -> T {
        let s = sigmoid(z);
        s * (T::one() + z * (T::one() - s))
    }
}

impl LayerDef for SiluSpec {
    const TYPES: &'static [&'static str] = &["silu"];

    fn parse(_name: &str, _f: &mut Fields) -> Result<Self> {
        Ok(SiluSpec)
    }

    fn type_name(&self) -> &'static str {
        "silu"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        Ok(input.to_vec())
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn build<T: Float>(&self, _input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        PointwiseLayer::boxed(*self)
    }

    /// x·σ(x): ONNX has no SiLU operator (HardSwish is another function).
    fn onnx(&self, _input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let s = cx.node("Sigmoid", &[x], &[], "sigmoid");
        Ok(cx.node("Mul", &[x, &s], &[], "silu"))
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
        // torch.nn.functional.silu(torch.tensor(1.0, dtype=torch.float64)).
        assert!((SiluSpec.value(1.0f64) - 0.731_058_578_630_004_9).abs() < 1e-15);
        assert_eq!(SiluSpec.value(0.0f64), 0.0);
        check_slope(SiluSpec);
        gradcheck("{ type = \"silu\" }", &[2, 3, 2, 2], Pass::train(0));
    }
}

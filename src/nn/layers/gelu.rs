//! `gelu`: PyTorch's GELU, z·Φ(z) with the exact erf form by default or its tanh
//! approximation (`approximate = "tanh"`).
use super::activation::{Pointwise, PointwiseLayer};
use super::{BuildCx, Layer, LayerDef};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::tensor::Float;
use crate::onnx::graph::{Attr, Scope};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeluSpec {
    /// The tanh approximation instead of the erf form.
    pub tanh: bool,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const COEF: f64 = 0.044_715;

impl Pointwise for GeluSpec {
    fn value<T: Float>(self, z: T) -> T {
        let x = z.f64();
        T::of(if self.tanh {
            0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + COEF * x * x * x)).tanh())
        } else {
            0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
        })
    }
    fn slope<T: Float>(self, z: T) -> T {
        let x = z.f64();
        T::of(if self.tanh {
            let t = (SQRT_2_OVER_PI * (x + COEF * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x)
        } else {
            let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + x * pdf
        })
    }
}

impl LayerDef for GeluSpec {
    const TYPES: &'static [&'static str] = &["gelu"];

    fn parse(_name: &str, f: &mut Fields) -> Result<Self> {
        let tanh = f.choice("approximate", "none", &["none", "tanh"])? == "tanh";
        Ok(GeluSpec { tanh })
    }

    fn type_name(&self) -> &'static str {
        "gelu"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        Ok(input.to_vec())
    }

    fn elementwise(&self) -> bool {
        true
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        let a = if self.tanh { "\"tanh\"" } else { "\"none\"" };
        vec![("approximate", a.into())]
    }

    fn build<T: Float>(&self, _input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        PointwiseLayer::boxed(*self)
    }

    /// The Gelu operator from operator set 20; before it, its definition in elementary
    /// operators: 0.5·x·(1 + erf(x/√2)), or 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    fn onnx(&self, _input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let approximate = if self.tanh { "tanh" } else { "none" };
        if cx.opset() >= 20 {
            let a = Attr::Str(approximate.into());
            return Ok(cx.node("Gelu", &[x], &[("approximate", a)], "gelu"));
        }
        let inner = if self.tanh {
            let coef = cx.float("coef", &[], &[COEF as f32]);
            let scale = cx.float("scale", &[], &[SQRT_2_OVER_PI as f32]);
            let x2 = cx.node("Mul", &[x, x], &[], "x2");
            let x3 = cx.node("Mul", &[&x2, x], &[], "x3");
            let cx3 = cx.node("Mul", &[&x3, &coef], &[], "cx3");
            let sum = cx.node("Add", &[x, &cx3], &[], "sum");
            let arg = cx.node("Mul", &[&sum, &scale], &[], "arg");
            cx.node("Tanh", &[&arg], &[], "tanh")
        } else {
            let root2 = cx.float("sqrt2", &[], &[std::f32::consts::SQRT_2]);
            let arg = cx.node("Div", &[x, &root2], &[], "arg");
            cx.node("Erf", &[&arg], &[], "erf")
        };
        let one = cx.float("one", &[], &[1.0]);
        let half = cx.float("half", &[], &[0.5]);
        let p = cx.node("Add", &[&inner, &one], &[], "one_plus");
        let xp = cx.node("Mul", &[x, &p], &[], "x_times");
        Ok(cx.node("Mul", &[&xp, &half], &[], "gelu"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::activation::tests::check_slope;
    use super::super::testing::{gradcheck, spec};
    use super::super::Pass;
    use super::*;

    #[test]
    fn values_slopes_and_keys() {
        // torch.nn.functional.gelu(torch.tensor(1.0, dtype=torch.float64)) and with
        // approximate="tanh".
        assert!((GeluSpec { tanh: false }.value(1.0f64) - 0.841_344_746_068_543).abs() < 1e-15);
        assert!((GeluSpec { tanh: true }.value(1.0f64) - 0.841_191_990_608_276_8).abs() < 1e-15);
        check_slope(GeluSpec { tanh: false });
        check_slope(GeluSpec { tanh: true });
        assert!(spec("{ type = \"gelu\", approximate = \"erf\" }").is_err());
        for a in ["none", "tanh"] {
            gradcheck(
                &format!("{{ type = \"gelu\", approximate = \"{a}\" }}"),
                &[2, 3, 2, 2],
                Pass::train(0),
            );
        }
    }
}

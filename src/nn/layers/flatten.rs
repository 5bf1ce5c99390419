//! `flatten`: PyTorch's Flatten, (N, C, H, W) → (N, C·H·W).
use super::{BuildCx, Layer, LayerDef, Pass};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::tensor::{Float, Tensor};
use crate::onnx::graph::{Attr, Scope};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlattenSpec;

impl LayerDef for FlattenSpec {
    const TYPES: &'static [&'static str] = &["flatten"];

    fn parse(_name: &str, _f: &mut Fields) -> Result<Self> {
        Ok(FlattenSpec)
    }

    fn type_name(&self) -> &'static str {
        "flatten"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        Ok(vec![
            crate::nn::spec::elements(input).ok_or("the input is too large to flatten")?
        ])
    }

    fn build<T: Float>(&self, _input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        Box::new(Flatten {
            in_shape: Vec::new(),
        })
    }

    fn onnx(&self, _input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        Ok(cx.node("Flatten", &[x], &[("axis", Attr::Int(1))], "flatten"))
    }
}

pub struct Flatten {
    in_shape: Vec<usize>, // (N, ...) of the last forward
}

impl<T: Float> Layer<T> for Flatten {
    fn forward(&mut self, x: Tensor<T>, _pass: &Pass) -> Tensor<T> {
        self.in_shape = x.shape().to_vec();
        let n = self.in_shape[0];
        let f = x.len() / n.max(1);
        x.reshape(&[n, f]).expect("same element count")
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        need_dx.then(|| dy.reshape(&self.in_shape).expect("same element count"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{layer, spec};
    use super::*;

    #[test]
    fn flattens_and_restores() {
        assert_eq!(
            spec("{ type = \"flatten\" }")
                .unwrap()
                .output_shape(&[2, 3, 4])
                .unwrap(),
            vec![24]
        );
        assert!(spec("{ type = \"flatten\", x = 1 }").is_err());
        let (_, mut l) = layer("{ type = \"flatten\" }", &[2, 1, 2]);
        let x = Tensor::from_vec(&[2, 2, 1, 2], (0..8).map(f64::from).collect()).unwrap();
        let y = l.forward(x.clone(), &Pass::train(0));
        assert_eq!((y.shape(), y.data()), (&[2usize, 4][..], x.data()));
        assert_eq!(l.backward(y, true).unwrap(), x);
    }
}

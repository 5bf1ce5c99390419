//! `concat`: values side by side along the channels (PyTorch's `torch.cat(xs, dim=1)`), as
//! GoogLeNet's branches and DenseNet's features are joined.
use super::{at_least, Join, JoinDef};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::nn::layers::Pass;
use crate::onnx::graph::{Attr, Scope};
use crate::tensor::{Float, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcatSpec;

impl JoinDef for ConcatSpec {
    const TYPES: &'static [&'static str] = &["concat"];

    fn parse(_name: &str, _f: &mut Fields) -> Result<Self> {
        Ok(ConcatSpec)
    }

    fn type_name(&self) -> &'static str {
        "concat"
    }

    fn output_shape(&self, inputs: &[Vec<usize>]) -> Result<Vec<usize>, String> {
        at_least(inputs, 1)?;
        let first = &inputs[0];
        let mut channels = 0usize;
        for s in inputs {
            if s.len() != first.len() || s[1..] != first[1..] {
                return Err(format!(
                    "joins values that differ in their channels only, got {first:?} and {s:?}"
                ));
            }
            channels = channels.saturating_add(s[0]);
        }
        let mut out = first.clone();
        out[0] = channels;
        Ok(out)
    }

    fn build<T: Float>(&self, inputs: &[Vec<usize>]) -> Box<dyn Join<T>> {
        Box::new(Concat {
            sizes: inputs.iter().map(|s| s.iter().product()).collect(),
            shapes: inputs.to_vec(),
        })
    }

    fn onnx(&self, _inputs: &[Vec<usize>], xs: &[&str], cx: &mut Scope) -> Result<String, String> {
        Ok(cx.node("Concat", xs, &[("axis", Attr::Int(1))], "concat"))
    }
}

/// Each sample's values: input 0's, then input 1's, ...
pub struct Concat {
    sizes: Vec<usize>,       // values per sample of each input
    shapes: Vec<Vec<usize>>, // sample shape of each input
}

impl<T: Float> Join<T> for Concat {
    fn forward(&mut self, xs: &[&Tensor<T>], _pass: &Pass) -> Tensor<T> {
        let n = xs[0].shape()[0];
        let total: usize = self.sizes.iter().sum();
        let mut shape = xs[0].shape().to_vec();
        shape[1] = self.shapes.iter().map(|s| s[0]).sum();
        let mut y = Vec::with_capacity(n * total);
        for i in 0..n {
            for (x, &len) in xs.iter().zip(&self.sizes) {
                y.extend_from_slice(&x.data()[i * len..(i + 1) * len]);
            }
        }
        Tensor::from_vec(&shape, y).expect("the channels' sum")
    }

    fn backward(&mut self, dy: Tensor<T>) -> Vec<Tensor<T>> {
        let n = dy.shape()[0];
        let total: usize = self.sizes.iter().sum();
        let mut at = 0;
        self.sizes
            .iter()
            .zip(&self.shapes)
            .map(|(&len, s)| {
                let mut d = Vec::with_capacity(n * len);
                for i in 0..n {
                    d.extend_from_slice(&dy.data()[i * total + at..i * total + at + len]);
                }
                at += len;
                let mut shape = vec![n];
                shape.extend_from_slice(s);
                Tensor::from_vec(&shape, d).expect("the input's shape")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, parse};
    use super::*;

    #[test]
    fn joins_along_the_channels() {
        let s = parse("{ type = \"concat\" }");
        assert_eq!(
            s.output_shape(&[vec![2, 3, 3], vec![5, 3, 3]]).unwrap(),
            [7, 3, 3]
        );
        assert_eq!(s.output_shape(&[vec![4], vec![6]]).unwrap(), [10]);
        assert!(s.output_shape(&[vec![2, 3, 3], vec![2, 3, 4]]).is_err());
        let mut j = s.build::<f64>(&[vec![1, 1, 2], vec![2, 1, 2]]);
        let a = Tensor::from_vec(&[2, 1, 1, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = Tensor::from_vec(&[2, 2, 1, 2], (5..13).map(f64::from).collect()).unwrap();
        let y = j.forward(&[&a, &b], &Pass::INFER);
        assert_eq!(y.shape(), [2, 3, 1, 2]);
        assert_eq!(
            y.data(),
            [1.0, 2.0, 5.0, 6.0, 7.0, 8.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0]
        );
        gradcheck(
            "{ type = \"concat\" }",
            &[vec![2, 2, 3, 3], vec![2, 1, 3, 3], vec![2, 3, 3, 3]],
        );
    }
}

//! `add`: the element-wise sum of two or more values of one shape (a residual connection
//! written as a graph: `inputs = ["bn2", "downsample"]`).
use super::{at_least, Join, JoinDef};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::nn::layers::Pass;
use crate::onnx::graph::Scope;
use crate::ops::activation::add_residual;
use crate::tensor::{Float, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddSpec;

impl JoinDef for AddSpec {
    const TYPES: &'static [&'static str] = &["add"];

    fn parse(_name: &str, _f: &mut Fields) -> Result<Self> {
        Ok(AddSpec)
    }

    fn type_name(&self) -> &'static str {
        "add"
    }

    fn output_shape(&self, inputs: &[Vec<usize>]) -> Result<Vec<usize>, String> {
        at_least(inputs, 2)?;
        if let Some(other) = inputs.iter().find(|s| **s != inputs[0]) {
            return Err(format!(
                "adds values of one shape, got {:?} and {other:?}",
                inputs[0]
            ));
        }
        Ok(inputs[0].clone())
    }

    fn build<T: Float>(&self, inputs: &[Vec<usize>]) -> Box<dyn Join<T>> {
        Box::new(Add { n: inputs.len() })
    }

    fn onnx(&self, _inputs: &[Vec<usize>], xs: &[&str], cx: &mut Scope) -> Result<String, String> {
        Ok(match xs {
            [a, b] => cx.node("Add", &[a, b], &[], "add"),
            _ => cx.node("Sum", xs, &[], "sum"),
        })
    }
}

/// y = Σ xᵢ, summed in input order.
pub struct Add {
    n: usize,
}

impl<T: Float> Join<T> for Add {
    fn forward(&mut self, xs: &[&Tensor<T>], _pass: &Pass) -> Tensor<T> {
        let mut y = xs[0].clone();
        for x in &xs[1..] {
            add_residual(y.data_mut(), x.data(), false, None);
        }
        y
    }
    fn backward(&mut self, dy: Tensor<T>) -> Vec<Tensor<T>> {
        let mut out = vec![dy.clone(); self.n - 1];
        out.push(dy);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, parse};

    #[test]
    fn sums_and_passes_the_gradient_to_each_input() {
        let s = parse("{ type = \"add\", inputs = [\"a\", \"b\", \"c\"] }");
        assert_eq!(
            s.output_shape(&[vec![2, 3, 3], vec![2, 3, 3]]).unwrap(),
            [2, 3, 3]
        );
        assert!(s.output_shape(&[vec![2, 3, 3], vec![2, 3, 1]]).is_err());
        assert!(s.output_shape(&[vec![2, 3, 3]]).is_err());
        gradcheck("{ type = \"add\" }", &vec![vec![2, 2, 3, 3]; 3]);
    }
}

//! `mul`: the element-wise product of two values, one of which may be a [C, 1, 1] gate
//! broadcast over the other's [C, H, W] (squeeze-and-excitation's scaling).
use super::{Join, JoinDef};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::nn::layers::Pass;
use crate::onnx::graph::Scope;
use crate::tensor::{Float, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MulSpec;

/// Which input of a `mul` is a [C, 1, 1] gate over the other's [C, H, W], if one is.
fn gate_of(inputs: &[Vec<usize>]) -> Option<usize> {
    let is_gate = |g: &[usize], x: &[usize]| {
        g.len() == 3 && x.len() == 3 && g[0] == x[0] && g[1] == 1 && g[2] == 1 && g != x
    };
    if is_gate(&inputs[1], &inputs[0]) {
        Some(1)
    } else if is_gate(&inputs[0], &inputs[1]) {
        Some(0)
    } else {
        None
    }
}

impl JoinDef for MulSpec {
    const TYPES: &'static [&'static str] = &["mul"];

    fn parse(_name: &str, _f: &mut Fields) -> Result<Self> {
        Ok(MulSpec)
    }

    fn type_name(&self) -> &'static str {
        "mul"
    }

    fn output_shape(&self, inputs: &[Vec<usize>]) -> Result<Vec<usize>, String> {
        if inputs.len() != 2 {
            return Err(format!(
                "takes 2 inputs (`inputs = [...]`), got {}",
                inputs.len()
            ));
        }
        match gate_of(inputs) {
            Some(g) => Ok(inputs[1 - g].clone()),
            None if inputs[0] == inputs[1] => Ok(inputs[0].clone()),
            None => Err(format!(
                "multiplies values of one shape, or a [C, 1, 1] gate by a [C, H, W] value; got {:?} and {:?}",
                inputs[0], inputs[1]
            )),
        }
    }

    fn build<T: Float>(&self, inputs: &[Vec<usize>]) -> Box<dyn Join<T>> {
        Box::new(Mul {
            gate: gate_of(inputs),
            cache: None,
        })
    }

    /// Mul broadcasts a [N, C, 1, 1] gate as numpy does.
    fn onnx(&self, _inputs: &[Vec<usize>], xs: &[&str], cx: &mut Scope) -> Result<String, String> {
        Ok(cx.node("Mul", xs, &[], "mul"))
    }
}

/// y = a ⊙ b, or x ⊙ g with the gate g broadcast over each channel's plane.
pub struct Mul<T> {
    /// Which input is a [C, 1, 1] gate, when one is.
    gate: Option<usize>,
    /// The two inputs of the last caching forward, in input order, for backward.
    cache: Option<[Tensor<T>; 2]>,
}

impl<T: Float> Join<T> for Mul<T> {
    fn forward(&mut self, xs: &[&Tensor<T>], pass: &Pass) -> Tensor<T> {
        let y = match self.gate {
            None => {
                let mut y = xs[0].clone();
                y.data_mut()
                    .iter_mut()
                    .zip(xs[1].data())
                    .for_each(|(a, &b)| *a *= b);
                y
            }
            Some(g) => {
                let (x, gate) = (xs[1 - g], xs[g]);
                let mut y = x.clone();
                let plane = x.len() / gate.len().max(1); // H·W
                for (p, &s) in y.data_mut().chunks_exact_mut(plane).zip(gate.data()) {
                    p.iter_mut().for_each(|v| *v *= s);
                }
                y
            }
        };
        self.cache = pass.grad.then(|| [xs[0].clone(), xs[1].clone()]);
        y
    }

    fn backward(&mut self, dy: Tensor<T>) -> Vec<Tensor<T>> {
        let [a, b] = self
            .cache
            .take()
            .expect(crate::nn::layers::NO_CACHE);
        match self.gate {
            None => {
                let mut da = dy.clone();
                da.data_mut()
                    .iter_mut()
                    .zip(b.data())
                    .for_each(|(d, &v)| *d *= v);
                let mut db = dy;
                db.data_mut()
                    .iter_mut()
                    .zip(a.data())
                    .for_each(|(d, &v)| *d *= v);
                vec![da, db]
            }
            Some(g) => {
                let (x, gate) = if g == 1 { (a, b) } else { (b, a) };
                let plane = x.len() / gate.len().max(1);
                // dL/dg: Σ over each plane of dy ⊙ x; dL/dx: dy ⊙ g.
                let mut dg = Tensor::zeros(gate.shape());
                for ((d, xp), dgv) in dy
                    .data()
                    .chunks_exact(plane)
                    .zip(x.data().chunks_exact(plane))
                    .zip(dg.data_mut())
                {
                    *dgv = d.iter().zip(xp).map(|(&u, &v)| u * v).sum();
                }
                let mut dx = dy;
                for (p, &s) in dx.data_mut().chunks_exact_mut(plane).zip(gate.data()) {
                    p.iter_mut().for_each(|v| *v *= s);
                }
                if g == 1 {
                    vec![dx, dg]
                } else {
                    vec![dg, dx]
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, parse};

    #[test]
    fn multiplies_elementwise_or_by_a_channel_gate() {
        let s = parse("{ type = \"mul\" }");
        assert_eq!(
            s.output_shape(&[vec![3, 4, 4], vec![3, 1, 1]]).unwrap(),
            [3, 4, 4]
        );
        assert_eq!(
            s.output_shape(&[vec![3, 1, 1], vec![3, 4, 4]]).unwrap(),
            [3, 4, 4]
        );
        assert_eq!(s.output_shape(&[vec![5], vec![5]]).unwrap(), [5]);
        assert!(s.output_shape(&[vec![3, 4, 4], vec![2, 1, 1]]).is_err());
        assert!(s.output_shape(&[vec![3, 4, 4]]).is_err());
        gradcheck("{ type = \"mul\" }", &[vec![2, 3, 2, 2], vec![2, 3, 2, 2]]);
        gradcheck("{ type = \"mul\" }", &[vec![2, 3, 4, 5], vec![2, 3, 1, 1]]);
        gradcheck("{ type = \"mul\" }", &[vec![2, 3, 1, 1], vec![2, 3, 4, 5]]);
    }
}

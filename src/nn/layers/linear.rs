//! `linear`: PyTorch's Linear, y = x Wᵀ + b on flat samples.
use super::{weight_bias, weight_bias_mut, BuildCx, Layer, LayerDef, Named, NamedMut, Param};
use super::{Pass, TensorInfo, NO_CACHE};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::ops::gemm::{matmul, Par, Trans};
use crate::tensor::{Float, Tensor};
use crate::onnx::graph::{Attr, Scope};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearSpec {
    pub out_features: usize,
    pub bias: bool,
}

impl LayerDef for LinearSpec {
    const TYPES: &'static [&'static str] = &["linear"];

    fn parse(_name: &str, f: &mut Fields) -> Result<Self> {
        let out_features = f.required_usize("out_features")?;
        let bias = f.bool("bias", true)?;
        Ok(LinearSpec { out_features, bias })
    }

    fn type_name(&self) -> &'static str {
        "linear"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        if input.len() != 1 {
            return Err(format!(
                "needs a flat input, got {input:?}; put a flatten layer before it"
            ));
        }
        Ok(vec![self.out_features])
    }

    fn tensors(&self, input: &[usize]) -> Vec<TensorInfo> {
        let mut t = vec![TensorInfo::param("weight", &[self.out_features, input[0]])];
        if self.bias {
            t.push(TensorInfo::param("bias", &[self.out_features]));
        }
        t
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        vec![
            ("out_features", self.out_features.to_string()),
            ("bias", self.bias.to_string()),
        ]
    }

    fn build<T: Float>(&self, input: &[usize], cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        let (wb, bb) = cx.init.bounds(input[0], self.out_features);
        let weight = Param::uniform(&[self.out_features, input[0]], wb, cx.rng);
        let bias = self
            .bias
            .then(|| Param::uniform(&[self.out_features], bb, cx.rng));
        Box::new(Linear {
            in_features: input[0],
            out_features: self.out_features,
            weight,
            bias,
            input: None,
        })
    }

    /// Gemm: x·Wᵀ + b.
    fn onnx(&self, _input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let w = cx.weight("weight")?;
        let mut inputs = vec![x.to_string(), w];
        if self.bias {
            inputs.push(cx.weight("bias")?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(cx.node("Gemm", &inputs, &[("transB", Attr::Int(1))], "linear"))
    }
}

/// Lets a GEMM use the thread pool only when it is big enough to pay for it.
fn par_for(m: usize, k: usize, n: usize) -> Par {
    if m * k * n >= 1 << 21 {
        Par::Rayon
    } else {
        Par::Seq
    }
}

pub struct Linear<T> {
    in_features: usize,
    out_features: usize,
    weight: Param<T>,         // (out, in)
    bias: Option<Param<T>>,   // (out)
    input: Option<Tensor<T>>, // (N, in)
}

impl<T: Float> Layer<T> for Linear<T> {
    fn forward(&mut self, x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        let (n, i, o) = (x.shape()[0], self.in_features, self.out_features);
        let mut y = Tensor::zeros(&[n, o]); // (N, out)
        if let Some(b) = &self.bias {
            y.data_mut()
                .chunks_mut(o)
                .for_each(|r| r.copy_from_slice(b.value.data()));
        }
        matmul(
            y.data_mut(),
            x.data(),
            Trans::No,
            self.weight.value.data(),
            Trans::Yes,
            n,
            i,
            o,
            self.bias.is_some(),
            par_for(n, i, o),
        );
        self.input = pass.grad.then_some(x);
        y
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        let x = self.input.take().expect(NO_CACHE);
        let (n, i, o) = (x.shape()[0], self.in_features, self.out_features);
        // dW (out, in) += dYᵀ (out, N) · X (N, in)
        matmul(
            self.weight.grad.data_mut(),
            dy.data(),
            Trans::Yes,
            x.data(),
            Trans::No,
            o,
            n,
            i,
            true,
            par_for(o, n, i),
        );
        if let Some(b) = &mut self.bias {
            for (j, g) in b.grad.data_mut().iter_mut().enumerate() {
                *g += T::of((0..n).map(|s| dy.data()[s * o + j].f64()).sum::<f64>());
            }
        }
        need_dx.then(|| {
            let mut dx = Tensor::zeros(x.shape()); // (N, in) = dY (N, out) · W (out, in)
            matmul(
                dx.data_mut(),
                dy.data(),
                Trans::No,
                self.weight.value.data(),
                Trans::No,
                n,
                o,
                i,
                false,
                par_for(n, o, i),
            );
            dx
        })
    }
    fn params(&self) -> Named<'_, Param<T>> {
        weight_bias(&self.weight, self.bias.as_ref())
    }
    fn params_mut(&mut self) -> NamedMut<'_, Param<T>> {
        weight_bias_mut(&mut self.weight, self.bias.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, layer, spec};
    use super::*;

    #[test]
    fn shape_rule_and_values() {
        let s = spec("{ type = \"linear\", out_features = 3, bias = false }").unwrap();
        assert_eq!(s.output_shape(&[5]).unwrap(), vec![3]);
        assert!(s.output_shape(&[1, 2, 2]).unwrap_err().contains("flatten"));
        // y = W x on a unit vector picks a column of W.
        let (_, mut l) = layer("{ type = \"linear\", out_features = 2 }", &[3]);
        let (w, b) = {
            let p = l.params();
            (p[0].1.value.clone(), p[1].1.value.clone())
        };
        let y = l.forward(
            Tensor::from_vec(&[1, 3], vec![0.0, 1.0, 0.0]).unwrap(),
            &Pass::INFER,
        );
        for r in 0..2 {
            assert_eq!(y.data()[r], w.data()[r * 3 + 1] + b.data()[r]);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        gradcheck(
            "{ type = \"linear\", out_features = 4 }",
            &[3, 5],
            Pass::train(0),
        );
    }
}

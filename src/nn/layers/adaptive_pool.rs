//! `adaptiveavgpool2d` and `adaptivemaxpool2d`: PyTorch's AdaptiveAvgPool2d/MaxPool2d to a
//! fixed output size (`output = 1` is global pooling), also when it does not divide the input.
use super::{chw, BuildCx, Layer, LayerDef, Pass, NO_CACHE};
use crate::error::Result;
use crate::nn::keys::{pair_text, Fields};
use crate::ops::adaptive_pool::{self as ap, AdaptiveGeometry};
use crate::tensor::{Float, Tensor};
use crate::onnx::graph::{Attr, Scope};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptivePoolSpec {
    pub max: bool,
    /// (height, width) of the output.
    pub output: (usize, usize),
}

impl LayerDef for AdaptivePoolSpec {
    const TYPES: &'static [&'static str] = &["adaptiveavgpool2d", "adaptivemaxpool2d"];

    fn parse(name: &str, f: &mut Fields) -> Result<Self> {
        Ok(AdaptivePoolSpec {
            max: name == "adaptivemaxpool2d",
            output: f.pair("output", None)?,
        })
    }

    fn type_name(&self) -> &'static str {
        if self.max {
            "adaptivemaxpool2d"
        } else {
            "adaptiveavgpool2d"
        }
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let [c, _, _] = chw(input)?;
        Ok(vec![c, self.output.0, self.output.1])
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        vec![("output", pair_text(self.output))]
    }

    fn build<T: Float>(&self, input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        Box::new(AdaptivePool::<T> {
            max: self.max,
            channels: input[0],
            geom: AdaptiveGeometry {
                in_h: input[1],
                in_w: input[2],
                out_h: self.output.0,
                out_w: self.output.1,
            },
            argmax: None,
            batch: 0,
            _t: std::marker::PhantomData,
        })
    }

    /// Global pooling for a 1×1 output, a plain pool when the output divides the input,
    /// else each axis in turn: one Slice and Reduce per output row (then column), joined by
    /// Concat: H_out + W_out windows rather than H_out·W_out, exact because every window
    /// of a row band spans the same rows.
    fn onnx(&self, input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let [_, h, w] = chw(input)?;
        let (oh, ow) = self.output;
        let kind = if self.max { "Max" } else { "Average" };
        if (oh, ow) == (1, 1) {
            return Ok(cx.node(&format!("Global{kind}Pool"), &[x], &[], "pool"));
        }
        if h % oh == 0 && w % ow == 0 {
            let k = vec![(h / oh) as i64, (w / ow) as i64];
            let attrs = [("kernel_shape", Attr::Ints(k.clone())), ("strides", Attr::Ints(k))];
            return Ok(cx.node(&format!("{kind}Pool"), &[x], &attrs, "pool"));
        }
        let mut v = x.to_string();
        for (axis, n, m) in [(2, h, oh), (3, w, ow)] {
            if n == m {
                continue;
            }
            let parts: Vec<String> = (0..m)
                .map(|i| {
                    let (b, e) = ap::adaptive_window(i, n, m);
                    let s = cx.slice(&v, &[(axis, b, e, 1)], &format!("axis{axis}_{i}"));
                    cx.reduce(self.max, &s, &[axis], &format!("axis{axis}_{i}_pool"))
                })
                .collect();
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            v = cx.node("Concat", &parts, &[("axis", Attr::Int(axis))], &format!("axis{axis}"));
        }
        Ok(v)
    }
}

pub struct AdaptivePool<T> {
    max: bool,
    channels: usize,
    geom: AdaptiveGeometry,
    argmax: Option<Vec<u32>>, // (N, C, out_h, out_w), max pooling's winners; Some(empty) for avg
    batch: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Layer<T> for AdaptivePool<T> {
    fn forward(&mut self, x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        let g = &self.geom;
        let n = x.shape()[0];
        let mut y = Tensor::zeros(&[n, self.channels, g.out_h, g.out_w]);
        if self.max {
            let mut a = vec![0u32; y.len()];
            ap::adaptive_max_forward(g, x.data(), y.data_mut(), &mut a);
            self.argmax = pass.grad.then_some(a);
        } else {
            ap::adaptive_avg_forward(g, x.data(), y.data_mut());
            self.argmax = pass.grad.then(Vec::new);
        }
        self.batch = n;
        y
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        let argmax = self.argmax.take().expect(NO_CACHE);
        if !need_dx {
            return None;
        }
        let g = &self.geom;
        let mut dx = Tensor::zeros(&[self.batch, self.channels, g.in_h, g.in_w]);
        if self.max {
            ap::adaptive_max_backward(g, dy.data(), &argmax, dx.data_mut());
        } else {
            ap::adaptive_avg_backward(g, dy.data(), dx.data_mut());
        }
        Some(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, spec};
    use super::*;

    #[test]
    fn shapes_and_gradients() {
        let s = spec("{ type = \"adaptiveavgpool2d\", output = [3, 2] }").unwrap();
        assert_eq!(s.output_shape(&[4, 7, 5]).unwrap(), vec![4, 3, 2]);
        assert!(s.output_shape(&[12]).is_err());
        assert!(spec("{ type = \"adaptivemaxpool2d\" }").is_err());
        for t in ["adaptiveavgpool2d", "adaptivemaxpool2d"] {
            for out in ["1", "[3, 2]", "[4, 6]"] {
                gradcheck(
                    &format!("{{ type = \"{t}\", output = {out} }}"),
                    &[2, 2, 5, 4],
                    Pass::train(0),
                );
            }
        }
    }
}

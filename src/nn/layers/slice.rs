//! `slice`: channels `start .. end` of a [C, H, W] value (PyTorch's `x[:, start:end]`, one
//! part of `torch.chunk` / `torch.split` along the channels, as ShuffleNet splits its input).
use super::{chw, BuildCx, Layer, LayerDef, Pass};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::onnx::graph::Scope;
use crate::tensor::{Float, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    pub start: usize,
    pub end: usize,
}

impl LayerDef for SliceSpec {
    const TYPES: &'static [&'static str] = &["slice"];

    fn parse(_name: &str, f: &mut Fields) -> Result<Self> {
        let start = match f.get("start") {
            None => 0,
            Some(v) => match v.as_integer() {
                Some(i) if i >= 0 && i as u64 <= crate::nn::keys::MAX_SIZE as u64 => i as usize,
                _ => {
                    return Err(f.err(format!(
                        "key `start` must be a non-negative integer, got {v}"
                    )))
                }
            },
        };
        let end = f.required_usize("end")?;
        if end <= start {
            return Err(f.err(format!(
                "`end` ({end}) must be greater than `start` ({start})"
            )));
        }
        Ok(SliceSpec { start, end })
    }

    fn type_name(&self) -> &'static str {
        "slice"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let [c, h, w] = chw(input)?;
        if self.end > c {
            return Err(format!(
                "channels {}..{} of an input of {c} channels",
                self.start, self.end
            ));
        }
        Ok(vec![self.end - self.start, h, w])
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        vec![
            ("start", self.start.to_string()),
            ("end", self.end.to_string()),
        ]
    }

    fn build<T: Float>(&self, input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        let plane = input[1] * input[2];
        Box::new(Slice {
            channels: input[0],
            start: self.start,
            end: self.end,
            plane,
        })
    }

    fn onnx(&self, _input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        Ok(cx.slice(x, &[(1, self.start, self.end, 1)], "slice"))
    }
}

pub struct Slice {
    channels: usize,
    start: usize,
    end: usize,
    plane: usize,
}

impl Slice {
    fn take<T: Float>(&self, x: &[T], shape: &[usize]) -> Tensor<T> {
        let (n, per) = (shape[0], self.channels * self.plane);
        let (a, b) = (self.start * self.plane, self.end * self.plane);
        let mut y = Vec::with_capacity(n * (b - a));
        for s in x.chunks_exact(per).take(n) {
            y.extend_from_slice(&s[a..b]);
        }
        Tensor::from_vec(&[n, self.end - self.start, shape[2], shape[3]], y)
            .expect("the slice's shape")
    }
}

impl<T: Float> Layer<T> for Slice {
    fn forward(&mut self, x: Tensor<T>, _pass: &Pass) -> Tensor<T> {
        self.take(x.data(), x.shape())
    }
    fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        self.take(x, shape)
    }
    /// dy in the sliced channels, zeros in the others.
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        if !need_dx {
            return None;
        }
        let n = dy.shape()[0];
        let per = self.channels * self.plane;
        let (a, b) = (self.start * self.plane, self.end * self.plane);
        let mut dx = Tensor::zeros(&[n, self.channels, dy.shape()[2], dy.shape()[3]]);
        for (d, g) in dx
            .data_mut()
            .chunks_exact_mut(per)
            .zip(dy.data().chunks_exact(b - a))
        {
            d[a..b].copy_from_slice(g);
        }
        Some(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, layer, spec};
    use super::*;

    #[test]
    fn takes_the_channels_and_returns_their_gradient() {
        let s = spec("{ type = \"slice\", start = 1, end = 3 }").unwrap();
        assert_eq!(s.output_shape(&[4, 2, 2]).unwrap(), [2, 2, 2]);
        assert!(s.output_shape(&[2, 2, 2]).is_err());
        assert!(s.output_shape(&[8]).is_err());
        assert!(spec("{ type = \"slice\", start = 2, end = 2 }").is_err());
        assert!(spec("{ type = \"slice\", start = 1 }").is_err());
        let (_, mut l) = layer("{ type = \"slice\", start = 1, end = 2 }", &[3, 1, 2]);
        let x = Tensor::from_vec(&[2, 3, 1, 2], (0..12).map(f64::from).collect()).unwrap();
        let y = l.forward(x, &Pass::train(0));
        assert_eq!((y.shape(), y.data()), (&[2usize, 1, 1, 2][..], &[2.0, 3.0, 8.0, 9.0][..]));
        gradcheck("{ type = \"slice\", start = 1, end = 3 }", &[2, 4, 2, 3], Pass::train(0));
    }
}

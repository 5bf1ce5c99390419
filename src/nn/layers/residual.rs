//! `residual`: output = body(x) + shortcut(x), the shortcut the identity unless given
//! (a projection such as 1×1 conv + BatchNorm where the body changes the shape).
use super::{build_sequence, parse_sequence, prefixed, sequence_onnx, sequence_shape, Buffer};
use super::{BuildCx, Layer};
use super::{LayerDef, LayerSpec, Named, NamedMut, Param, Pass, Seq, TensorInfo};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::ops::activation::{add_residual, mask_and_copy};
use crate::ops::conv::Epilogue;
use crate::tensor::{Float, Tensor};
use crate::onnx::graph::Scope;

#[derive(Clone, Debug, PartialEq)]
pub struct ResidualSpec {
    pub body: Vec<LayerSpec>,
    /// None: the identity.
    pub shortcut: Option<Vec<LayerSpec>>,
}

fn seq_text(layers: &[LayerSpec], multiline: bool) -> String {
    let items: Vec<String> = layers.iter().map(LayerSpec::inline_toml).collect();
    if multiline {
        format!("[\n  {},\n]", items.join(",\n  "))
    } else {
        format!("[{}]", items.join(", "))
    }
}

/// The tensors of `layers` on `input`, named `{what}.{j}.{name}`.
fn seq_tensors(layers: &[LayerSpec], input: &[usize], what: &str) -> Vec<TensorInfo> {
    let mut s = input.to_vec();
    let mut out = Vec::new();
    for (j, l) in layers.iter().enumerate() {
        let Ok(next) = l.output_shape(&s) else {
            break; // a spec that does not fit has no tensors to speak of
        };
        out.extend(l.tensors(&s).into_iter().map(|t| TensorInfo {
            name: format!("{what}.{j}.{}", t.name),
            ..t
        }));
        s = next;
    }
    out
}

impl LayerDef for ResidualSpec {
    const TYPES: &'static [&'static str] = &["residual"];

    fn parse(_name: &str, f: &mut Fields) -> Result<Self> {
        let body = parse_sequence(f, "layers", "body", true)?.expect("required");
        let shortcut = parse_sequence(f, "shortcut", "shortcut", false)?;
        Ok(ResidualSpec { body, shortcut })
    }

    fn type_name(&self) -> &'static str {
        "residual"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let b = sequence_shape(&self.body, input, "body")?;
        match &self.shortcut {
            None if b != input => Err(format!(
                "the body maps {input:?} to {b:?}; a residual body must keep the shape (or give a `shortcut` that maps to the same shape)"
            )),
            None => Ok(b),
            Some(sc) => {
                let s = sequence_shape(sc, input, "shortcut")?;
                if s != b {
                    return Err(format!(
                        "the body maps {input:?} to {b:?} but the shortcut to {s:?}; they must agree"
                    ));
                }
                Ok(b)
            }
        }
    }

    fn tensors(&self, input: &[usize]) -> Vec<TensorInfo> {
        let mut t = seq_tensors(&self.body, input, "body");
        if let Some(sc) = &self.shortcut {
            t.extend(seq_tensors(sc, input, "shortcut"));
        }
        t
    }

    fn fields(&self, multiline: bool) -> Vec<(&'static str, String)> {
        let mut f = vec![("layers", seq_text(&self.body, multiline))];
        if let Some(sc) = &self.shortcut {
            f.push(("shortcut", seq_text(sc, multiline)));
        }
        f
    }

    fn children(&self) -> Vec<(&'static str, &[LayerSpec])> {
        let mut c = vec![("body", &self.body[..])];
        if let Some(sc) = &self.shortcut {
            c.push(("shortcut", &sc[..]));
        }
        c
    }

    fn build<T: Float>(&self, input: &[usize], cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        let body = build_sequence(&self.body, input, cx);
        let shortcut = self
            .shortcut
            .as_ref()
            .map(|sc| build_sequence(sc, input, cx));
        Box::new(Residual {
            body,
            shortcut,
            relu: false,
            positive: Vec::new(),
        })
    }

    /// Add(body(x), shortcut(x)), the two sequences in the scopes `body` and `shortcut`.
    fn onnx(&self, input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let b = sequence_onnx(&self.body, input, x, &mut cx.child("body"))?;
        let s = match &self.shortcut {
            Some(sc) => sequence_onnx(sc, input, x, &mut cx.child("shortcut"))?,
            None => x.to_string(),
        };
        Ok(cx.node("Add", &[&b, &s], &[], "add"))
    }
}

pub struct Residual<T> {
    body: Seq<T>,
    shortcut: Option<Seq<T>>,
    /// A ReLU after the sum, fused in by `nn::fuse` (ResNet's blocks end so).
    pub(crate) relu: bool,
    positive: Vec<bool>, // (N, C, H, W) with `relu`: where the sum was > 0, for backward
}

impl<T: Float> Layer<T> for Residual<T> {
    fn forward(&mut self, mut x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        if pass.is_inference() {
            // Nothing cached: the body reads x where it is, without a copy.
            let y = self.infer(x.data(), x.shape());
            self.body.recycled.lock().put(x);
            return y;
        }
        let lent = pass.grad && self.body.layers.first().is_some_and(|l| l.keeps_input());
        let (mut h, own) = if self.shortcut.is_none() && lent {
            (self.body.forward(x, pass), None)
        } else {
            let mut copy = self.body.recycled.lock().take(x.shape());
            mask_and_copy(x.data_mut(), None, copy.data_mut());
            let h = self.body.forward(copy, pass);
            let s = match &mut self.shortcut {
                Some(sc) => sc.forward(x, pass),
                None => x,
            };
            (h, Some(s))
        };
        // The identity shortcut is the input the body's first layer keeps for backward.
        let s = match &own {
            Some(s) => s,
            None => self.body.layers[0].kept_input().expect("kept by its forward"),
        };
        let positive = (pass.grad && self.relu).then(|| {
            self.positive.resize(h.len(), false);
            &mut self.positive[..]
        });
        add_residual(h.data_mut(), s.data(), self.relu, positive);
        if let Some(s) = own {
            self.body.recycled.lock().put(s);
        }
        h
    }
    /// The shortcut first, so that the body's last convolution adds it (and the ReLU) as it
    /// writes its output.
    fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        let s = self.shortcut.as_mut().map(|sc| sc.infer(x, shape));
        let tail = Epilogue {
            add: Some(s.as_ref().map_or(x, |s| s.data())),
            relu: self.relu,
        };
        let h = self.body.infer_then(x, shape, tail);
        if let Some(s) = s {
            self.body.recycled.lock().put(s);
        }
        h
    }
    fn backward(&mut self, mut dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        // dy·ReLU'(y), as the ReLU layer computes it, for the body and the shortcut each.
        let mut d_in = self.body.recycled.lock().take(dy.shape());
        let mask = self.relu.then_some(&self.positive[..]);
        mask_and_copy(dy.data_mut(), mask, d_in.data_mut());
        let d_body = self.body.backward(d_in, need_dx);
        let d_short = match &mut self.shortcut {
            Some(sc) => sc.backward(dy, need_dx),
            None => Some(dy),
        };
        let (mut d, s) = (d_body?, d_short?);
        add_residual(d.data_mut(), s.data(), false, None);
        self.body.recycled.lock().put(s);
        Some(d)
    }
    fn params(&self) -> Named<'_, Param<T>> {
        let mut out = prefixed("body", self.body.params());
        if let Some(sc) = &self.shortcut {
            out.extend(prefixed("shortcut", sc.params()));
        }
        out
    }
    fn params_mut(&mut self) -> NamedMut<'_, Param<T>> {
        let mut out = prefixed("body", self.body.params_mut());
        if let Some(sc) = &mut self.shortcut {
            out.extend(prefixed("shortcut", sc.params_mut()));
        }
        out
    }
    fn buffers(&self) -> Named<'_, Buffer<T>> {
        let mut out = prefixed("body", self.body.buffers());
        if let Some(sc) = &self.shortcut {
            out.extend(prefixed("shortcut", sc.buffers()));
        }
        out
    }
    fn buffers_mut(&mut self) -> NamedMut<'_, Buffer<T>> {
        let mut out = prefixed("body", self.body.buffers_mut());
        if let Some(sc) = &mut self.shortcut {
            out.extend(prefixed("shortcut", sc.buffers_mut()));
        }
        out
    }
    fn exchanges(&self) -> usize {
        self.body.exchanges() + self.shortcut.as_ref().map_or(0, |s| s.exchanges())
    }
    fn children_mut(&mut self) -> Vec<&mut Seq<T>> {
        std::iter::once(&mut self.body)
            .chain(self.shortcut.as_mut())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, layer, spec};
    use super::*;

    const PROJECTION: &str = "{ type = \"residual\", layers = [{ type = \"conv2d\", out_channels = 4, kernel = 3, stride = 2, padding = 1 }, { type = \"tanh\" }], shortcut = [{ type = \"conv2d\", out_channels = 4, kernel = 1, stride = 2, bias = false }] }";

    #[test]
    fn shapes_names_and_errors() {
        let s = spec(PROJECTION).unwrap();
        assert_eq!(s.output_shape(&[2, 6, 6]).unwrap(), vec![4, 3, 3]);
        let names: Vec<String> = s.tensors(&[2, 6, 6]).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["body.0.weight", "body.0.bias", "shortcut.0.weight"]);
        assert_eq!(s.param_count(&[2, 6, 6]), 4 * 2 * 9 + 4 + 4 * 2);
        // Without the shortcut the body must keep the shape.
        let e = spec("{ type = \"residual\", layers = [{ type = \"conv2d\", out_channels = 4, kernel = 1 }] }")
            .unwrap()
            .output_shape(&[2, 6, 6])
            .unwrap_err();
        assert!(e.contains("must keep the shape"), "{e}");
        let e = spec("{ type = \"residual\", layers = [{ type = \"identity\" }], shortcut = [{ type = \"maxpool2d\", kernel = 2 }] }")
            .unwrap()
            .output_shape(&[2, 6, 6])
            .unwrap_err();
        assert!(e.contains("must agree"), "{e}");
        let e = spec("{ type = \"residual\", layers = [] }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-empty"), "{e}");
    }

    #[test]
    fn output_is_body_plus_shortcut() {
        let (_, mut l) = layer(
            "{ type = \"residual\", layers = [{ type = \"relu\" }], shortcut = [{ type = \"identity\" }] }",
            &[1, 1, 3],
        );
        let x = Tensor::from_vec(&[1, 1, 1, 3], vec![-1.0, 0.5, 2.0]).unwrap();
        assert_eq!(l.forward(x, &Pass::INFER).data(), [-1.0, 1.0, 4.0]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        gradcheck(PROJECTION, &[2, 2, 6, 6], Pass::train(0));
        gradcheck(
            "{ type = \"residual\", layers = [{ type = \"conv2d\", out_channels = 2, kernel = 3, padding = \"same\" }, { type = \"sigmoid\" }] }",
            &[2, 2, 4, 4],
            Pass::train(0),
        );
    }
}

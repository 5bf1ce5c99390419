//! `conv2d`: PyTorch's Conv2d (cross-correlation), with stride, padding ("same" and
//! "valid" too), dilation, groups and an optional bias.
use super::{chw, weight_bias, weight_bias_mut, BuildCx, Layer, LayerDef, Named, NamedMut};
use super::batchnorm::BatchNorm;
use super::{Param, Pass, Recycled, Shared, TensorInfo, NO_CACHE};
use crate::error::Result;
use crate::nn::keys::{pair_text, Fields};
use crate::ops::conv::ConvScratch;
use crate::ops::conv::{conv2d_backward_with, conv2d_forward_prepared, conv2d_forward_with};
use crate::ops::conv::{Conv2dConfig, Conv2dGeometry, Epilogue, PreparedWeights};
use crate::ops::shape::same_padding;
use crate::tensor::{Float, Tensor};
use crate::onnx::graph::{Attr, Scope};
use toml::Value;

/// Convolution padding as written in a model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Rows, columns of zeros on each side.
    Explicit(usize, usize),
    /// PyTorch's "same": output size = input size (stride 1 only), extra padding at the end.
    Same,
    /// No padding.
    Valid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: Padding,
    pub dilation: (usize, usize),
    pub groups: usize,
    pub bias: bool,
}

impl Conv2dSpec {
    /// The kernel-level configuration (padding resolved to begin/end amounts).
    pub fn config(&self) -> Conv2dConfig {
        let (pad_begin, pad_end) = match self.padding {
            Padding::Explicit(h, w) => ((h, w), (h, w)),
            Padding::Valid => ((0, 0), (0, 0)),
            Padding::Same => {
                let (t, b) = same_padding(self.kernel.0, self.dilation.0);
                let (l, r) = same_padding(self.kernel.1, self.dilation.1);
                ((t, l), (b, r))
            }
        };
        Conv2dConfig {
            kernel: self.kernel,
            stride: self.stride,
            dilation: self.dilation,
            pad_begin,
            pad_end,
            groups: self.groups,
        }
    }

    /// The built layer, typed (the fusion pass takes its parts).
    pub fn build_conv<T: Float>(&self, input: &[usize], cx: &mut BuildCx) -> Conv2d<T> {
        let chw = [input[0], input[1], input[2]];
        let geom =
            Conv2dGeometry::new(chw, self.out_channels, self.config()).expect("shape-checked spec");
        let fan_in = geom.k_per_group();
        let fan_out = self.out_channels * self.kernel.0 * self.kernel.1;
        let (wb, bb) = cx.init.bounds(fan_in, fan_out);
        let weight = Param::uniform(
            &[
                self.out_channels,
                input[0] / self.groups,
                self.kernel.0,
                self.kernel.1,
            ],
            wb,
            cx.rng,
        );
        let bias = self
            .bias
            .then(|| Param::uniform(&[self.out_channels], bb, cx.rng));
        Conv2d {
            geom,
            weight,
            bias,
            input: None,
            scratch: cx.shared(),
            spare: None,
            recycled: cx.shared(),
            folded: None,
        }
    }
}

impl LayerDef for Conv2dSpec {
    const TYPES: &'static [&'static str] = &["conv2d"];

    fn parse(_name: &str, f: &mut Fields) -> Result<Self> {
        let out_channels = f.required_usize("out_channels")?;
        let kernel = f.pair("kernel", None)?;
        let stride = f.pair("stride", Some((1, 1)))?;
        let padding = match f.get("padding") {
            Some(Value::String(s)) if s == "same" => Padding::Same,
            Some(Value::String(s)) if s == "valid" => Padding::Valid,
            Some(Value::String(s)) => {
                return Err(f.err(format!(
                    "key `padding` must be an integer, [h, w], \"same\" or \"valid\", got \"{s}\""
                )))
            }
            Some(_) => {
                f.unread("padding");
                let (h, w) = f.pair0("padding")?;
                Padding::Explicit(h, w)
            }
            None => Padding::Explicit(0, 0),
        };
        let dilation = f.pair("dilation", Some((1, 1)))?;
        let groups = f.usize_or("groups", 1)?;
        let bias = f.bool("bias", true)?;
        if padding == Padding::Same && stride != (1, 1) {
            return Err(f.err("padding = \"same\" needs stride 1 (as in PyTorch)"));
        }
        Ok(Conv2dSpec {
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            bias,
        })
    }

    fn type_name(&self) -> &'static str {
        "conv2d"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let g = Conv2dGeometry::new(chw(input)?, self.out_channels, self.config())?;
        Ok(vec![g.out_channels, g.out_h, g.out_w])
    }

    fn tensors(&self, input: &[usize]) -> Vec<TensorInfo> {
        let mut t = vec![TensorInfo::param(
            "weight",
            &[
                self.out_channels,
                input[0] / self.groups,
                self.kernel.0,
                self.kernel.1,
            ],
        )];
        if self.bias {
            t.push(TensorInfo::param("bias", &[self.out_channels]));
        }
        t
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        vec![
            ("out_channels", self.out_channels.to_string()),
            ("kernel", pair_text(self.kernel)),
            ("stride", pair_text(self.stride)),
            (
                "padding",
                match self.padding {
                    Padding::Explicit(h, w) => pair_text((h, w)),
                    Padding::Same => "\"same\"".into(),
                    Padding::Valid => "\"valid\"".into(),
                },
            ),
            ("dilation", pair_text(self.dilation)),
            ("groups", self.groups.to_string()),
            ("bias", self.bias.to_string()),
        ]
    }

    fn build<T: Float>(&self, input: &[usize], cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        Box::new(self.build_conv::<T>(input, cx))
    }

    fn onnx(&self, _input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let c = self.config();
        let pair = |p: (usize, usize)| [p.0 as i64, p.1 as i64];
        let pads = [pair(c.pad_begin), pair(c.pad_end)].concat();
        let w = cx.weight("weight")?;
        let mut inputs = vec![x.to_string(), w];
        if self.bias {
            inputs.push(cx.weight("bias")?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let attrs = [
            ("kernel_shape", Attr::Ints(pair(c.kernel).to_vec())),
            ("strides", Attr::Ints(pair(c.stride).to_vec())),
            ("dilations", Attr::Ints(pair(c.dilation).to_vec())),
            ("pads", Attr::Ints(pads)),
            ("group", Attr::Int(c.groups as i64)),
        ];
        Ok(cx.node("Conv", &inputs, &attrs, "conv"))
    }
}

pub struct Conv2d<T> {
    pub(crate) geom: Conv2dGeometry,
    pub(crate) weight: Param<T>,         // (C_out, C_in/groups, kh, kw)
    pub(crate) bias: Option<Param<T>>,   // (C_out)
    pub(crate) input: Option<Tensor<T>>, // (N, C_in, H, W), cached for dW
    pub(crate) scratch: Shared<ConvScratch<T>>, // the kernels' buffers, shared by the network
    /// (N, C_out, H_out, W_out): the last backward's dY, the next forward's output buffer
    /// (filling a fresh one with zeros first took 2 % of a ResNet-20 step).
    spare: Option<Tensor<T>>,
    /// The network's spent inference outputs, where inference takes its output buffers.
    recycled: Shared<Recycled<T>>,
    /// Inference's folded weights; dropped by training, which changes them.
    folded: Option<Folded<T>>,
}

impl<T: Float> Conv2d<T> {
    /// y (N, C_out, H_out, W_out) of n samples x (N, C_in, H, W).
    fn run(&mut self, x: &[T], n: usize) -> Tensor<T> {
        let mut y = self.output(n);
        let bias = self.bias.as_ref().map(|b| b.value.data());
        let w = self.weight.value.data();
        conv2d_forward_with(&self.geom, n, x, w, bias, y.data_mut(), &mut self.scratch.lock());
        y
    }

    /// The output buffer of n samples, (N, C_out, H_out, W_out), whose values the kernels all
    /// overwrite: the spare when it has the shape, else a recycled one.
    fn output(&mut self, n: usize) -> Tensor<T> {
        let g = &self.geom;
        let shape = [n, g.out_channels, g.out_h, g.out_w];
        match self.spare.take() {
            Some(t) if t.shape() == shape => t,
            _ => self.recycled.lock().take(&shape),
        }
    }

    /// Inference of this convolution followed by a map per output channel, y·scale + shift
    /// (a BatchNorm in inference mode), and a ReLU if `relu`, then `tail`: one convolution,
    /// the map folded into its weights and bias, so that the normalisation's pass over y goes
    /// away. Needs no `tail.add` with `relu` (the ReLU would come before the sum).
    pub(crate) fn infer_folded(
        &mut self,
        x: &[T],
        n: usize,
        map: &(Vec<f64>, Vec<f64>, bool),
        tail: Epilogue<'_, T>,
    ) -> Tensor<T> {
        let (scale, shift, relu) = map;
        let weight = self.weight.value.data();
        let bias = self.bias.as_ref().map(|b| b.value.data());
        let fresh = self.folded.as_ref().is_some_and(|f| {
            f.weight == weight && f.bias.as_deref() == bias && f.scale == *scale && f.shift == *shift
        });
        if !fresh {
            let per = weight.len() / scale.len().max(1);
            let mut w = weight.to_vec();
            for (row, &s) in w.chunks_exact_mut(per).zip(scale) {
                let s = T::of(s);
                row.iter_mut().for_each(|v| *v *= s);
            }
            let folded_bias = (0..scale.len())
                .map(|o| T::of(bias.map_or(0.0, |b| b[o].f64()) * scale[o] + shift[o]))
                .collect();
            self.folded = Some(Folded {
                weight: weight.to_vec(),
                bias: bias.map(<[T]>::to_vec),
                scale: scale.clone(),
                shift: shift.clone(),
                w: PreparedWeights::new(w),
                b: folded_bias,
            });
        }
        self.input = None;
        let epi = Epilogue {
            relu: *relu || tail.relu,
            ..tail
        };
        let mut y = self.output(n);
        let f = self.folded.as_mut().expect("folded above");
        let mut scratch = self.scratch.lock();
        conv2d_forward_prepared(&self.geom, n, x, &mut f.w, Some(&f.b), epi, y.data_mut(), &mut scratch);
        y
    }
}

/// Inference's weights and bias with the BatchNorm after the convolution folded in, and what
/// they were folded from: reused while those are unchanged (folded per call, with Winograd's
/// kernel transform, they were 5-6 % of ResNet-20's inference).
struct Folded<T> {
    weight: Vec<T>,       // (C_out, C_in/groups, kh, kw): the convolution's own
    bias: Option<Vec<T>>, // (C_out)
    scale: Vec<f64>,      // (C_out): the BatchNorm's map
    shift: Vec<f64>,      // (C_out)
    w: PreparedWeights<T>,
    b: Vec<T>, // (C_out)
}

impl<T: Float> Layer<T> for Conv2d<T> {
    fn forward(&mut self, x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        let y = self.run(x.data(), x.shape()[0]);
        if pass.grad {
            self.input = Some(x);
            self.folded = None;
        } else {
            self.recycled.lock().put(x);
        }
        y
    }
    fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        self.input = None;
        self.run(x, shape[0])
    }
    /// A BatchNorm after the convolution folds into its weights and bias; its ReLU and the
    /// tail go into the kernel's epilogue (not a tail that adds after the ReLU).
    fn infer_with_next(
        &mut self,
        next: &dyn Layer<T>,
        x: &[T],
        shape: &[usize],
        tail: Epilogue<'_, T>,
    ) -> Option<Tensor<T>> {
        let map = next.as_any().downcast_ref::<BatchNorm<T>>()?.inference_map();
        if map.0.len() != self.geom.out_channels || (map.2 && tail.add.is_some()) {
            return None;
        }
        Some(self.infer_folded(x, shape[0], &map, tail))
    }
    fn keeps_input(&self) -> bool {
        true
    }
    fn kept_input(&self) -> Option<&Tensor<T>> {
        self.input.as_ref()
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        let x = self.input.take().expect(NO_CACHE);
        let n = x.shape()[0];
        // Every backward kernel overwrites dx: a spent buffer of its size serves (filling a
        // fresh one with zeros first was a memset of every input gradient of the step).
        let mut dx = need_dx.then(|| self.recycled.lock().take(x.shape()));
        conv2d_backward_with(
            &self.geom,
            n,
            x.data(),
            self.weight.value.data(),
            dy.data(),
            dx.as_mut().map(|d| d.data_mut()),
            self.weight.grad.data_mut(),
            self.bias.as_mut().map(|b| b.grad.data_mut()),
            &mut self.scratch.lock(),
        );
        self.spare = Some(dy);
        // x is spent: the next layer down takes its buffer for its own dx.
        self.recycled.lock().put(x);
        dx
    }
    fn release(&mut self) {
        self.spare = None;
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
    use super::super::testing::{gradcheck, spec};
    use super::*;

    #[test]
    fn keys_defaults_and_errors() {
        let LayerSpec::Conv2d(c) =
            spec("{ type = \"conv2d\", out_channels = 4, kernel = 3 }").unwrap()
        else {
            panic!("not a conv2d spec")
        };
        assert_eq!(c.stride, (1, 1));
        assert_eq!(c.padding, Padding::Explicit(0, 0));
        assert_eq!((c.dilation, c.groups, c.bias), ((1, 1), 1, true));
        let e = spec(
            "{ type = \"conv2d\", out_channels = 4, kernel = 3, stride = 2, padding = \"same\" }",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs stride 1"), "{e}");
        let e = spec("{ type = \"conv2d\", kernel = 3 }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("out_channels"), "{e}");
    }

    #[test]
    fn output_shape_follows_pytorch() {
        // ⌊(13 + 2 − 1·(3−1) − 1)/2⌋ + 1 = 7 rows; ⌊(11 + 0 − 2·(2−1) − 1)/1⌋ + 1 = 9 columns.
        let s = spec("{ type = \"conv2d\", out_channels = 4, kernel = [3, 2], stride = [2, 1], padding = [1, 0], dilation = [1, 2] }")
            .unwrap();
        assert_eq!(s.output_shape(&[3, 13, 11]).unwrap(), vec![4, 7, 9]);
        assert_eq!(s.param_count(&[3, 13, 11]), 4 * 3 * 3 * 2 + 4);
        assert!(s.output_shape(&[3, 13, 2]).is_err());
    }

    #[test]
    fn gradients_match_finite_differences() {
        gradcheck(
            "{ type = \"conv2d\", out_channels = 4, kernel = 3, stride = 2, padding = 1, groups = 2 }",
            &[2, 2, 6, 5],
            Pass::train(0),
        );
    }

    /// In inference a BatchNorm after the convolution folds into its weights and bias: the
    /// same values as the two layers apart in inference mode (the pass that caches for
    /// backward runs them apart), with and without the convolution's bias and the fused ReLU,
    /// also after the weights and statistics changed under a kept fold.
    #[test]
    fn batchnorm_folds_into_inference() {
        use super::super::testing::{layer, random};
        use super::super::{Buffer, Seq};
        for (bias, relu) in [(true, false), (false, true)] {
            let conv = layer(
                &format!("{{ type = \"conv2d\", out_channels = 3, kernel = 3, padding = 1, bias = {bias} }}"),
                &[2, 5, 5],
            )
            .1;
            let bn = layer("{ type = \"batchnorm2d\" }", &[3, 5, 5]).1;
            let mut bn = *bn.into_any().downcast::<BatchNorm<f64>>().unwrap();
            let stats = [[0.3, -0.2, 0.5], [0.5, 2.0, 1.3]];
            for ((_, b), v) in bn.buffers_mut().into_iter().zip(stats) {
                if let Buffer::Float(t) = b {
                    t.data_mut().copy_from_slice(&v);
                }
            }
            for ((_, p), v) in bn.params_mut().into_iter().zip([[1.5, -0.7, 0.2], [0.1, 0.4, -0.3]]) {
                p.value.data_mut().copy_from_slice(&v);
            }
            bn.relu = relu;
            let mut seq = Seq {
                layers: vec![conv, Box::new(bn)],
                paths: vec!["0".into(), "1".into()],
                recycled: Default::default(),
            };
            let x = Tensor::from_vec(&[4, 2, 5, 5], random(200, 3)).unwrap();
            let first = seq.infer(x.data(), x.shape());
            assert_eq!(seq.infer(x.data(), x.shape()), first, "the kept fold");
            // New weights and statistics, set as loading weights sets them: the fold kept
            // from the old ones must not be used.
            for (_, p) in seq.layers[0].params_mut() {
                p.value.data_mut().iter_mut().for_each(|v| *v *= 1.5);
            }
            if let Buffer::Float(t) = seq.layers[1].buffers_mut().swap_remove(0).1 {
                t.data_mut()[1] += 0.25;
            }
            let folded = seq.infer(x.data(), x.shape());
            assert_ne!(folded, first);
            let apart = seq
                .layers
                .iter_mut()
                .fold(x, |h, l| l.forward(h, &Pass::FROZEN));
            assert_eq!(folded.shape(), apart.shape());
            let worst = folded
                .data()
                .iter()
                .zip(apart.data())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-12, "bias {bias} relu {relu}: {worst}");
            if relu {
                assert!(folded.data().iter().all(|&v| v >= 0.0));
                assert!(folded.data().contains(&0.0));
            }
        }
    }

    use super::super::LayerSpec;
}

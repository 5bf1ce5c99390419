//! `maxpool2d`, `avgpool2d` and `subsample`: PyTorch's MaxPool2d and AvgPool2d
//! (`count_include_pad`, `ceil_mode`), and the lecture's subsampling h[i,j] = x[i·s, j·s].
use super::{chw, BuildCx, Layer, LayerDef, Pass, NO_CACHE};
use crate::error::Result;
use crate::nn::keys::{pair_text, Fields};
use crate::ops::pool::{self, Pool2dConfig, Pool2dGeometry};
use crate::tensor::{Float, Tensor};
use crate::onnx::graph::{Attr, Scope};

/// Which of the three pooling kernels a layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
    Subsample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub kind: PoolKind,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub ceil_mode: bool,
}

impl PoolSpec {
    pub fn config(&self) -> Pool2dConfig {
        Pool2dConfig {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            ceil_mode: self.ceil_mode,
        }
    }

    /// The built layer, typed (the fusion pass takes its parts).
    pub fn build_pool<T: Float>(&self, input: &[usize]) -> Pool<T> {
        let chw = [input[0], input[1], input[2]];
        Pool {
            kind: self.kind,
            geom: Pool2dGeometry::new(chw, self.config()).expect("shape-checked spec"),
            argmax: Vec::new(),
            batch: 0,
            _t: std::marker::PhantomData,
        }
    }
}

impl LayerDef for PoolSpec {
    const TYPES: &'static [&'static str] = &["maxpool2d", "avgpool2d", "subsample"];

    fn parse(name: &str, f: &mut Fields) -> Result<Self> {
        let kind = match name {
            "maxpool2d" => PoolKind::Max,
            "avgpool2d" => PoolKind::Avg,
            _ => PoolKind::Subsample,
        };
        let kernel = f.pair("kernel", None)?;
        let stride = f.pair("stride", Some(kernel))?;
        let (padding, ceil_mode) = if kind == PoolKind::Subsample {
            ((0, 0), false)
        } else {
            (f.pair0("padding")?, f.bool("ceil_mode", false)?)
        };
        Ok(PoolSpec {
            kind,
            kernel,
            stride,
            padding,
            ceil_mode,
        })
    }

    fn type_name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "maxpool2d",
            PoolKind::Avg => "avgpool2d",
            PoolKind::Subsample => "subsample",
        }
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let g = Pool2dGeometry::new(chw(input)?, self.config())?;
        Ok(vec![g.channels, g.out_h, g.out_w])
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("kernel", pair_text(self.kernel)),
            ("stride", pair_text(self.stride)),
        ];
        if self.kind != PoolKind::Subsample {
            f.push(("padding", pair_text(self.padding)));
            f.push(("ceil_mode", self.ceil_mode.to_string()));
        }
        f
    }

    fn build<T: Float>(&self, input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        Box::new(self.build_pool::<T>(input))
    }

    /// MaxPool / AveragePool, and subsampling as a strided Slice. A ceil_mode overhang is
    /// written as end padding that no window counts (max pooling ignores its pads; average
    /// pooling pads its real zeros explicitly and leaves the overhang uncounted), so that
    /// every runtime gives PyTorch's windows and divisors without relying on its ceil rule.
    fn onnx(&self, input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let g = Pool2dGeometry::new(chw(input)?, self.config())?;
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        if self.kind == PoolKind::Subsample {
            let cuts = [
                (2, 0, (g.out_h - 1) * sh + 1, sh),
                (3, 0, (g.out_w - 1) * sw + 1, sw),
            ];
            return Ok(cx.slice(x, &cuts, "subsample"));
        }
        let (ph, pw) = self.padding;
        // Rows and columns the last window reaches past the padded input (ceil_mode).
        let over_h = ((g.out_h - 1) * sh + kh).saturating_sub(g.in_h + 2 * ph);
        let over_w = ((g.out_w - 1) * sw + kw).saturating_sub(g.in_w + 2 * pw);
        let window = [
            ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
            ("strides", Attr::Ints(vec![sh as i64, sw as i64])),
        ];
        let pads = |b: [usize; 2], e: [usize; 2]| {
            Attr::Ints([b, e].concat().iter().map(|&v| v as i64).collect())
        };
        if self.kind == PoolKind::Max {
            let attrs = [
                window[0].clone(),
                window[1].clone(),
                ("pads", pads([ph, pw], [ph + over_h, pw + over_w])),
            ];
            return Ok(cx.node("MaxPool", &[x], &attrs, "maxpool"));
        }
        let mut v = x.to_string();
        if over_h + over_w > 0 && ph + pw > 0 {
            let p = [0, 0, ph, pw, 0, 0, ph, pw].map(|v| v as i64);
            let p = cx.ints("pads", &p);
            v = cx.node("Pad", &[&v, &p], &[], "padded");
        }
        let attrs = if over_h + over_w > 0 {
            [
                ("pads", pads([0, 0], [over_h, over_w])),
                ("count_include_pad", Attr::Int(0)),
            ]
        } else {
            [
                ("pads", pads([ph, pw], [ph, pw])),
                ("count_include_pad", Attr::Int(1)),
            ]
        };
        let attrs: Vec<(&str, Attr)> = window.into_iter().chain(attrs).collect();
        Ok(cx.node("AveragePool", &[&v], &attrs, "avgpool"))
    }
}

pub struct Pool<T> {
    pub(crate) kind: PoolKind,
    pub(crate) geom: Pool2dGeometry,
    argmax: Vec<u32>, // (N, C, H_out, W_out), max pooling only
    batch: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Layer<T> for Pool<T> {
    fn forward(&mut self, x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        let g = &self.geom;
        let n = x.shape()[0];
        let mut y = Tensor::zeros(&[n, g.channels, g.out_h, g.out_w]);
        match self.kind {
            PoolKind::Max if pass.grad => {
                self.argmax.resize(y.len(), 0);
                pool::maxpool2d_forward(g, x.data(), y.data_mut(), &mut self.argmax);
            }
            PoolKind::Max => {
                // Inference records no winners: a later backward must not use stale ones.
                self.argmax.clear();
                pool::maxpool2d_forward_values(g, x.data(), y.data_mut());
            }
            PoolKind::Avg => pool::avgpool2d_forward(g, x.data(), y.data_mut()),
            PoolKind::Subsample => pool::subsample_forward(g, x.data(), y.data_mut()),
        }
        self.batch = n;
        y
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        if !need_dx {
            return None;
        }
        let g = &self.geom;
        let mut dx = Tensor::zeros(&[self.batch, g.channels, g.in_h, g.in_w]);
        match self.kind {
            PoolKind::Max => {
                assert_eq!(self.argmax.len(), dy.len(), "{NO_CACHE}");
                pool::maxpool2d_backward(g, dy.data(), &self.argmax, dx.data_mut())
            }
            PoolKind::Avg => pool::avgpool2d_backward(g, dy.data(), dx.data_mut()),
            PoolKind::Subsample => pool::subsample_backward(g, dy.data(), dx.data_mut()),
        }
        Some(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, layer, spec};
    use super::*;

    /// The lecture's matrix and its 2×2 max, average and subsampled maps.
    #[test]
    fn lecture_example() {
        let x = [
            21., 8., 8., 12., 12., 19., 9., 7., 8., 10., 4., 3., 18., 12., 9., 10.,
        ];
        let x = Tensor::from_vec(&[1, 1, 4, 4], x.to_vec()).unwrap();
        for (t, want) in [
            ("maxpool2d", [21., 12., 18., 10.]),
            ("avgpool2d", [15., 9., 12., 6.5]),
            ("subsample", [21., 8., 8., 4.]),
        ] {
            let (_, mut l) = layer(&format!("{{ type = \"{t}\", kernel = 2 }}"), &[1, 4, 4]);
            assert_eq!(l.forward(x.clone(), &Pass::INFER).data(), want, "{t}");
        }
    }

    #[test]
    fn keys_and_gradients() {
        assert!(spec("{ type = \"subsample\", kernel = 2, padding = 1 }").is_err());
        let s =
            spec("{ type = \"maxpool2d\", kernel = 3, stride = 2, padding = 1, ceil_mode = true }")
                .unwrap();
        assert_eq!(s.output_shape(&[1, 9, 9]).unwrap(), vec![1, 5, 5]);
        for t in [
            "{ type = \"maxpool2d\", kernel = [3, 2], stride = [2, 3], padding = 1, ceil_mode = true }",
            "{ type = \"avgpool2d\", kernel = 2, stride = 2, padding = 1, ceil_mode = true }",
            "{ type = \"subsample\", kernel = [2, 1], stride = [1, 2] }",
        ] {
            gradcheck(t, &[2, 2, 7, 7], Pass::train(0));
        }
    }
}

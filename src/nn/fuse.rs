//! The fusion pass: rewrites a built network's layer sequence into fewer, faster layers that
//! compute the same function, so that layer building stays one object per spec.
//! - a ReLU followed by max pooling runs as max pooling followed by the ReLU: max commutes
//!   with the ReLU, so values (up to the sign of a zero) and gradients are the same, ties
//!   included (a window whose maximum is ≤ 0 passes no gradient either way), and the ReLU and
//!   its cached output shrink to a quarter;
//! - a convolution followed by 2×2 max pooling, with or without a ReLU between, becomes one
//!   [`ConvPool`] layer: one pass of the batch-lanes kernels where they take the batch;
//! - a ReLU after batch normalisation runs inside it: the normalisation's pass applies it, and
//!   backward recomputes its derivative from the cached x̂, so the ReLU neither reads nor
//!   writes the tensor again nor caches a copy of it;
//! - a ReLU after a residual block runs in the block's sum, which keeps where the sum was
//!   positive (a byte a value) instead of a copy of the output.
//!
//! None of the merged or moved layers has parameters of its own besides the convolution's,
//! and every layer keeps its spec path, so tensor names are those of the unfused network.
use super::layers::activation::Act;
use super::layers::batchnorm::BatchNorm;
use super::layers::conv2d::Conv2d;
use super::layers::pool2d::{Pool, PoolKind};
use super::layers::residual::Residual;
use super::layers::{Layer, Named, NamedMut, Param, Pass, Seq, NO_CACHE};
use crate::ops::activation::Activation;
use crate::ops::conv::{
    conv2d_pool_applies, conv2d_pool_backward, conv2d_pool_fits, conv2d_pool_forward,
    conv2d_pool_winners_len,
};
use crate::tensor::{Float, Tensor};

/// What the pass needs to know of a layer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Conv,
    Relu,
    MaxPool,
    BatchNorm,
    Residual,
    Other,
}

fn kind<T: Float>(l: &dyn Layer<T>) -> Kind {
    let any = l.as_any();
    if any.is::<Conv2d<T>>() {
        Kind::Conv
    } else if any
        .downcast_ref::<Act<T>>()
        .is_some_and(|a| a.act == Activation::Relu)
    {
        Kind::Relu
    } else if any
        .downcast_ref::<Pool<T>>()
        .is_some_and(|p| p.kind == PoolKind::Max)
    {
        Kind::MaxPool
    } else if any.is::<BatchNorm<T>>() {
        Kind::BatchNorm
    } else if any.is::<Residual<T>>() {
        Kind::Residual
    } else {
        Kind::Other
    }
}

/// Takes the layer out of its slot as its concrete type.
fn take<X: 'static, T: Float>(slot: &mut Option<Box<dyn Layer<T>>>) -> X {
    let l = slot.take().expect("each layer is taken once");
    *l.into_any().downcast::<X>().expect("checked type")
}

fn peek<X: 'static, T: Float>(slot: &Option<Box<dyn Layer<T>>>) -> &X {
    let l = slot.as_ref().expect("not taken yet");
    l.as_any().downcast_ref::<X>().expect("checked type")
}

/// Fuses `seq` and every sequence nested in its layers.
pub fn fuse<T: Float>(seq: &mut Seq<T>) {
    for l in &mut seq.layers {
        for child in l.children_mut() {
            fuse(child);
        }
    }
    let mut paths: Vec<Option<String>> = std::mem::take(&mut seq.paths)
        .into_iter()
        .map(Some)
        .collect();
    let mut path = |k: usize| paths[k].take().expect("each path is taken once");
    let mut slots: Vec<Option<Box<dyn Layer<T>>>> = std::mem::take(&mut seq.layers)
        .into_iter()
        .map(Some)
        .collect();
    let kinds: Vec<Kind> = slots
        .iter()
        .map(|l| kind(l.as_deref().expect("not taken yet")))
        .collect();
    let n = slots.len();
    let mut i = 0;
    while i < n {
        if kinds[i] == Kind::Conv {
            let with_relu = kinds.get(i + 1) == Some(&Kind::Relu);
            let at = i + 1 + usize::from(with_relu);
            if kinds.get(at) == Some(&Kind::MaxPool)
                && conv2d_pool_fits(
                    &peek::<Conv2d<T>, T>(&slots[i]).geom,
                    &peek::<Pool<T>, T>(&slots[at]).geom,
                )
            {
                let conv = take::<Conv2d<T>, T>(&mut slots[i]);
                let relu = with_relu.then(|| take::<Act<T>, T>(&mut slots[i + 1]));
                let pool = take::<Pool<T>, T>(&mut slots[at]);
                seq.layers.push(Box::new(ConvPool {
                    conv,
                    pool,
                    relu,
                    winners: Vec::new(),
                    fused: false,
                }));
                seq.paths.push(path(i));
                i = at + 1;
                continue;
            }
        }
        if kinds.get(i + 1) == Some(&Kind::Relu) {
            let fused: Option<Box<dyn Layer<T>>> = match kinds[i] {
                Kind::BatchNorm => {
                    let mut bn = take::<BatchNorm<T>, T>(&mut slots[i]);
                    bn.relu = true;
                    Some(Box::new(bn))
                }
                Kind::Residual => {
                    let mut res = take::<Residual<T>, T>(&mut slots[i]);
                    res.relu = true;
                    Some(Box::new(res))
                }
                _ => None,
            };
            if let Some(layer) = fused {
                seq.layers.push(layer);
                seq.paths.push(path(i));
                i += 2;
                continue;
            }
        }
        if kinds[i] == Kind::Relu && kinds.get(i + 1) == Some(&Kind::MaxPool) {
            for k in [i + 1, i] {
                seq.layers.push(slots[k].take().expect("not taken yet"));
                seq.paths.push(path(k));
            }
            i += 2;
            continue;
        }
        seq.layers.push(slots[i].take().expect("not taken yet"));
        seq.paths.push(path(i));
        i += 1;
    }
}

/// Conv2d → [ReLU] → MaxPool2d 2×2 as one layer: one pass of the batch-lanes kernels where
/// they take the batch ([`conv2d_pool_forward`]), else the layers in turn, the ReLU after
/// the pooling.
pub struct ConvPool<T> {
    conv: Conv2d<T>,
    pool: Pool<T>,
    relu: Option<Act<T>>,
    winners: Vec<u8>, // the one pass's record of each window's winner, for backward
    fused: bool,      // whether the last forward took the one pass
}

impl<T: Float> ConvPool<T> {
    /// The one pass of n samples x (N, C_in, H, W): pooled y (N, C_out, H_q, W_q).
    fn run_fused(&mut self, x: &[T], n: usize) -> Tensor<T> {
        let (g, pg) = (&self.conv.geom, &self.pool.geom);
        let mut y = Tensor::zeros(&[n, pg.channels, pg.out_h, pg.out_w]);
        self.winners.resize(conv2d_pool_winners_len(g, n), 0);
        conv2d_pool_forward(
            g,
            self.relu.is_some(),
            n,
            x,
            self.conv.weight.value.data(),
            self.conv.bias.as_ref().map(|b| b.value.data()),
            y.data_mut(),
            &mut self.winners,
            &mut self.conv.scratch.lock(),
        );
        y
    }

    /// The pooling and ReLU after a convolution's output h, as separate layers.
    fn pool_after(&mut self, h: Tensor<T>, pass: &Pass) -> Tensor<T> {
        let h = self.pool.forward(h, pass);
        match &mut self.relu {
            Some(r) => r.forward(h, pass),
            None => h,
        }
    }
}

impl<T: Float> Layer<T> for ConvPool<T> {
    fn forward(&mut self, x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        let n = x.shape()[0];
        self.fused = conv2d_pool_applies(&self.conv.geom, &self.pool.geom, n);
        if !self.fused {
            let h = self.conv.forward(x, pass);
            return self.pool_after(h, pass);
        }
        let y = self.run_fused(x.data(), n);
        self.conv.input = pass.grad.then_some(x);
        y
    }
    fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        let n = shape[0];
        self.fused = conv2d_pool_applies(&self.conv.geom, &self.pool.geom, n);
        self.conv.input = None;
        if !self.fused {
            let h = self.conv.infer(x, shape);
            return self.pool_after(h, &Pass::INFER);
        }
        self.run_fused(x, n)
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        if !self.fused {
            let d = match &mut self.relu {
                Some(r) => r.backward(dy, true).expect("need_dx was true"),
                None => dy,
            };
            let d = self.pool.backward(d, true).expect("need_dx was true");
            return self.conv.backward(d, need_dx);
        }
        let c = &mut self.conv;
        let x = c.input.take().expect(NO_CACHE);
        let n = x.shape()[0];
        let mut dx = need_dx.then(|| Tensor::zeros(x.shape()));
        conv2d_pool_backward(
            &c.geom,
            n,
            x.data(),
            c.weight.value.data(),
            dy.data(),
            &self.winners,
            dx.as_mut().map(|d| d.data_mut()),
            c.weight.grad.data_mut(),
            c.bias.as_mut().map(|b| b.grad.data_mut()),
            &mut c.scratch.lock(),
        );
        dx
    }
    fn params(&self) -> Named<'_, Param<T>> {
        self.conv.params()
    }
    fn params_mut(&mut self) -> NamedMut<'_, Param<T>> {
        self.conv.params_mut()
    }
}

#[cfg(test)]
mod tests {
    use crate::nn::layers::Pass;
    use crate::nn::{presets, BuildOptions, ModelSpec, Network};
    use crate::tensor::Tensor;

    fn rel(a: &[f32], b: &[f32]) -> f64 {
        let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs() as f64));
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
            / scale
    }

    /// The fused network computes what the plain one does: outputs in both modes, and
    /// every parameter's gradient under the same names; and it has fewer layers.
    #[test]
    fn fused_network_equals_the_plain_one() {
        let residual_pool = r#"input = [2, 12, 12]
[[layers]]
type = "residual"
layers = [{ type = "conv2d", out_channels = 2, kernel = 3, padding = 1 }, { type = "relu" }, { type = "maxpool2d", kernel = 1 }]
[[layers]]
type = "conv2d"
out_channels = 4
kernel = 3
padding = 1
[[layers]]
type = "maxpool2d"
kernel = 2
[[layers]]
type = "relu"
[[layers]]
type = "maxpool2d"
kernel = 3
[[layers]]
type = "flatten"
[[layers]]
type = "linear"
out_features = 3
"#;
        // BatchNorm + ReLU, in a residual body too (ResNet's blocks).
        let norm_relu = r#"input = [3, 8, 8]
[[layers]]
type = "conv2d"
out_channels = 4
kernel = 3
padding = 1
bias = false
[[layers]]
type = "batchnorm2d"
[[layers]]
type = "relu"
[[layers]]
type = "residual"
layers = [{ type = "conv2d", out_channels = 4, kernel = 3, padding = 1 }, { type = "batchnorm2d" }, { type = "relu" }, { type = "conv2d", out_channels = 4, kernel = 3, padding = 1 }, { type = "batchnorm2d" }]
[[layers]]
type = "relu"
[[layers]]
type = "residual"
layers = [{ type = "conv2d", out_channels = 6, kernel = 3, stride = 2, padding = 1, bias = false }, { type = "batchnorm2d" }, { type = "relu" }, { type = "conv2d", out_channels = 6, kernel = 3, padding = 1, bias = false }, { type = "batchnorm2d" }]
shortcut = [{ type = "conv2d", out_channels = 6, kernel = 1, stride = 2, bias = false }, { type = "batchnorm2d" }]
[[layers]]
type = "relu"
[[layers]]
type = "flatten"
[[layers]]
type = "linear"
out_features = 3
"#;
        for (text, n) in [(presets::LENET5, 64), (residual_pool, 40), (norm_relu, 9)] {
            let spec = ModelSpec::parse(text, "t").unwrap();
            let [c, h, w] = spec.input;
            let build = |fuse| {
                Network::<f32>::with_options(
                    spec.clone(),
                    BuildOptions {
                        seed: 3,
                        fuse,
                        ..Default::default()
                    },
                )
            };
            let (mut fused, mut plain) = (build(true), build(false));
            assert!(fused.layers.layer_count() < plain.layers.layer_count());
            let x = Tensor::from_vec(
                &[n, c, h, w],
                (0..n * c * h * w)
                    .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                    .collect(),
            )
            .unwrap();
            let (a, b) = (
                fused.forward(x.clone(), false).unwrap(),
                plain.forward(x.clone(), false).unwrap(),
            );
            assert!(rel(a.data(), b.data()) < 1e-5);
            let (a, b) = (
                fused.forward(x.clone(), true).unwrap(),
                plain.forward(x.clone(), true).unwrap(),
            );
            assert!(rel(a.data(), b.data()) < 1e-5);
            let dy =
                Tensor::from_vec(a.shape(), a.data().iter().map(|v| v.sin()).collect()).unwrap();
            fused.zero_grad();
            plain.zero_grad();
            fused.backward(dy.clone());
            plain.backward(dy);
            let grads = |net: &Network<f32>| {
                let mut g = Vec::new();
                net.visit_params(&mut |name, p| g.push((name, p.grad.clone())));
                g
            };
            let (ga, gb) = (grads(&fused), grads(&plain));
            assert_eq!(ga.len(), gb.len());
            for ((na, a), (nb, b)) in ga.iter().zip(&gb) {
                assert_eq!(na, nb);
                assert!(
                    rel(a.data(), b.data()) < 1e-4,
                    "{na}: {}",
                    rel(a.data(), b.data())
                );
            }
            // The running statistics are the batch's now: inference (BatchNorm folded, the
            // ReLU and shortcut in the convolutions' epilogues) against the plain layers one
            // by one in inference mode (caching, so nothing folds).
            let (a, b) = (
                fused.forward(x.clone(), false).unwrap(),
                plain.forward_pass(x, Pass::FROZEN).unwrap(),
            );
            assert!(
                rel(a.data(), b.data()) < 1e-5,
                "{}",
                rel(a.data(), b.data())
            );
        }
    }
}

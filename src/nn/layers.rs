//! Layers with paired forward/backward: forward caches exactly what backward needs;
//! backward takes dOut, returns dIn and adds into the parameter gradients.
use super::init::Init;
use super::spec::LayerSpec;
use crate::ops::activation::{self, Activation};
use crate::ops::conv::{conv2d_backward_with, conv2d_forward, Conv2dGeometry, ConvScratch};
use crate::ops::gemm::{matmul, Par, Trans};
use crate::ops::pool::{self, Pool2dGeometry};
use crate::tensor::{Float, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A trainable tensor and its accumulated gradient (same shape).
#[derive(Clone, Debug)]
pub struct Param<T> {
    pub value: Tensor<T>,
    pub grad: Tensor<T>,
}

impl<T: Float> Param<T> {
    fn uniform(shape: &[usize], bound: f64, rng: &mut ChaCha8Rng) -> Self {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                if bound > 0.0 {
                    T::of(rng.gen_range(-bound..bound))
                } else {
                    T::zero()
                }
            })
            .collect();
        Param {
            value: Tensor::from_vec(shape, data).expect("length is the shape's product"),
            grad: Tensor::zeros(shape),
        }
    }
}

/// Calls `f(name, param)` for each parameter, names as PyTorch's state_dict gives them.
pub type ParamVisitor<'a, T> = &'a mut dyn FnMut(String, &Param<T>);
pub type ParamVisitorMut<'a, T> = &'a mut dyn FnMut(String, &mut Param<T>);

/// One layer of a network.
pub trait Layer<T: Float>: Send {
    /// y = layer(x) for a batch; with `train`, caches what backward needs.
    fn forward(&mut self, x: Tensor<T>, train: bool) -> Tensor<T>;
    /// Takes dL/dy, adds into the parameter gradients, returns dL/dx when `need_dx`.
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>>;
    fn visit_params(&self, _prefix: &str, _f: ParamVisitor<T>) {}
    fn visit_params_mut(&mut self, _prefix: &str, _f: ParamVisitorMut<T>) {}
}

/// Visits `{prefix}weight` and, if present, `{prefix}bias` (PyTorch's names).
fn visit_weight_bias<T: Float>(
    prefix: &str,
    w: &Param<T>,
    b: Option<&Param<T>>,
    f: ParamVisitor<T>,
) {
    f(format!("{prefix}weight"), w);
    if let Some(b) = b {
        f(format!("{prefix}bias"), b);
    }
}

fn visit_weight_bias_mut<T: Float>(
    prefix: &str,
    w: &mut Param<T>,
    b: Option<&mut Param<T>>,
    f: ParamVisitorMut<T>,
) {
    f(format!("{prefix}weight"), w);
    if let Some(b) = b {
        f(format!("{prefix}bias"), b);
    }
}

const NO_CACHE: &str = "backward called without a training forward pass";

/// Lets a GEMM use the thread pool only when it is big enough to pay for it.
fn par_for(m: usize, k: usize, n: usize) -> Par {
    if m * k * n >= 1 << 21 {
        Par::Rayon
    } else {
        Par::Seq
    }
}

pub struct Conv2d<T> {
    geom: Conv2dGeometry,
    weight: Param<T>,         // (C_out, C_in/groups, kh, kw)
    bias: Option<Param<T>>,   // (C_out)
    input: Option<Tensor<T>>, // (N, C_in, H, W), cached for dW
    scratch: ConvScratch<T>,  // backward's buffers, reused step after step
}

impl<T: Float> Layer<T> for Conv2d<T> {
    fn forward(&mut self, x: Tensor<T>, train: bool) -> Tensor<T> {
        let g = &self.geom;
        let n = x.shape()[0];
        let mut y = Tensor::zeros(&[n, g.out_channels, g.out_h, g.out_w]);
        conv2d_forward(
            g,
            n,
            x.data(),
            self.weight.value.data(),
            self.bias.as_ref().map(|b| b.value.data()),
            y.data_mut(),
        );
        self.input = train.then_some(x);
        y
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        let x = self.input.take().expect(NO_CACHE);
        let n = x.shape()[0];
        let mut dx = need_dx.then(|| Tensor::zeros(x.shape()));
        conv2d_backward_with(
            &self.geom,
            n,
            x.data(),
            self.weight.value.data(),
            dy.data(),
            dx.as_mut().map(|d| d.data_mut()),
            self.weight.grad.data_mut(),
            self.bias.as_mut().map(|b| b.grad.data_mut()),
            &mut self.scratch,
        );
        dx
    }
    fn visit_params(&self, prefix: &str, f: ParamVisitor<T>) {
        visit_weight_bias(prefix, &self.weight, self.bias.as_ref(), f);
    }
    fn visit_params_mut(&mut self, prefix: &str, f: ParamVisitorMut<T>) {
        visit_weight_bias_mut(prefix, &mut self.weight, self.bias.as_mut(), f);
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
    fn forward(&mut self, x: Tensor<T>, train: bool) -> Tensor<T> {
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
        self.input = train.then_some(x);
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
    fn visit_params(&self, prefix: &str, f: ParamVisitor<T>) {
        visit_weight_bias(prefix, &self.weight, self.bias.as_ref(), f);
    }
    fn visit_params_mut(&mut self, prefix: &str, f: ParamVisitorMut<T>) {
        visit_weight_bias_mut(prefix, &mut self.weight, self.bias.as_mut(), f);
    }
}

/// Which of the three pooling kernels a [`Pool`] layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
    Subsample,
}

pub struct Pool<T> {
    kind: PoolKind,
    geom: Pool2dGeometry,
    argmax: Vec<u32>, // (N, C, H_out, W_out), max pooling only
    batch: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Layer<T> for Pool<T> {
    fn forward(&mut self, x: Tensor<T>, train: bool) -> Tensor<T> {
        let g = &self.geom;
        let n = x.shape()[0];
        let mut y = Tensor::zeros(&[n, g.channels, g.out_h, g.out_w]);
        match self.kind {
            PoolKind::Max if train => {
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

pub struct Act<T> {
    act: Activation,
    output: Option<Tensor<T>>, // y = f(z), same shape as the input; f' is written through y
}

impl<T: Float> Layer<T> for Act<T> {
    fn forward(&mut self, mut x: Tensor<T>, train: bool) -> Tensor<T> {
        activation::forward_inplace(self.act, x.data_mut());
        if train && self.act != Activation::Identity {
            self.output = Some(x.clone());
        }
        x
    }
    fn backward(&mut self, mut dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        if self.act != Activation::Identity {
            let y = self.output.take().expect(NO_CACHE);
            activation::backward_inplace(self.act, y.data(), dy.data_mut());
        }
        need_dx.then_some(dy)
    }
}

pub struct Flatten {
    in_shape: Vec<usize>, // (N, ...) of the last forward
}

impl<T: Float> Layer<T> for Flatten {
    fn forward(&mut self, x: Tensor<T>, _train: bool) -> Tensor<T> {
        self.in_shape = x.shape().to_vec();
        let n = self.in_shape[0];
        let f = x.len() / n.max(1);
        x.reshape(&[n, f]).expect("same element count")
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        need_dx.then(|| dy.reshape(&self.in_shape).expect("same element count"))
    }
}

pub struct Residual<T> {
    body: Vec<Box<dyn Layer<T>>>,
}

impl<T: Float> Layer<T> for Residual<T> {
    fn forward(&mut self, x: Tensor<T>, train: bool) -> Tensor<T> {
        let mut h = x.clone();
        for l in &mut self.body {
            h = l.forward(h, train);
        }
        h.data_mut()
            .iter_mut()
            .zip(x.data())
            .for_each(|(a, &b)| *a += b);
        h
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        // The body's parameters always need their gradients, so run it to the end.
        let mut d = dy.clone();
        for l in self.body.iter_mut().rev() {
            d = l.backward(d, true).expect("need_dx was true");
        }
        need_dx.then(|| {
            d.data_mut()
                .iter_mut()
                .zip(dy.data())
                .for_each(|(a, &b)| *a += b);
            d
        })
    }
    fn visit_params(&self, prefix: &str, f: ParamVisitor<T>) {
        for (j, l) in self.body.iter().enumerate() {
            l.visit_params(&format!("{prefix}body.{j}."), f);
        }
    }
    fn visit_params_mut(&mut self, prefix: &str, f: ParamVisitorMut<T>) {
        for (j, l) in self.body.iter_mut().enumerate() {
            l.visit_params_mut(&format!("{prefix}body.{j}."), f);
        }
    }
}

/// Builds the layer for `spec` on inputs of sample shape `input` (already shape-checked),
/// drawing its parameters with `init`.
pub fn build_layer<T: Float>(
    spec: &LayerSpec,
    input: &[usize],
    init: Init,
    rng: &mut ChaCha8Rng,
) -> Box<dyn Layer<T>> {
    let chw = || [input[0], input[1], input[2]];
    match spec {
        LayerSpec::Conv2d(c) => {
            let geom =
                Conv2dGeometry::new(chw(), c.out_channels, c.config()).expect("shape-checked spec");
            let fan_in = geom.k_per_group();
            let fan_out = c.out_channels * c.kernel.0 * c.kernel.1;
            let (wb, bb) = init.bounds(fan_in, fan_out);
            let weight = Param::uniform(
                &[c.out_channels, input[0] / c.groups, c.kernel.0, c.kernel.1],
                wb,
                rng,
            );
            let bias = c.bias.then(|| Param::uniform(&[c.out_channels], bb, rng));
            Box::new(Conv2d {
                geom,
                weight,
                bias,
                input: None,
                scratch: ConvScratch::default(),
            })
        }
        LayerSpec::Linear(l) => {
            let (wb, bb) = init.bounds(input[0], l.out_features);
            let weight = Param::uniform(&[l.out_features, input[0]], wb, rng);
            let bias = l.bias.then(|| Param::uniform(&[l.out_features], bb, rng));
            Box::new(Linear {
                in_features: input[0],
                out_features: l.out_features,
                weight,
                bias,
                input: None,
            })
        }
        LayerSpec::MaxPool2d(p) | LayerSpec::AvgPool2d(p) | LayerSpec::Subsample(p) => {
            let kind = match spec {
                LayerSpec::MaxPool2d(_) => PoolKind::Max,
                LayerSpec::AvgPool2d(_) => PoolKind::Avg,
                _ => PoolKind::Subsample,
            };
            let geom = Pool2dGeometry::new(chw(), p.config()).expect("shape-checked spec");
            Box::new(Pool {
                kind,
                geom,
                argmax: Vec::new(),
                batch: 0,
                _t: std::marker::PhantomData,
            })
        }
        LayerSpec::Activation(a) => Box::new(Act {
            act: *a,
            output: None,
        }),
        LayerSpec::Flatten => Box::new(Flatten {
            in_shape: Vec::new(),
        }),
        LayerSpec::Residual(body) => {
            let mut s = input.to_vec();
            let mut layers = Vec::with_capacity(body.len());
            for l in body {
                layers.push(build_layer(l, &s, init, rng));
                s = l.output_shape(&s).expect("shape-checked spec");
            }
            Box::new(Residual { body: layers })
        }
    }
}

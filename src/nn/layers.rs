//! Layers with paired forward/backward: forward caches exactly what backward needs;
//! backward takes dOut, returns dIn and adds into the parameter gradients.
use super::init::Init;
use super::spec::{Conv2dSpec, LayerSpec, PoolSpec};
use crate::ops::activation::{self, Activation};
use crate::ops::conv::{
    conv2d_backward_with, conv2d_forward_with, conv2d_pool_applies, conv2d_pool_backward,
    conv2d_pool_fits, conv2d_pool_forward, conv2d_pool_winners_len, Conv2dGeometry, ConvScratch,
};
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
    /// [`Layer::forward`] without `train` on borrowed samples x with `shape` (N first), so
    /// that the rows of a batch need no copy of their own. Layers that only read their
    /// input (the convolutions) override it.
    fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        self.forward(Tensor::copy_of(shape, x), false)
    }
    /// Takes dL/dy, adds into the parameter gradients, returns dL/dx when `need_dx`.
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>>;
    fn visit_params(&self, _prefix: &str, _f: ParamVisitor<T>) {}
    fn visit_params_mut(&mut self, _prefix: &str, _f: ParamVisitorMut<T>) {}
    /// The parameters in state_dict order (as the visitors see them), for pairing the
    /// parameters of two copies of a layer.
    fn params(&self) -> Vec<&Param<T>> {
        Vec::new()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        Vec::new()
    }
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
    scratch: ConvScratch<T>,  // the kernels' buffers, reused step after step
}

impl<T: Float> Conv2d<T> {
    /// y (N, C_out, H_out, W_out) of n samples x (N, C_in, H, W).
    fn run(&mut self, x: &[T], n: usize) -> Tensor<T> {
        let g = &self.geom;
        let mut y = Tensor::zeros(&[n, g.out_channels, g.out_h, g.out_w]);
        conv2d_forward_with(
            g,
            n,
            x,
            self.weight.value.data(),
            self.bias.as_ref().map(|b| b.value.data()),
            y.data_mut(),
            &mut self.scratch,
        );
        y
    }
}

impl<T: Float> Layer<T> for Conv2d<T> {
    fn forward(&mut self, x: Tensor<T>, train: bool) -> Tensor<T> {
        let y = self.run(x.data(), x.shape()[0]);
        self.input = train.then_some(x);
        y
    }
    fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        self.input = None;
        self.run(x, shape[0])
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
    fn params(&self) -> Vec<&Param<T>> {
        std::iter::once(&self.weight).chain(&self.bias).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        std::iter::once(&mut self.weight)
            .chain(&mut self.bias)
            .collect()
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
    fn params(&self) -> Vec<&Param<T>> {
        std::iter::once(&self.weight).chain(&self.bias).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        std::iter::once(&mut self.weight)
            .chain(&mut self.bias)
            .collect()
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
    index: Vec<usize>, // each body layer's position among the body's specs
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
        for (l, j) in self.body.iter().zip(&self.index) {
            l.visit_params(&format!("{prefix}body.{j}."), f);
        }
    }
    fn visit_params_mut(&mut self, prefix: &str, f: ParamVisitorMut<T>) {
        for (l, j) in self.body.iter_mut().zip(&self.index) {
            l.visit_params_mut(&format!("{prefix}body.{j}."), f);
        }
    }
    fn params(&self) -> Vec<&Param<T>> {
        self.body.iter().flat_map(|l| l.params()).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        self.body.iter_mut().flat_map(|l| l.params_mut()).collect()
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
    match spec {
        LayerSpec::Conv2d(c) => Box::new(build_conv(c, input, init, rng)),
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
        LayerSpec::MaxPool2d(p) => Box::new(build_pool::<T>(PoolKind::Max, p, input)),
        LayerSpec::AvgPool2d(p) => Box::new(build_pool::<T>(PoolKind::Avg, p, input)),
        LayerSpec::Subsample(p) => Box::new(build_pool::<T>(PoolKind::Subsample, p, input)),
        LayerSpec::Activation(a) => Box::new(Act {
            act: *a,
            output: None,
        }),
        LayerSpec::Flatten => Box::new(Flatten {
            in_shape: Vec::new(),
        }),
        LayerSpec::Residual(body) => {
            let (body, index) = build_layers(body, input, init, rng);
            Box::new(Residual { body, index })
        }
    }
}

fn build_conv<T: Float>(
    c: &Conv2dSpec,
    input: &[usize],
    init: Init,
    rng: &mut ChaCha8Rng,
) -> Conv2d<T> {
    let chw = [input[0], input[1], input[2]];
    let geom = Conv2dGeometry::new(chw, c.out_channels, c.config()).expect("shape-checked spec");
    let fan_in = geom.k_per_group();
    let fan_out = c.out_channels * c.kernel.0 * c.kernel.1;
    let (wb, bb) = init.bounds(fan_in, fan_out);
    let weight = Param::uniform(
        &[c.out_channels, input[0] / c.groups, c.kernel.0, c.kernel.1],
        wb,
        rng,
    );
    let bias = c.bias.then(|| Param::uniform(&[c.out_channels], bb, rng));
    Conv2d {
        geom,
        weight,
        bias,
        input: None,
        scratch: ConvScratch::default(),
    }
}

fn build_pool<T: Float>(kind: PoolKind, p: &PoolSpec, input: &[usize]) -> Pool<T> {
    let chw = [input[0], input[1], input[2]];
    Pool {
        kind,
        geom: Pool2dGeometry::new(chw, p.config()).expect("shape-checked spec"),
        argmax: Vec::new(),
        batch: 0,
        _t: std::marker::PhantomData,
    }
}

/// Builds the layers of `specs` in sequence on inputs of sample shape `input`. Returns the
/// layer objects and, for each, the position of its first spec (the prefix of its parameters'
/// names). One object per spec, except:
/// - a ReLU followed by max pooling runs as max pooling followed by the ReLU: max commutes
///   with the ReLU, so values (up to the sign of a zero) and gradients are the same, ties
///   included (a window whose maximum is ≤ 0 passes no gradient either way), and the ReLU and
///   its cached output shrink to a quarter;
/// - a convolution followed by 2×2 max pooling, with or without a ReLU between, is one
///   [`ConvPool`] object.
///
/// None of the merged or moved layers has parameters, so the parameters' names and their
/// initial draws from `rng` are those of the specs in order.
pub fn build_layers<T: Float>(
    specs: &[LayerSpec],
    input: &[usize],
    init: Init,
    rng: &mut ChaCha8Rng,
) -> (Vec<Box<dyn Layer<T>>>, Vec<usize>) {
    let mut shape = input.to_vec();
    let (mut layers, mut index) = (Vec::with_capacity(specs.len()), Vec::new());
    let mut i = 0;
    let relu = |s: Option<&LayerSpec>| matches!(s, Some(LayerSpec::Activation(Activation::Relu)));
    fn maxpool(s: Option<&LayerSpec>) -> Option<&PoolSpec> {
        match s {
            Some(LayerSpec::MaxPool2d(p)) => Some(p),
            _ => None,
        }
    }
    while i < specs.len() {
        index.push(i);
        if let LayerSpec::Conv2d(c) = &specs[i] {
            let with_relu = relu(specs.get(i + 1));
            let at = i + 1 + usize::from(with_relu);
            if let Some(p) = maxpool(specs.get(at)) {
                let conv = build_conv::<T>(c, &shape, init, rng);
                let conv_out = specs[i].output_shape(&shape).expect("shape-checked spec");
                let pool = build_pool::<T>(PoolKind::Max, p, &conv_out);
                if conv2d_pool_fits(&conv.geom, &pool.geom) {
                    shape = specs[at]
                        .output_shape(&conv_out)
                        .expect("shape-checked spec");
                    let relu = with_relu.then_some(Act {
                        act: Activation::Relu,
                        output: None,
                    });
                    layers.push(Box::new(ConvPool {
                        conv,
                        pool,
                        relu,
                        winners: Vec::new(),
                        fused: false,
                    }) as Box<dyn Layer<T>>);
                    i = at + 1;
                    continue;
                }
                layers.push(Box::new(conv));
                shape = conv_out;
                i += 1;
                continue;
            }
        }
        if relu(Some(&specs[i])) {
            if let Some(p) = maxpool(specs.get(i + 1)) {
                layers.push(Box::new(build_pool::<T>(PoolKind::Max, p, &shape)));
                index.push(i + 1);
                layers.push(build_layer(&specs[i], &shape, init, rng));
                shape = specs[i + 1]
                    .output_shape(&shape)
                    .expect("shape-checked spec");
                i += 2;
                continue;
            }
        }
        layers.push(build_layer(&specs[i], &shape, init, rng));
        shape = specs[i].output_shape(&shape).expect("shape-checked spec");
        i += 1;
    }
    (layers, index)
}

/// Conv2d → [ReLU] → MaxPool2d 2×2, built from their three (or two) specs: one pass of the
/// batch-lanes kernels where they take the batch ([`conv2d_pool_forward`]), else the layers
/// in turn, the ReLU after the pooling as [`build_layers`] orders it.
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
            &mut self.conv.scratch,
        );
        y
    }

    /// The pooling and ReLU after a convolution's output h, as separate layers.
    fn pool_after(&mut self, h: Tensor<T>, train: bool) -> Tensor<T> {
        let h = self.pool.forward(h, train);
        match &mut self.relu {
            Some(r) => r.forward(h, train),
            None => h,
        }
    }
}

impl<T: Float> Layer<T> for ConvPool<T> {
    fn forward(&mut self, x: Tensor<T>, train: bool) -> Tensor<T> {
        let n = x.shape()[0];
        self.fused = conv2d_pool_applies(&self.conv.geom, &self.pool.geom, n);
        if !self.fused {
            let h = self.conv.forward(x, train);
            return self.pool_after(h, train);
        }
        let y = self.run_fused(x.data(), n);
        self.conv.input = train.then_some(x);
        y
    }
    fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        let n = shape[0];
        self.fused = conv2d_pool_applies(&self.conv.geom, &self.pool.geom, n);
        self.conv.input = None;
        if !self.fused {
            let h = self.conv.infer(x, shape);
            return self.pool_after(h, false);
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
            &mut c.scratch,
        );
        dx
    }
    fn visit_params(&self, prefix: &str, f: ParamVisitor<T>) {
        self.conv.visit_params(prefix, f);
    }
    fn visit_params_mut(&mut self, prefix: &str, f: ParamVisitorMut<T>) {
        self.conv.visit_params_mut(prefix, f);
    }
    fn params(&self) -> Vec<&Param<T>> {
        self.conv.params()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        self.conv.params_mut()
    }
}

//! A network: the layers of a model spec in sequence, h^l = f(b^l + W^l h^(l−1)).
use super::init::Init;
use super::layers::{build_layer, Layer, Param};
use super::spec::{LayerSpec, ModelSpec};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A built network: its spec and one layer object per top-level layer.
pub struct Network<T: Float = f32> {
    spec: ModelSpec,
    layers: Vec<Box<dyn Layer<T>>>,
}

/// One row of [`Network::summary`].
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRow {
    /// "3" for a top-level layer, "3.body.1" inside a residual block.
    pub index: String,
    pub kind: &'static str,
    pub output_shape: Vec<usize>,
    pub params: usize,
}

impl<T: Float> Network<T> {
    /// Builds the network with parameters drawn by `init` from `seed`.
    pub fn new(spec: ModelSpec, init: Init, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut shape = spec.input.to_vec();
        let mut layers = Vec::with_capacity(spec.layers.len());
        for l in &spec.layers {
            layers.push(build_layer(l, &shape, init, &mut rng));
            shape = l
                .output_shape(&shape)
                .expect("ModelSpec is shape-checked when parsed");
        }
        Network { spec, layers }
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Length of one sample's output vector.
    pub fn output_len(&self) -> usize {
        self.spec.output_len()
    }

    /// Runs the batch `x` (N, C, H, W) through every layer. With `train`, layers cache
    /// what [`Network::backward`] needs.
    pub fn forward(&mut self, x: Tensor<T>, train: bool) -> Result<Tensor<T>> {
        let [c, h, w] = self.spec.input;
        let s = x.shape();
        if s.len() != 4 || s[1..] != [c, h, w] {
            let n = s.first().copied().unwrap_or(0);
            return Err(Error::Shape {
                what: format!("input of model `{}`", self.spec.name),
                expected: vec![n, c, h, w],
                got: s.to_vec(),
            });
        }
        // On one thread of the pool (a no-op when already there): every layer's parallel
        // sections then share their work with the other workers directly, instead of this
        // thread handing each one over and sleeping until it is done.
        let layers = &mut self.layers;
        Ok(rayon::scope(move |_| {
            let mut h = x;
            for l in layers.iter_mut() {
                h = l.forward(h, train);
            }
            h
        }))
    }

    /// Back-propagates dL/d(output) through the cached forward pass, adding into every
    /// parameter's gradient. The input gradient is not needed, so layer 0 skips it.
    pub fn backward(&mut self, dy: Tensor<T>) {
        let mut d = dy;
        let last = self.layers.len();
        for (i, l) in self.layers.iter_mut().enumerate().rev() {
            match l.backward(d, i > 0) {
                Some(next) => d = next,
                None => {
                    debug_assert!(i == 0 || last == 0);
                    return;
                }
            }
        }
    }

    /// Like [`Network::backward`] but also returns dL/d(input) (for gradient checks).
    pub fn backward_with_input_grad(&mut self, dy: Tensor<T>) -> Tensor<T> {
        let mut d = dy;
        for l in self.layers.iter_mut().rev() {
            d = l.backward(d, true).expect("need_dx was true");
        }
        d
    }

    /// Calls `f(name, param)` for every parameter in state_dict order.
    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Param<T>)) {
        for (i, l) in self.layers.iter().enumerate() {
            l.visit_params(&format!("{i}."), f);
        }
    }

    /// Mutable variant of [`Network::visit_params`].
    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Param<T>)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.visit_params_mut(&format!("{i}."), f);
        }
    }

    /// Sets every parameter gradient to zero.
    pub fn zero_grad(&mut self) {
        self.visit_params_mut(&mut |_, p| p.grad.data_mut().fill(T::zero()));
    }

    /// Total number of trainable scalars.
    pub fn param_count(&self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |_, p| n += p.value.len());
        n
    }

    /// (name, value) of every parameter, cloned.
    pub fn named_params(&self) -> Vec<(String, Tensor<T>)> {
        let mut out = Vec::new();
        self.visit_params(&mut |name, p| out.push((name, p.value.clone())));
        out
    }

    /// Replaces parameter values by name; every parameter must be given with its exact shape.
    pub fn set_params(
        &mut self,
        mut values: std::collections::HashMap<String, Tensor<T>>,
    ) -> Result<()> {
        let mut err = None;
        self.visit_params_mut(&mut |name, p| {
            if err.is_some() {
                return;
            }
            match values.remove(&name) {
                Some(v) if v.shape() == p.value.shape() => p.value = v,
                Some(v) => {
                    err = Some(Error::Shape {
                        what: format!("parameter `{name}`"),
                        expected: p.value.shape().to_vec(),
                        got: v.shape().to_vec(),
                    })
                }
                None => err = Some(Error::invalid(format!("parameter `{name}` is missing"))),
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if let Some(extra) = values.keys().next() {
            return Err(Error::invalid(format!("unexpected parameter `{extra}`")));
        }
        Ok(())
    }

    /// The same network in another float type (parameters converted, caches dropped).
    pub fn cast<U: Float>(&self) -> Network<U> {
        let mut net = Network::<U>::new(self.spec.clone(), Init::Pytorch, 0);
        let values = self
            .named_params()
            .into_iter()
            .map(|(k, v)| (k, v.cast::<U>()))
            .collect();
        net.set_params(values).expect("same spec, same parameters");
        net
    }

    /// One row per layer (residual bodies indented by their path) with output shapes and
    /// parameter counts, like Keras' `model.summary()`.
    pub fn summary(&self) -> Vec<SummaryRow> {
        fn walk(layers: &[LayerSpec], prefix: &str, input: &[usize], rows: &mut Vec<SummaryRow>) {
            let mut s = input.to_vec();
            for (i, l) in layers.iter().enumerate() {
                let index = format!("{prefix}{i}");
                let out = l.output_shape(&s).expect("shape-checked spec");
                rows.push(SummaryRow {
                    index: index.clone(),
                    kind: l.type_name(),
                    output_shape: out.clone(),
                    params: l.param_count(&s),
                });
                if let LayerSpec::Residual(body) = l {
                    walk(body, &format!("{index}.body."), &s, rows);
                }
                s = out;
            }
        }
        let mut rows = Vec::new();
        walk(&self.spec.layers, "", &self.spec.input, &mut rows);
        rows
    }
}

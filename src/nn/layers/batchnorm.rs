//! `batchnorm2d` and `batchnorm1d`: PyTorch's BatchNorm2d/1d. Training normalises by the
//! batch's statistics (biased variance) and updates the running ones (unbiased variance);
//! inference uses the running ones. The kernels are `ops::norm`'s.
use super::{chw, Buffer, BuildCx, Layer, LayerDef, Named, NamedMut, Param, Pass};
use super::{Exchange, TensorInfo, TensorKind, NO_CACHE};
use crate::error::Result;
use crate::nn::keys::{float_text, Fields};
use crate::ops::norm;
use crate::tensor::{Float, Tensor};
use crate::onnx::graph::{Attr, Scope};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormSpec {
    /// Over (N, H, W) per channel of [C, H, W] samples; else per feature of [F] samples.
    pub two_d: bool,
    pub eps: f64,
    pub momentum: f64,
    /// A learned scale (weight) and shift (bias) per channel.
    pub affine: bool,
}

impl Default for BatchNormSpec {
    fn default() -> Self {
        BatchNormSpec {
            two_d: true,
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
        }
    }
}

impl LayerDef for BatchNormSpec {
    const TYPES: &'static [&'static str] = &["batchnorm2d", "batchnorm1d"];

    fn parse(name: &str, f: &mut Fields) -> Result<Self> {
        let eps = f.float(
            "eps",
            1e-5,
            (f64::MIN_POSITIVE, f64::MAX),
            "a positive number",
        )?;
        let momentum = f.float("momentum", 0.1, (0.0, 1.0), "a number in [0, 1]")?;
        let affine = f.bool("affine", true)?;
        Ok(BatchNormSpec {
            two_d: name == "batchnorm2d",
            eps,
            momentum,
            affine,
        })
    }

    fn type_name(&self) -> &'static str {
        if self.two_d {
            "batchnorm2d"
        } else {
            "batchnorm1d"
        }
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        if self.two_d {
            chw(input)?;
        } else if input.len() != 1 {
            return Err(format!(
                "needs a flat [features] input, got {input:?}; use batchnorm2d on [channels, height, width]"
            ));
        }
        Ok(input.to_vec())
    }

    fn tensors(&self, input: &[usize]) -> Vec<TensorInfo> {
        let c = input[0];
        let mut t = Vec::new();
        if self.affine {
            t.push(TensorInfo::param("weight", &[c]));
            t.push(TensorInfo::param("bias", &[c]));
        }
        t.push(TensorInfo::buffer("running_mean", &[c]));
        t.push(TensorInfo::buffer("running_var", &[c]));
        t.push(TensorInfo {
            name: "num_batches_tracked".into(),
            shape: vec![],
            kind: TensorKind::Count,
        });
        t
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        vec![
            ("eps", float_text(self.eps)),
            ("momentum", float_text(self.momentum)),
            ("affine", self.affine.to_string()),
        ]
    }

    fn build<T: Float>(&self, input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        let c = input[0];
        let filled = |v: f64| Tensor::from_vec(&[c], vec![T::of(v); c]).expect("c values");
        Box::new(BatchNorm {
            spec: *self,
            channels: c,
            weight: self.affine.then(|| Param::of(filled(1.0))),
            bias: self.affine.then(|| Param::of(filled(0.0))),
            running_mean: Buffer::Float(filled(0.0)),
            running_var: Buffer::Float(filled(1.0)),
            tracked: Buffer::Count(0),
            cache: None,
            spare: None,
            relu: false,
        })
    }

    /// BatchNormalization with the running statistics (inference mode); without `affine`,
    /// scale 1 and bias 0.
    fn onnx(&self, input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let c = input[0];
        let (scale, bias) = if self.affine {
            (cx.weight("weight")?, cx.weight("bias")?)
        } else {
            (cx.float("scale", &[c], &vec![1.0; c]), cx.float("bias", &[c], &vec![0.0; c]))
        };
        let mean = cx.weight("running_mean")?;
        let var = cx.weight("running_var")?;
        let attrs = [("epsilon", Attr::Float(self.eps as f32))];
        Ok(cx.node("BatchNormalization", &[x, &scale, &bias, &mean, &var], &attrs, "batchnorm"))
    }
}

/// What backward needs of a forward pass.
struct Cache<T> {
    x_hat: Tensor<T>,              // (N, C, H, W) or (N, F): the normalised input
    coef: Vec<norm::ChannelAffine>, // (C): the statistics, γ and β used
    batch_stats: bool,             // whether those were the batch's own (they depend on x then)
    count: f64,                    // values per channel in the whole batch
    sync: Option<(usize, Arc<dyn Exchange>)>, // this shard's place in the batch's exchange
}

pub struct BatchNorm<T> {
    spec: BatchNormSpec,
    channels: usize,
    weight: Option<Param<T>>, // (C), γ
    bias: Option<Param<T>>,   // (C), β
    running_mean: Buffer<T>,  // Float (C)
    running_var: Buffer<T>,   // Float (C)
    tracked: Buffer<T>,       // Count: training batches seen
    cache: Option<Cache<T>>,
    spare: Option<Tensor<T>>, // (N, C, H, W): the last x̂, reused by the next forward
    /// A ReLU after the normalisation, fused in by `nn::fuse`: its derivative comes from x̂.
    pub(crate) relu: bool,
}

fn floats<T>(b: &Buffer<T>) -> &Tensor<T> {
    match b {
        Buffer::Float(t) => t,
        Buffer::Count(_) => unreachable!("a float buffer"),
    }
}

fn floats_mut<T>(b: &mut Buffer<T>) -> &mut Tensor<T> {
    match b {
        Buffer::Float(t) => t,
        Buffer::Count(_) => unreachable!("a float buffer"),
    }
}

impl<T: Float> BatchNorm<T> {
    /// Inference mode as a map per channel, y = x·scale + shift (then the fused ReLU if
    /// `relu`), from the running statistics: (scale, shift, relu).
    pub(crate) fn inference_map(&self) -> (Vec<f64>, Vec<f64>, bool) {
        let rm = floats(&self.running_mean).data();
        let rv = floats(&self.running_var).data();
        let scale: Vec<f64> = (0..self.channels)
            .map(|ch| self.gamma(ch) / (rv[ch].f64() + self.spec.eps).sqrt())
            .collect();
        let shift = (0..self.channels)
            .map(|ch| self.beta(ch) - rm[ch].f64() * scale[ch])
            .collect();
        (scale, shift, self.relu)
    }

    fn gamma(&self, ch: usize) -> f64 {
        self.weight
            .as_ref()
            .map_or(1.0, |w| w.value.data()[ch].f64())
    }
    fn beta(&self, ch: usize) -> f64 {
        self.bias.as_ref().map_or(0.0, |b| b.value.data()[ch].f64())
    }
}

impl<T: Float> Layer<T> for BatchNorm<T> {
    fn forward(&mut self, mut x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        let c = self.channels;
        let plane = x.len() / (x.shape()[0] * c).max(1);
        let own = (x.len() / c.max(1)) as f64; // values per channel in this part
        let (mean, inv_std, count): (Vec<f64>, Vec<f64>, f64) = if pass.train {
            // The whole batch's statistics: each shard's, merged in shard order.
            let planes = norm::plane_stats(x.data(), c, plane); // (N, C, 2)
            let shards = pass.gather(norm::part_stats(&planes, c, plane)); // (shards, C, 3)
            let (mean, var, m) = norm::merge_parts(&shards, c);
            let m = m as usize; // values per channel in the batch
            let mo = self.spec.momentum;
            let rm = floats_mut(&mut self.running_mean).data_mut();
            for (r, &mu) in rm.iter_mut().zip(&mean) {
                *r = T::of((1.0 - mo) * r.f64() + mo * mu);
            }
            // PyTorch's unbiased update; with one value per channel it is not defined, and
            // PyTorch refuses such a batch: the running variance is left as it is then.
            if m > 1 {
                let rv = floats_mut(&mut self.running_var).data_mut();
                for (r, &v) in rv.iter_mut().zip(&var) {
                    *r = T::of((1.0 - mo) * r.f64() + mo * v * m as f64 / (m - 1) as f64);
                }
            }
            if let Buffer::Count(k) = &mut self.tracked {
                *k += 1;
            }
            let inv = var
                .iter()
                .map(|v| 1.0 / (v + self.spec.eps).sqrt())
                .collect();
            (mean, inv, m as f64)
        } else {
            let rm = floats(&self.running_mean).data();
            let rv = floats(&self.running_var).data();
            (
                rm.iter().map(|v| v.f64()).collect(),
                rv.iter()
                    .map(|v| 1.0 / (v.f64() + self.spec.eps).sqrt())
                    .collect(),
                own,
            )
        };
        let coef: Vec<norm::ChannelAffine> = (0..c)
            .map(|ch| norm::ChannelAffine {
                mean: mean[ch],
                inv_std: inv_std[ch],
                gamma: self.gamma(ch),
                beta: self.beta(ch),
            })
            .collect();
        // x̂ goes into last step's buffer when it has the size: every value is overwritten.
        let mut x_hat = pass.grad.then(|| match self.spare.take() {
            Some(t) if t.shape() == x.shape() => t,
            _ => Tensor::<T>::zeros(x.shape()),
        });
        norm::normalise(
            x.data_mut(),
            x_hat.as_mut().map(|h| h.data_mut()),
            plane,
            &coef,
            self.relu,
        );
        self.cache = x_hat.map(|x_hat| Cache {
            x_hat,
            coef,
            batch_stats: pass.train,
            count,
            sync: pass.sync.map(|s| s.owned()),
        });
        x
    }

    fn backward(&mut self, mut dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        let cache = self.cache.take().expect(NO_CACHE);
        let c = self.channels;
        let plane = (dy.len() / (dy.shape()[0] * c).max(1)).max(1);
        let relu = self.relu.then_some(&cache.coef[..]);
        let parts = norm::grad_sum_parts(dy.data(), cache.x_hat.data(), c, plane, relu);
        // With the batch's statistics every sample's x̂ depends on the whole batch: the sums
        // are the whole batch's, each shard's added in shard order; γ and β's gradients are
        // this shard's share.
        let (own_dy, own_dy_xh) = norm::fold_sums(&parts, c);
        let (sum_dy, sum_dy_xh, m) = if cache.batch_stats {
            let mine: Vec<f64> = own_dy.iter().zip(&own_dy_xh).flat_map(|(&a, &b)| [a, b]).collect();
            let all = match &cache.sync {
                Some((shard, ex)) => ex.gather(*shard, mine), // (shards, C, 2)
                None => Arc::new(mine),
            };
            let (a, b) = norm::fold_sums(&all, c);
            (a, b, cache.count)
        } else {
            (own_dy.clone(), own_dy_xh.clone(), cache.count)
        };
        if let (Some(w), Some(b)) = (&mut self.weight, &mut self.bias) {
            for ch in 0..c {
                w.grad.data_mut()[ch] += T::of(own_dy_xh[ch]);
                b.grad.data_mut()[ch] += T::of(own_dy[ch]);
            }
        }
        let dx = need_dx.then(|| {
            let scale: Vec<f64> = cache.coef.iter().map(|a| a.gamma * a.inv_std).collect();
            let sums = cache
                .batch_stats
                .then_some((&sum_dy[..], &sum_dy_xh[..], m));
            norm::input_grad(dy.data_mut(), cache.x_hat.data(), plane, &scale, sums, relu);
            dy
        });
        self.spare = Some(cache.x_hat);
        dx
    }

    fn release(&mut self) {
        self.spare = None;
    }

    fn params(&self) -> Named<'_, Param<T>> {
        let mut v = Vec::new();
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            v.push(("weight".to_string(), w));
            v.push(("bias".to_string(), b));
        }
        v
    }
    fn params_mut(&mut self) -> NamedMut<'_, Param<T>> {
        let mut v = Vec::new();
        if let (Some(w), Some(b)) = (&mut self.weight, &mut self.bias) {
            v.push(("weight".to_string(), w));
            v.push(("bias".to_string(), b));
        }
        v
    }
    fn buffers(&self) -> Named<'_, Buffer<T>> {
        vec![
            ("running_mean".into(), &self.running_mean),
            ("running_var".into(), &self.running_var),
            ("num_batches_tracked".into(), &self.tracked),
        ]
    }
    fn buffers_mut(&mut self) -> NamedMut<'_, Buffer<T>> {
        vec![
            ("running_mean".into(), &mut self.running_mean),
            ("running_var".into(), &mut self.running_var),
            ("num_batches_tracked".into(), &mut self.tracked),
        ]
    }
    /// The batch's statistics in forward, the sums of its gradients in backward.
    fn exchanges(&self) -> usize {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, layer, random, spec};
    use super::*;

    /// The naive definition, per channel, in f64.
    #[test]
    fn training_normalises_and_updates_running_statistics() {
        let (_, mut l) = layer("{ type = \"batchnorm2d\", momentum = 0.25 }", &[2, 2, 3]);
        let x = Tensor::from_vec(&[3, 2, 2, 3], random(36, 5)).unwrap();
        let y = l.forward(x.clone(), &Pass::train(0));
        for ch in 0..2 {
            let vals: Vec<f64> = (0..3)
                .flat_map(|n| x.data()[(n * 2 + ch) * 6..(n * 2 + ch + 1) * 6].to_vec())
                .collect();
            let mean = vals.iter().sum::<f64>() / 18.0;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 18.0;
            for n in 0..3 {
                for j in 0..6 {
                    let at = (n * 2 + ch) * 6 + j;
                    let want = (x.data()[at] - mean) / (var + 1e-5).sqrt();
                    assert!((y.data()[at] - want).abs() < 1e-12);
                }
            }
            let b = l.buffers();
            let Buffer::Float(rm) = b[0].1 else { panic!() };
            let Buffer::Float(rv) = b[1].1 else { panic!() };
            assert!((rm.data()[ch] - 0.25 * mean).abs() < 1e-15);
            assert!((rv.data()[ch] - (0.75 + 0.25 * var * 18.0 / 17.0)).abs() < 1e-15);
            assert_eq!(b[2].1, &Buffer::Count(1));
        }
    }

    /// Released between steps, x̂'s buffer is allocated afresh: the next step is the same.
    #[test]
    fn release_frees_the_spare_and_changes_no_step() {
        let table = "{ type = \"batchnorm2d\" }";
        let (_, mut kept) = layer(table, &[2, 3, 3]);
        let (_, mut freed) = layer(table, &[2, 3, 3]);
        let mut grads = Vec::new();
        for step in 0..2 {
            let x = Tensor::from_vec(&[4, 2, 3, 3], random(72, 9 + step)).unwrap();
            let dy = Tensor::from_vec(&[4, 2, 3, 3], random(72, 19 + step)).unwrap();
            for l in [&mut kept, &mut freed] {
                let y = l.forward(x.clone(), &Pass::train(0));
                let dx = l.backward(dy.clone(), true).unwrap();
                grads.push((y, dx));
            }
            let bn = |l: &dyn Layer<f64>| l.as_any().downcast_ref::<BatchNorm<f64>>().map(|b| b.spare.is_some());
            assert_eq!(bn(&*freed), Some(true));
            freed.release();
            assert_eq!(bn(&*freed), Some(false));
        }
        assert_eq!(grads[0], grads[1]);
        assert_eq!(grads[2], grads[3]);
        assert_eq!(kept.params()[0].1.grad, freed.params()[0].1.grad);
    }

    #[test]
    fn inference_uses_running_statistics() {
        let (_, mut l) = layer("{ type = \"batchnorm1d\", eps = 0.5 }", &[2]);
        for (name, b) in l.buffers_mut() {
            if let Buffer::Float(t) = b {
                let v = if name == "running_mean" {
                    [1.0, -1.0]
                } else {
                    [3.5, 1.5]
                };
                t.data_mut().copy_from_slice(&v);
            }
        }
        let y = l.forward(
            Tensor::from_vec(&[1, 2], vec![3.0, 1.0]).unwrap(),
            &Pass::INFER,
        );
        assert!((y.data()[0] - 1.0).abs() < 1e-15);
        assert!((y.data()[1] - std::f64::consts::SQRT_2).abs() < 1e-15);
    }

    #[test]
    fn keys_shapes_and_tensors() {
        let s = spec("{ type = \"batchnorm2d\", affine = false }").unwrap();
        assert_eq!(s.param_count(&[3, 4, 4]), 0);
        assert_eq!(s.buffer_count(&[3, 4, 4]), 7);
        assert!(s.output_shape(&[12]).is_err());
        assert!(spec("{ type = \"batchnorm1d\" }")
            .unwrap()
            .output_shape(&[3, 4, 4])
            .is_err());
        assert!(spec("{ type = \"batchnorm2d\", momentum = 1.5 }").is_err());
        assert!(spec("{ type = \"batchnorm2d\", eps = 0 }").is_err());
    }

    #[test]
    fn gradients_match_finite_differences_in_both_modes() {
        for t in [
            "{ type = \"batchnorm2d\" }",
            "{ type = \"batchnorm2d\", affine = false }",
        ] {
            gradcheck(t, &[3, 2, 2, 3], Pass::train(0));
            gradcheck(t, &[3, 2, 2, 3], Pass::FROZEN);
        }
        gradcheck("{ type = \"batchnorm1d\" }", &[4, 3], Pass::train(0));
        gradcheck("{ type = \"batchnorm1d\" }", &[4, 3], Pass::FROZEN);
    }
}

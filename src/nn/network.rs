//! A network: the layers of a model spec in sequence, h^l = f(b^l + W^l h^(l−1)), run on
//! shards of each batch side by side (data parallel) with the shard gradients summed in order.
use super::dag::Dag;
use super::graph::{Node, Op, StepOp};
use super::init::Init;
use super::layers::{Buffer, BuildCx, Exchange, LayerSpec, Param, Pass, ShardSync};
use super::relay::Relay;
use super::spec::ModelSpec;
use crate::dist::{f32_bytes, gather_f64, put_f32, rank_items, Group};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::Arc;

/// The loss's gradient for some output rows of a batch, and their share of the loss:
/// `dloss(rows, output of those rows) = (dL/d(output) of those rows, share)`.
pub type LossGrad<'a, T> =
    dyn Fn(std::ops::Range<usize>, &Tensor<T>) -> (Tensor<T>, f64) + Sync + 'a;

/// How a network is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    pub init: Init,
    /// Seed of the initial parameter values.
    pub seed: u64,
    /// Run the fusion pass ([`super::fuse`]); off only to test it against the plain layers.
    pub fuse: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            init: Init::Pytorch,
            seed: 0,
            fuse: true,
        }
    }
}

/// A built network: its spec and its layers.
///
/// A batch runs in shards, each through its own copy of the layers (with its own caches), so
/// the threads each take whole shards through the whole network instead of meeting at every
/// layer's parallel section: at LeNet's size those meetings cost more than the layers. A
/// network with a layer that needs the whole batch in training (BatchNorm's statistics) runs
/// a training batch as one shard, its layers' kernels parallel inside.
pub struct Network<T: Float = f32> {
    spec: ModelSpec,
    options: BuildOptions,
    pub(crate) layers: Dag<T>, // shard 0's layers; their parameters and buffers are the network's
    replicas: Vec<Dag<T>>,     // the other shards' layers, parameter and buffer values copied
    synced: usize,             // how many replicas hold the current parameter and buffer values
    param_count: usize,
    output_len: usize,              // values of one sample's output
    exchanges: usize,               // Pass::gather calls per training step (BatchNorm)
    key: u64,                       // random key of the next training passes (dropout)
    shards: Vec<(usize, usize)>,    // row ranges of the last caching forward's shards
    norm: Option<(Vec<T>, Vec<T>)>, // the spec's input normalisation: per channel (mean, 1/std)
}

/// Samples per shard, about: the layers' fixed costs spread over enough samples (LeNet-5, a
/// step of 64 on 2 threads, best of 4 alternating runs: 2 shards of 32 1.76 ms, 4 of 16
/// 1.98 ms).
const SHARD: usize = 32;
/// Samples per shard at least, to make two shards of a small batch: one group of the
/// batch-lanes kernels.
const MIN_SHARD: usize = 16;
/// Samples per shard at least in a network whose shards exchange batch statistics: they run
/// one after the other, their kernels parallel inside, so smaller shards only add passes
/// (ResNet-20 epoch on the embedded digits, batch 128, 2 threads, AVX-512 Xeon: one part
/// 768-787 images/s; shards of 64 646-650, of 32 561-576, and peak RSS 330 / 450 MB against
/// 265). Under MPI a rank holds whole shards: a batch of 128 per rank.
const SYNCED_SHARD: usize = 128;
/// Shards per batch at most.
const MAX_SHARDS: usize = 8;
/// Bytes that the replicas of one network may hold in parameter values and gradients.
const REPLICA_BYTES: usize = 64 << 20;

/// Row ranges of the shards of a batch of `n` samples for a network of `params` parameters of
/// `bytes` bytes each. A function of these alone, never of the thread count: the shards'
/// gradients are summed in shard order, so training is bit-identical on any machine.
fn shard_bounds(n: usize, params: usize, bytes: usize, synced: bool) -> Vec<(usize, usize)> {
    let replicas = REPLICA_BYTES / (2 * params * bytes).max(1);
    let shards = if synced {
        n / SYNCED_SHARD
    } else {
        (n / SHARD).max((n / MIN_SHARD).min(2))
    };
    let shards = shards.clamp(1, MAX_SHARDS.min(replicas + 1));
    (0..shards)
        .map(|i| (i * n / shards, (i + 1) * n / shards))
        .collect()
}

fn build_layers<T: Float>(spec: &ModelSpec, o: BuildOptions) -> Dag<T> {
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut cx = BuildCx::new(o.init, &mut rng);
    let graph = spec.graph().expect("a shape-checked spec");
    Dag::build(&graph, &mut cx, o.fuse)
}

fn zero_grads<T: Float>(layers: &mut Dag<T>) {
    for (_, p) in layers.params_mut() {
        p.grad.data_mut().fill(T::zero());
    }
}

impl Network<f32> {
    /// A training step's forward and backward passes as one rank of `group`: x holds this
    /// rank's rows ([`Network::rank_rows`]) of a batch of `n` samples, `dloss` takes rows of
    /// the whole batch. Every shard's gradients, of every rank, are summed in shard order
    /// into the network's, the same on every rank and the same as [`Network::forward_backward`]
    /// of the whole batch in one process; so is the returned loss.
    pub fn forward_backward_ranked(
        &mut self,
        x: Tensor<f32>,
        n: usize,
        dloss: &LossGrad<f32>,
        group: &Arc<dyn Group>,
    ) -> Result<f64> {
        let shards = self.train_shards(n);
        let mine = rank_items(shards.len(), group.rank(), group.size());
        let losses = if mine.is_empty() {
            Relay::idle(group.as_ref(), self.exchanges);
            Vec::new()
        } else {
            let x = self.normalize(x);
            self.run_shards(x, &shards[mine.clone()], dloss, Some(group.clone()))
        };
        self.reduce_grads(mine.len(), group.as_ref());
        Ok(gather_f64(group.as_ref(), &losses).iter().sum())
    }

    /// Sums the gradients of the `local` shards of every rank (left in the network's layers
    /// and its replicas) in shard order, into the network's gradients on every rank. Each rank
    /// sums one slice of the parameters, from every shard's values of that slice (sent by the
    /// ranks that computed them), then every rank gathers every slice: a ring all-reduce's
    /// traffic, in a fixed order of addition.
    fn reduce_grads(&mut self, local: usize, group: &dyn Group) {
        let (p, size, rank) = (self.param_count, group.size(), group.rank());
        let bound = |q: usize| q * p / size;
        // Each shard's gradients, flat in state_dict order, as byte parts for each rank.
        let mut parts: Vec<Vec<u8>> = (0..size)
            .map(|q| Vec::with_capacity(4 * local * (bound(q + 1) - bound(q))))
            .collect();
        for layers in std::iter::once(&self.layers)
            .chain(&self.replicas)
            .take(local)
        {
            let (mut at, mut q) = (0, 0);
            for (_, param) in layers.params() {
                let mut g = param.grad.data();
                while !g.is_empty() {
                    while at >= bound(q + 1) {
                        q += 1;
                    }
                    let take = g.len().min(bound(q + 1) - at);
                    put_f32(&mut parts[q], &g[..take]);
                    (g, at) = (&g[take..], at + take);
                }
            }
        }
        // This rank's slice: every shard's values, in shard order, summed in that order.
        let len = bound(rank + 1) - bound(rank);
        let mut slice: Option<Vec<f32>> = None;
        for values in group
            .all_to_all(parts)
            .iter()
            .flat_map(|r| r.chunks(4 * len.max(1)))
        {
            let values = values
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            match &mut slice {
                None => slice = Some(values.collect()),
                Some(s) => s.iter_mut().zip(values).for_each(|(a, b)| *a += b),
            }
        }
        let slice = slice.unwrap_or_else(|| vec![0.0; len]);
        let all = group.all_gather(&f32_bytes(&slice)).concat(); // (P) as bytes
        let mut values = all
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        for (_, param) in self.layers.params_mut() {
            param
                .grad
                .data_mut()
                .iter_mut()
                .zip(&mut values)
                .for_each(|(g, v)| *g = v);
        }
    }
}

/// Counts a shard thread as finished when it ends, also by a panic.
struct Finished<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// One row of [`Network::summary`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SummaryRow {
    /// The module path: "3" or "conv1" for a top-level layer, "layer1.0.conv1" inside
    /// blocks, "3.body.1" or "3.shortcut.0" inside a residual block.
    pub index: String,
    pub kind: &'static str,
    pub output_shape: Vec<usize>,
    /// Trained scalars.
    pub params: usize,
    /// Saved, untrained scalars (running statistics, counters).
    pub buffers: usize,
    /// How deep in the module tree: 0 for a top-level node.
    pub depth: usize,
}

impl<T: Float> Network<T> {
    /// Builds the network with parameters drawn by `init` from `seed`.
    pub fn new(spec: ModelSpec, init: Init, seed: u64) -> Self {
        Self::with_options(
            spec,
            BuildOptions {
                init,
                seed,
                ..Default::default()
            },
        )
    }

    /// Builds the network as `options` say.
    pub fn with_options(spec: ModelSpec, options: BuildOptions) -> Self {
        let layers = build_layers(&spec, options);
        let param_count = layers.params().iter().map(|(_, p)| p.value.len()).sum();
        let output_len = spec.output_len();
        let exchanges = layers.exchanges();
        let norm = (!spec.mean.is_empty()).then(|| {
            let t = |v: f32| T::from(v).unwrap_or_else(T::zero);
            (
                spec.mean.iter().map(|&m| t(m)).collect(),
                spec.std.iter().map(|&s| t(1.0 / s)).collect(),
            )
        });
        Network {
            norm,
            spec,
            options,
            layers,
            replicas: Vec::new(),
            synced: 0,
            param_count,
            output_len,
            exchanges,
            key: 0,
            shards: Vec::new(),
        }
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Length of one sample's output vector.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Sets the random key of the following training passes: dropout's masks are a function
    /// of it and of each sample's row in the batch alone.
    pub fn set_key(&mut self, key: u64) {
        self.key = key;
    }

    /// Row ranges of the shards of a batch of `n` samples in a pass of its own: a training
    /// forward of a network whose layers need the whole batch runs it as one part (a training
    /// step, [`Network::forward_backward`], shards it and exchanges between the shards). In
    /// inference mode no layer needs other samples, so every network shards as one without
    /// BatchNorm does: side by side on the threads, each shard's layers working in cache
    /// (ResNet-20, 1,024 images in batches of 128, AVX-512 Xeon, 3 alternating runs: 4 shards
    /// of 32 325–348 ms, 2 of 64 333–350 ms, one part of 128 as in training 395–405 ms).
    fn shards_for(&self, n: usize, pass: &Pass) -> Vec<(usize, usize)> {
        if pass.train && self.exchanges > 0 {
            return vec![(0, n)];
        }
        shard_bounds(n, self.param_count, std::mem::size_of::<T>(), false)
    }

    /// How many times a training step exchanges per-sample values between the shards of the
    /// batch (twice per BatchNorm layer); 0 when no layer needs the whole batch.
    pub fn exchanges(&self) -> usize {
        self.exchanges
    }

    /// Row ranges of the shards of a training batch of `n` samples: a function of `n` and the
    /// network alone, the unit in which gradients are summed in order (and which ranks of a
    /// group hold whole).
    pub fn train_shards(&self, n: usize) -> Vec<(usize, usize)> {
        shard_bounds(
            n,
            self.param_count,
            std::mem::size_of::<T>(),
            self.exchanges > 0,
        )
    }

    /// The rows of a training batch of `n` samples that rank `rank` of `size` computes: its
    /// consecutive shards ([`crate::dist::rank_items`]); empty when it holds none.
    pub fn rank_rows(&self, n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
        let shards = self.train_shards(n);
        let mine = crate::dist::rank_items(shards.len(), rank, size);
        if mine.is_empty() {
            return 0..0;
        }
        shards[mine.start].0..shards[mine.end - 1].1
    }

    /// Runs the batch `x` (N, C, H, W) through every layer. With `train`, layers run in
    /// training mode and cache what [`Network::backward`] needs.
    pub fn forward(&mut self, x: Tensor<T>, train: bool) -> Result<Tensor<T>> {
        let pass = if train {
            Pass::train(self.key)
        } else {
            Pass::INFER
        };
        self.forward_pass(x, pass)
    }

    /// [`Network::forward`] in the mode `pass` gives (`Pass::FROZEN`: inference mode with
    /// caches for backward); `pass.first_row` is ignored.
    pub fn forward_pass(&mut self, x: Tensor<T>, pass: Pass) -> Result<Tensor<T>> {
        if !pass.grad {
            return self.infer_rows(&x, 0..x.shape().first().copied().unwrap_or(0));
        }
        self.check_input(&x)?;
        let x = self.normalize(x);
        let shards = self.shards_for(x.shape()[0], &pass);
        self.shards = shards.clone();
        if pass.train {
            self.synced = 0; // running statistics may change: the replicas copy them afresh
        }
        // Inference's spent outputs are of no use to training: freed, their memory holds
        // the training step's buffers.
        for layers in std::iter::once(&self.layers).chain(&self.replicas) {
            layers.recycled.lock().clear();
        }
        if shards.len() == 1 {
            // On one thread of the pool (a no-op when already there): every layer's parallel
            // sections then share their work with the other workers directly, instead of
            // this thread handing each one over and sleeping until it is done.
            let layers = &mut self.layers;
            return Ok(rayon::scope(move |_| layers.forward(x, &pass)));
        }
        self.sync_replicas(shards.len() - 1);
        let parts: Vec<Tensor<T>> = shards.iter().map(|&(a, b)| x.slice_rows(a, b)).collect();
        let outs: Vec<Tensor<T>> = self
            .shard_layers(shards.len())
            .into_par_iter()
            .zip(parts)
            .zip(shards)
            .map(|((layers, x), (a, _))| {
                let p = Pass {
                    first_row: a,
                    ..pass
                };
                layers.forward(x, &p)
            })
            .collect();
        Ok(Tensor::concat_rows(outs))
    }

    /// Inference (no caches) on the samples `rows` of the batch x (N, C, H, W), read in place:
    /// `forward(x.slice_rows(a, b), false)` without the copy of the rows, or of each shard.
    pub fn infer_rows(&mut self, x: &Tensor<T>, rows: std::ops::Range<usize>) -> Result<Tensor<T>> {
        self.check_input(x)?;
        let n = x.shape()[0];
        if rows.start > rows.end || rows.end > n {
            return Err(Error::Invalid(format!(
                "rows {}..{} of a batch of {n} samples",
                rows.start, rows.end
            )));
        }
        if self.norm.is_some() {
            // The rows normalised, in a copy of their own.
            let x = self.normalize(x.slice_rows(rows.start, rows.end));
            return self.infer_normalized(&x, 0..rows.len());
        }
        self.infer_normalized(x, rows)
    }

    /// [`Network::infer_rows`] of input already normalised.
    fn infer_normalized(
        &mut self,
        x: &Tensor<T>,
        rows: std::ops::Range<usize>,
    ) -> Result<Tensor<T>> {
        self.shards.clear();
        // Inference needs none of what training keeps for its next step; freed, that memory
        // holds the inference passes' buffers (peak RSS of a 3-epoch ResNet-20 run on 6,000
        // Fashion images, evaluated each epoch: 255 → 240 MB).
        self.layers.release();
        let sample: usize = x.shape()[1..].iter().product();
        let shape_of = |len: usize| {
            let mut s = x.shape().to_vec();
            s[0] = len;
            s
        };
        let data = &x.data()[rows.start * sample..rows.end * sample];
        let shards = self.shards_for(rows.len(), &Pass::INFER);
        if shards.len() == 1 {
            // On one thread of the pool, as in `forward`.
            let layers = &mut self.layers;
            let shape = shape_of(rows.len());
            return Ok(rayon::scope(move |_| layers.infer(data, &shape)));
        }
        self.sync_replicas(shards.len() - 1);
        let outs: Vec<Tensor<T>> = self
            .shard_layers(shards.len())
            .into_par_iter()
            .zip(shards)
            .map(|(layers, (a, b))| layers.infer(&data[a * sample..b * sample], &shape_of(b - a)))
            .collect();
        Ok(Tensor::concat_rows(outs))
    }

    /// Inference of the batch x (N, C, H, W) that keeps every built layer's and join's
    /// output, in order: (the module path of the step it was built from, its output). Built
    /// without fusion (`BuildOptions { fuse: false, .. }`) that is every step's output, the
    /// h¹ … hᴸ of the lecture; a fused layer's entry is the output of all the layers it merged.
    pub fn infer_layers(&mut self, x: &Tensor<T>) -> Result<Vec<(String, Tensor<T>)>> {
        self.check_input(x)?;
        self.shards.clear();
        let h = self.normalize(x.clone());
        Ok(self.layers.infer_each(h))
    }

    /// A training step's forward and backward passes in one: each shard runs forward, gets
    /// dL/d(output) of its rows from `dloss(rows, output rows)` (with the rows' share of the
    /// loss), and back-propagates it, all in one parallel section: the threads meet once per
    /// step, not at the loss too. Gradients are added into the parameters' as by
    /// [`Network::backward`]. Returns the sum of the shares.
    pub fn forward_backward(&mut self, x: Tensor<T>, dloss: &LossGrad<T>) -> Result<f64> {
        self.check_input(&x)?;
        let x = self.normalize(x);
        let shards = self.train_shards(x.shape()[0]);
        let losses = self.run_shards(x, &shards, dloss, None);
        self.add_replica_grads(shards.len() - 1);
        Ok(losses.iter().sum())
    }

    /// The forward and backward passes of the consecutive `shards` of a training batch (row
    /// ranges in the batch; x holds their rows), each in its own copy of the layers (the
    /// network's own first), whose gradients it leaves there. Returns each shard's share of
    /// the loss. The layers that need the whole batch exchange values between the shards,
    /// and with the other ranks of `group` when the shards are one rank's part of the batch.
    fn run_shards(
        &mut self,
        x: Tensor<T>,
        shards: &[(usize, usize)],
        dloss: &LossGrad<T>,
        group: Option<Arc<dyn Group>>,
    ) -> Vec<f64> {
        let pass = Pass::train(self.key);
        let base = shards[0].0;
        self.shards.clear();
        self.synced = 0; // running statistics may change: the replicas copy them afresh
        let step = |i: usize, layers: &mut Dag<T>, x: Tensor<T>, rows: (usize, usize), p: Pass| {
            if i > 0 {
                zero_grads(layers);
            }
            let p = Pass {
                first_row: rows.0,
                ..p
            };
            let out = layers.forward(x, &p);
            let (dy, l) = dloss(rows.0..rows.1, &out);
            layers.backward(dy, false);
            l
        };
        let k = shards.len();
        if k == 1 && group.is_none() {
            let layers = &mut self.layers;
            return vec![rayon::scope(move |_| step(0, layers, x, shards[0], pass))];
        }
        self.sync_replicas(k - 1);
        let parts: Vec<Tensor<T>> = shards
            .iter()
            .map(|&(a, b)| x.slice_rows(a - base, b - base))
            .collect();
        let exchanges = self.exchanges;
        let layers = self.shard_layers(k);
        if exchanges == 0 {
            return layers
                .into_par_iter()
                .enumerate()
                .zip(parts)
                .zip(shards)
                .map(|(((i, layers), x), &rows)| step(i, layers, x, rows, pass))
                .collect();
        }
        // Each shard on a thread of its own, in turns: a shard waits inside its BatchNorm
        // layers for the others' statistics, which the pool's workers must not do. Their
        // kernels run on the global pool; called on one of its workers, this thread keeps
        // running the pool's jobs until the shards are done (with one worker they would
        // otherwise wait for it forever).
        let turns = Relay::new(k, group);
        let relay: Arc<dyn Exchange> = turns.clone();
        let (relay, turns) = (&relay, &turns);
        let finished = &std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let running: Vec<_> = layers
                .into_iter()
                .enumerate()
                .zip(parts)
                .zip(shards)
                .map(|(((i, layers), x), &rows)| {
                    let step = &step;
                    scope.spawn(move || {
                        let sync = ShardSync {
                            shard: i,
                            exchange: relay,
                        };
                        let p = Pass {
                            sync: Some(sync),
                            ..pass
                        };
                        let _done = Finished(finished);
                        turns.run(i, || step(i, layers, x, rows, p))
                    })
                })
                .collect();
            while rayon::current_thread_index().is_some()
                && finished.load(std::sync::atomic::Ordering::Acquire) < k
            {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            }
            running
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    /// Adds the gradients of the first `k` replicas into the network's, in replica order.
    fn add_replica_grads(&mut self, k: usize) {
        for replica in &self.replicas[..k] {
            for ((_, dst), (_, src)) in self.layers.params_mut().into_iter().zip(replica.params()) {
                dst.grad
                    .data_mut()
                    .iter_mut()
                    .zip(src.grad.data())
                    .for_each(|(a, &b)| *a += b);
            }
        }
    }

    /// x (N, C, H, W) normalised in place by the spec's `mean` and `std`, if it has them.
    fn normalize(&self, mut x: Tensor<T>) -> Tensor<T> {
        if let Some((mean, inv_std)) = &self.norm {
            let plane: usize = self.spec.input[1] * self.spec.input[2];
            for (i, p) in x.data_mut().chunks_exact_mut(plane).enumerate() {
                let c = i % mean.len();
                p.iter_mut().for_each(|v| *v = (*v - mean[c]) * inv_std[c]);
            }
        }
        x
    }

    /// An error unless x is (N, C, H, W) with the spec's sample shape.
    fn check_input(&self, x: &Tensor<T>) -> Result<()> {
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
        Ok(())
    }

    /// Back-propagates dL/d(output) through the cached forward pass, adding into every
    /// parameter's gradient. The input gradient is not needed, so layer 0 skips it.
    pub fn backward(&mut self, dy: Tensor<T>) {
        self.backward_shards(dy, false);
    }

    /// Like [`Network::backward`] but also returns dL/d(input) (for gradient checks).
    pub fn backward_with_input_grad(&mut self, dy: Tensor<T>) -> Tensor<T> {
        let mut dx = self
            .backward_shards(dy, true)
            .expect("every layer returns dx when asked");
        // Through the normalisation: d(x − m)/s / dx = 1/s.
        if let Some((_, inv_std)) = &self.norm {
            let plane: usize = self.spec.input[1] * self.spec.input[2];
            for (i, p) in dx.data_mut().chunks_exact_mut(plane).enumerate() {
                let k = inv_std[i % inv_std.len()];
                p.iter_mut().for_each(|v| *v *= k);
            }
        }
        dx
    }

    /// Each shard's backward through its own layers (a replica's gradients are zeroed first),
    /// then the replicas' gradients added into the network's in shard order.
    fn backward_shards(&mut self, dy: Tensor<T>, need_input_grad: bool) -> Option<Tensor<T>> {
        let shards = std::mem::take(&mut self.shards);
        if shards.len() <= 1 {
            return self.layers.backward(dy, need_input_grad);
        }
        let parts: Vec<Tensor<T>> = shards.iter().map(|&(a, b)| dy.slice_rows(a, b)).collect();
        let dxs: Vec<Option<Tensor<T>>> = self
            .shard_layers(shards.len())
            .into_par_iter()
            .enumerate()
            .zip(parts)
            .map(|((i, layers), d)| {
                if i > 0 {
                    zero_grads(layers);
                }
                layers.backward(d, need_input_grad)
            })
            .collect();
        self.add_replica_grads(shards.len() - 1);
        need_input_grad.then(|| Tensor::concat_rows(dxs.into_iter().flatten().collect()))
    }

    /// The layers of the first `k` shards: the network's own, then replicas.
    fn shard_layers(&mut self, k: usize) -> Vec<&mut Dag<T>> {
        std::iter::once(&mut self.layers)
            .chain(self.replicas.iter_mut())
            .take(k)
            .collect()
    }

    /// Makes the first `k` replicas exist and hold the network's current parameter and
    /// buffer values.
    fn sync_replicas(&mut self, k: usize) {
        while self.replicas.len() < k {
            self.replicas.push(build_layers(&self.spec, self.options));
        }
        for replica in &mut self.replicas[self.synced.min(k)..k] {
            for ((_, dst), (_, src)) in replica.params_mut().into_iter().zip(self.layers.params()) {
                dst.value.data_mut().copy_from_slice(src.value.data());
            }
            for ((_, dst), (_, src)) in replica.buffers_mut().into_iter().zip(self.layers.buffers())
            {
                dst.clone_from(src);
            }
        }
        self.synced = self.synced.max(k);
    }

    /// Calls `f(name, param)` for every parameter in state_dict order.
    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Param<T>)) {
        for (name, p) in self.layers.params() {
            f(name, p);
        }
    }

    /// Mutable variant of [`Network::visit_params`].
    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Param<T>)) {
        self.synced = 0; // the values may change: the replicas copy them afresh
        for (name, p) in self.layers.params_mut() {
            f(name, p);
        }
    }

    /// Every parameter in state_dict order, for an optimizer step.
    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        self.synced = 0; // the values may change: the replicas copy them afresh
        self.layers
            .params_mut()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// Calls `f(name, buffer)` for every buffer in state_dict order.
    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Buffer<T>)) {
        for (name, b) in self.layers.buffers() {
            f(name, b);
        }
    }

    /// Mutable variant of [`Network::visit_buffers`].
    pub fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Buffer<T>)) {
        self.synced = 0;
        for (name, b) in self.layers.buffers_mut() {
            f(name, b);
        }
    }

    /// Sets every parameter gradient to zero.
    pub fn zero_grad(&mut self) {
        zero_grads(&mut self.layers);
    }

    /// Total number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.param_count
    }

    /// (name, value) of every parameter, cloned.
    pub fn named_params(&self) -> Vec<(String, Tensor<T>)> {
        let mut out = Vec::new();
        self.visit_params(&mut |name, p| out.push((name, p.value.clone())));
        out
    }

    /// The name of every parameter, in state_dict order (the optimizer state's order).
    pub fn param_names(&self) -> Vec<String> {
        self.layers.params().into_iter().map(|(n, _)| n).collect()
    }

    /// (name, value) of every buffer, cloned.
    pub fn named_buffers(&self) -> Vec<(String, Buffer<T>)> {
        let mut out = Vec::new();
        self.visit_buffers(&mut |name, b| out.push((name, b.clone())));
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

    /// Replaces buffer values by name; every buffer must be given, of its kind and shape.
    pub fn set_buffers(
        &mut self,
        mut values: std::collections::HashMap<String, Buffer<T>>,
    ) -> Result<()> {
        let mut err = None;
        self.visit_buffers_mut(&mut |name, b| {
            if err.is_some() {
                return;
            }
            match (values.remove(&name), &*b) {
                (Some(Buffer::Float(v)), Buffer::Float(t)) if v.shape() == t.shape() => {
                    *b = Buffer::Float(v)
                }
                (Some(v @ Buffer::Count(_)), Buffer::Count(_)) => *b = v,
                (Some(_), _) => {
                    err = Some(Error::invalid(format!(
                        "buffer `{name}` has another kind or shape than the model's"
                    )))
                }
                (None, _) => err = Some(Error::invalid(format!("buffer `{name}` is missing"))),
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if let Some(extra) = values.keys().next() {
            return Err(Error::invalid(format!("unexpected buffer `{extra}`")));
        }
        Ok(())
    }

    /// The same network in another float type (parameters and buffers converted, caches
    /// dropped).
    pub fn cast<U: Float>(&self) -> Network<U> {
        let mut net = Network::<U>::with_options(self.spec.clone(), self.options);
        let values = self
            .named_params()
            .into_iter()
            .map(|(k, v)| (k, v.cast::<U>()))
            .collect();
        net.set_params(values).expect("same spec, same parameters");
        let buffers = self
            .named_buffers()
            .into_iter()
            .map(|(k, b)| {
                let b = match b {
                    Buffer::Float(t) => Buffer::Float(t.cast::<U>()),
                    Buffer::Count(c) => Buffer::Count(c),
                };
                (k, b)
            })
            .collect();
        net.set_buffers(buffers).expect("same spec, same buffers");
        net.key = self.key;
        net
    }

    /// One row per node of the module tree (a block's row before its nodes, a residual
    /// block's body and shortcut after it) with its module path, output shape, parameter and
    /// buffer counts, like Keras' `model.summary()`.
    pub fn summary(&self) -> Vec<SummaryRow> {
        let graph = self.spec.graph().expect("a shape-checked spec");
        let mut steps = graph.steps.iter();
        let mut rows = Vec::new();
        summary_nodes(&self.spec.layers, 0, &mut steps, &mut rows);
        rows
    }
}

/// Summary rows of `nodes` at `depth`, taking their steps from `steps` in order (the graph's
/// steps are the node tree's leaves in file order).
fn summary_nodes<'a>(
    nodes: &[Node],
    depth: usize,
    steps: &mut impl Iterator<Item = &'a super::graph::Step>,
    rows: &mut Vec<SummaryRow>,
) {
    for node in nodes {
        match &node.op {
            Op::Block(children) => {
                let at = rows.len();
                rows.push(SummaryRow {
                    index: String::new(),
                    kind: super::graph::BLOCK,
                    output_shape: Vec::new(),
                    params: 0,
                    buffers: 0,
                    depth,
                });
                summary_nodes(children, depth + 1, steps, rows);
                let inner = &rows[at + 1..];
                let (params, buffers) = inner
                    .iter()
                    .filter(|r| r.depth == depth + 1)
                    .fold((0, 0), |(p, b), r| (p + r.params, b + r.buffers));
                let last = inner
                    .iter()
                    .rev()
                    .find(|r| r.depth == depth + 1)
                    .map(|r| (r.index.clone(), r.output_shape.clone()));
                let (path, shape) = last.unwrap_or_default();
                let own = path.rsplit_once('.').map_or("", |(p, _)| p).to_string();
                rows[at] = SummaryRow {
                    index: own,
                    output_shape: shape,
                    params,
                    buffers,
                    ..rows[at].clone()
                };
            }
            Op::Layer(_) | Op::Join(_) => {
                let step = steps.next().expect("a step per leaf");
                let input = step.input_shapes.first().cloned().unwrap_or_default();
                let (params, buffers) = match &step.op {
                    StepOp::Layer(l) => (l.param_count(&input), l.buffer_count(&input)),
                    StepOp::Join(_) => (0, 0),
                };
                rows.push(SummaryRow {
                    index: step.path.clone(),
                    kind: step.op.type_name(),
                    output_shape: step.output_shape.clone(),
                    params,
                    buffers,
                    depth,
                });
                if let StepOp::Layer(l) = &step.op {
                    container_rows(l, &step.path, &input, depth + 1, rows);
                }
            }
        }
    }
}

/// Rows of the sequences nested in a container layer (a residual block's body and shortcut).
fn container_rows(
    l: &LayerSpec,
    path: &str,
    input: &[usize],
    depth: usize,
    rows: &mut Vec<SummaryRow>,
) {
    for (what, seq) in l.children() {
        let mut s = input.to_vec();
        for (j, c) in seq.iter().enumerate() {
            let index = format!("{path}.{what}.{j}");
            let out = c.output_shape(&s).expect("shape-checked spec");
            rows.push(SummaryRow {
                index: index.clone(),
                kind: c.type_name(),
                output_shape: out.clone(),
                params: c.param_count(&s),
                buffers: c.buffer_count(&s),
                depth,
            });
            container_rows(c, &index, &s, depth + 1, rows);
            s = out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "[[layers]]\ntype = \"conv2d\"\nout_channels = 3\nkernel = 3\n\
                        [[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 4\n";
    const MEAN: [f64; 2] = [0.5, 0.25];
    const STD: [f64; 2] = [0.2, 2.0];

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} against {y}");
        }
    }

    #[test]
    fn input_normalisation_is_the_plain_network_on_normalised_pixels() {
        let plain = ModelSpec::parse(&format!("input = [2, 5, 5]\n{BODY}"), "plain").unwrap();
        let normed = ModelSpec::parse(
            &format!("input = [2, 5, 5]\nmean = [0.5, 0.25]\nstd = [0.2, 2.0]\n{BODY}"),
            "normed",
        )
        .unwrap();
        let mut a = Network::<f64>::new(plain, Init::Pytorch, 3);
        let mut b = Network::<f64>::new(normed, Init::Pytorch, 3);
        let raw: Vec<f64> = (0..150).map(|i| ((i * 37) % 101) as f64 / 100.0).collect();
        let pre: Vec<f64> = raw
            .iter()
            .enumerate()
            .map(|(i, &v)| (v - MEAN[(i / 25) % 2]) / STD[(i / 25) % 2])
            .collect();
        let x = Tensor::from_vec(&[3, 2, 5, 5], raw).unwrap();
        let xn = Tensor::from_vec(&[3, 2, 5, 5], pre).unwrap();
        // Inference, whole batch and some rows.
        let (ya, yb) = (
            a.forward(xn.clone(), false).unwrap(),
            b.forward(x.clone(), false).unwrap(),
        );
        close(yb.data(), ya.data());
        close(
            b.infer_rows(&x, 1..3).unwrap().data(),
            a.infer_rows(&xn, 1..3).unwrap().data(),
        );
        let layers = b.infer_layers(&x).unwrap();
        close(layers.last().unwrap().1.data(), ya.data());
        // Training: the same parameter gradients; the input gradient through 1/std.
        let dy = Tensor::from_vec(&[3, 4], (0..12).map(|i| i as f64 - 5.0).collect()).unwrap();
        a.forward(xn, true).unwrap();
        b.forward(x, true).unwrap();
        let dxa = a.backward_with_input_grad(dy.clone());
        let dxb = b.backward_with_input_grad(dy);
        let want: Vec<f64> = dxa
            .data()
            .iter()
            .enumerate()
            .map(|(i, &g)| g / STD[(i / 25) % 2])
            .collect();
        close(dxb.data(), &want);
        for ((_, pa), (_, pb)) in a.layers.params().into_iter().zip(b.layers.params()) {
            close(pb.grad.data(), pa.grad.data());
        }
    }
}

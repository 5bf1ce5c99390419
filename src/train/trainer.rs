//! The training loop: epochs of shuffled, augmented mini-batches, evaluation, and an atomic
//! checkpoint per epoch from which --resume continues bit-exactly.
use super::eval::{evaluate, Evaluation};
use super::options::TrainOptions;
use crate::data::{DataSplit, Dataset};
use crate::dist::{agree, agree_on, Group, Status};
use crate::error::{Error, Result};
use crate::io::{remove_stale_temps, write_atomic_to, Disk, Storage};
use crate::loss::{loss_part, LossKind};
use crate::nn::weights::{read_state, write_state_to};
use crate::nn::Network;
use crate::optim::Optimizer;
use crate::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A network, its optimizer and its loss: one gradient step at a time.
pub struct Trainer {
    pub net: Network<f32>,
    pub opt: Optimizer<f32>,
    pub loss: LossKind,
    /// The run's seed: with the optimizer's step count it keys each step's random draws
    /// (dropout), so a resumed run draws what the uninterrupted one would have.
    pub seed: u64,
    /// The ranks this run is spread over ([`crate::dist`]), or None for this process alone.
    /// Every rank takes its shards of each batch and applies the same update; rank 0 writes.
    pub group: Option<Arc<dyn Group>>,
}

/// The random key of step `step` of a run seeded `seed`.
fn step_key(seed: u64, step: u64) -> u64 {
    seed.rotate_left(32) ^ step
}

impl Trainer {
    pub fn new(net: Network<f32>, opt: Optimizer<f32>, loss: LossKind) -> Self {
        Trainer {
            net,
            opt,
            loss,
            seed: 0,
            group: None,
        }
    }

    /// Forward, loss, backward and one optimizer update on the batch x (B, C, H, W).
    /// Returns the batch's mean loss; a non-finite loss leaves the weights untouched.
    pub fn step(&mut self, x: Tensor<f32>, labels: &[usize], lr: f64) -> Result<f64> {
        if self.net.exchanges() > 0 || self.group.as_ref().is_some_and(|g| g.shares_pool()) {
            // Shards that exchange statistics wait for each other on threads of their own,
            // and ranks that are threads wait for each other: a worker of the pool must not
            // be the one waiting.
            return self.step_here(x, labels, lr);
        }
        // The whole step on one thread of the pool: every parallel section inside then shares
        // its work with the other workers directly, instead of this thread handing each one
        // over and sleeping until it is done.
        rayon::scope(|_| self.step_here(x, labels, lr))
    }

    /// [`Trainer::step`] on the calling thread: forward, loss gradient and backward in one
    /// parallel pass over the network's shards, then the update. With a group, x holds this
    /// rank's rows of the batch ([`Network::rank_rows`]) and `labels` the whole batch's.
    fn step_here(&mut self, x: Tensor<f32>, labels: &[usize], lr: f64) -> Result<f64> {
        let (kind, k, batch) = (self.loss, self.net.output_len(), labels.len());
        self.net.zero_grad();
        let dloss = |rows: std::ops::Range<usize>, out: &Tensor<f32>| {
            let mut grad = Tensor::zeros(out.shape()); // (rows, K)
            let l = loss_part(
                kind,
                out.data(),
                &labels[rows],
                k,
                Some(grad.data_mut()),
                batch,
            );
            (grad, l)
        };
        self.net.set_key(step_key(self.seed, self.opt.steps));
        let l = match &self.group {
            Some(g) => self.net.forward_backward_ranked(x, batch, &dloss, g)?,
            None => self.net.forward_backward(x, &dloss)?,
        };
        if l.is_finite() {
            self.opt.step(self.net.params_mut(), lr);
        }
        Ok(l)
    }

    /// The rows of a batch of `n` samples that this process computes: all of them, or its
    /// rank's part.
    pub fn own_rows(&self, n: usize) -> std::ops::Range<usize> {
        match &self.group {
            Some(g) => self.net.rank_rows(n, g.rank(), g.size()),
            None => 0..n,
        }
    }

    /// Whether this process writes the run's files and reports progress: rank 0, or alone.
    pub fn leads(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.rank() == 0)
    }
}

/// One finished epoch, as written to metrics.csv.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    pub test: Option<Evaluation>,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Receives progress; the command line draws bars from it, the library prints nothing.
pub trait Observer {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    fn batch(&mut self, _done: usize, _running_loss: f64, _images_per_second: f64) {}
    fn epoch_end(&mut self, _m: &EpochMetrics) {}
    /// After an epoch's files are in `paths`, with every epoch's metrics so far: what the
    /// observer writes beside them (the CLI's training curves); an error stops the run.
    fn epoch_saved(&mut self, _history: &[EpochMetrics], _paths: &RunPaths) -> Result<()> {
        Ok(())
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// The files of a run directory, and where they are written.
pub struct RunPaths {
    pub dir: PathBuf,
    /// The disk, or in tests a store that fails on cue.
    pub store: Arc<dyn Storage>,
}

impl RunPaths {
    /// The run in `dir`, written to disk.
    pub fn new(dir: impl Into<PathBuf>) -> RunPaths {
        RunPaths {
            dir: dir.into(),
            store: Arc::new(Disk),
        }
    }

    pub fn model(&self) -> PathBuf {
        self.dir.join("model.toml")
    }
    pub fn weights(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
    pub fn curves(&self) -> PathBuf {
        self.dir.join("curves.png")
    }
    /// Every file a run writes (for --force to clear an old run).
    pub fn all(&self) -> Vec<PathBuf> {
        vec![
            self.model(),
            self.weights(),
            self.checkpoint(),
            self.metrics(),
            self.curves(),
            self.dir.join("confusion.png"),
        ]
    }
}

/// Where a run starts: fresh, or after `epochs_done` epochs of an earlier run.
pub struct Start {
    pub trainer: Trainer,
    pub epochs_done: usize,
    pub history: Vec<EpochMetrics>,
}

/// Shifts each image (C, H, W) by a random (dy, dx) in [−a, a]², filling with zeros
/// (the lecture's shift invariance, as augmentation).
/// With `hflip`, each image is then mirrored left–right with probability 1/2 (torchvision's
/// RandomHorizontalFlip); the draws go image by image, shift first, from one stream.
/// x holds the images `rows` of a batch of `n`: the draws of every image are taken, those of
/// the rows applied, so each process of a run applies what one process alone would.
fn augment(
    x: &mut [f32],
    rows: std::ops::Range<usize>,
    n: usize,
    shape: [usize; 3],
    (a, hflip): (usize, bool),
    rng: &mut ChaCha8Rng,
) {
    let [c, h, w] = shape;
    let a = a as isize;
    let mut tmp = vec![0.0f32; h * w]; // (H, W)
    for i in 0..n {
        let (dy, dx) = if a > 0 {
            (rng.gen_range(-a..=a), rng.gen_range(-a..=a))
        } else {
            (0, 0)
        };
        let flip = hflip && rng.gen::<bool>();
        if !rows.contains(&i) {
            continue;
        }
        let img = &mut x[(i - rows.start) * c * h * w..][..c * h * w];
        if dy != 0 || dx != 0 {
            img.chunks_exact_mut(h * w)
                .for_each(|plane| shift(plane, h, w, dy, dx, &mut tmp));
        }
        if flip {
            img.chunks_exact_mut(w).for_each(|row| row.reverse());
        }
    }
}

/// plane[r, c] ← plane[r − dy, c − dx], zero where that falls outside.
fn shift(plane: &mut [f32], h: usize, w: usize, dy: isize, dx: isize, tmp: &mut [f32]) {
    tmp.fill(0.0);
    for r in 0..h as isize {
        let sr = r - dy;
        if sr < 0 || sr >= h as isize {
            continue;
        }
        for col in 0..w as isize {
            let sc = col - dx;
            if sc >= 0 && sc < w as isize {
                tmp[(r * w as isize + col) as usize] = plane[(sr * w as isize + sc) as usize];
            }
        }
    }
    plane.copy_from_slice(tmp);
}

/// The random stream of one epoch: a function of (seed, epoch) only, so a resumed run
/// draws exactly what the uninterrupted run would have drawn.
fn epoch_rng(seed: u64, epoch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    rng
}

/// Batches the loader thread may have ready ahead of the one training: enough to hide the
/// decoding of one batch behind the step before it.
const PREFETCH: usize = 2;

/// Mean loss over a training epoch, or the error that stopped it.
fn run_epoch(
    t: &mut Trainer,
    data: &Dataset,
    opts: &TrainOptions,
    epoch: usize,
    stop: Option<&AtomicBool>,
    obs: &mut dyn Observer,
) -> Result<(f64, f64)> {
    let mut rng = epoch_rng(opts.seed, epoch);
    let mut order: Vec<usize> = (0..data.len()).collect();
    if opts.shuffle {
        order.shuffle(&mut rng);
    }
    let [c, h, w] = data.sample_shape;
    let per = c * h * w;
    let lr = opts.schedule.lr(opts.lr, epoch, opts.epochs);
    let batches = data.len().div_ceil(opts.batch_size);
    obs.epoch_start(epoch + 1, opts.epochs, batches);
    let started = Instant::now();
    let (mut sum, mut seen) = (0.0, 0usize);
    // This process's rows of each batch: all of them, or its rank's shards.
    let rows: Vec<std::ops::Range<usize>> = order
        .chunks(opts.batch_size)
        .map(|chunk| t.own_rows(chunk.len()))
        .collect();
    // A loader thread gathers the next batches (decoding image files when the set is read
    // from disk) while the network trains on this one; at most PREFETCH batches wait, so
    // memory stays bounded. Augmentation draws stay here, in batch order.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<f32>>>(PREFETCH);
        let (order, rows) = (&order, &rows);
        scope.spawn(move || {
            for (chunk, rows) in order.chunks(opts.batch_size).zip(rows) {
                let chunk = &chunk[rows.clone()];
                let mut x = vec![0.0f32; chunk.len() * per]; // (B, C, H, W): own rows
                let batch = data.gather(chunk, &mut x).map(|_| x);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break; // the epoch ended early, or this batch is its error
                }
            }
        });
        for (b, (chunk, own)) in order.chunks(opts.batch_size).zip(rows).enumerate() {
            let stopping = stop.is_some_and(|s| s.load(Ordering::SeqCst));
            let batch = rx
                .recv()
                .map_err(|_| Error::invalid("the batch loader stopped unexpectedly"))
                .and_then(|r| r);
            if let Some(g) = &t.group {
                // Every rank takes this step, or none: a failure or a stop is agreed first.
                let status = match (&batch, stopping) {
                    (Err(e), _) => Status::Failed(e.to_string()),
                    (Ok(_), true) => Status::Stop,
                    (Ok(_), false) => Status::Ready,
                };
                if !agree(g.as_ref(), status)? {
                    return Err(Error::Interrupted { epochs_done: epoch });
                }
            } else if stopping {
                return Err(Error::Interrupted { epochs_done: epoch });
            }
            let mut x = batch?;
            if opts.shift() > 0 || opts.hflip {
                let how = (opts.shift(), opts.hflip);
                augment(
                    &mut x,
                    own.clone(),
                    chunk.len(),
                    data.sample_shape,
                    how,
                    &mut rng,
                );
            }
            let labels: Vec<usize> = chunk.iter().map(|&i| data.labels[i] as usize).collect();
            let l = t.step(Tensor::from_vec(&[own.len(), c, h, w], x)?, &labels, lr)?;
            if !l.is_finite() {
                return Err(Error::NonFinite {
                    epoch: epoch + 1,
                    batch: b + 1,
                    value: l,
                });
            }
            sum += l * chunk.len() as f64;
            seen += chunk.len();
            obs.batch(
                b + 1,
                sum / seen as f64,
                seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
            );
        }
        Ok(())
    })?;
    Ok((
        sum / seen.max(1) as f64,
        seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
    ))
}

/// The checkpoint's metadata key holding the run's metrics (metrics.csv's text): the
/// checkpoint alone then says everything --resume needs, whichever later file a crash or a
/// failed write left behind.
const METRICS_KEY: &str = "metrics";

fn metrics_csv(history: &[EpochMetrics]) -> String {
    let mut s = String::from("epoch,train_loss,test_loss,test_accuracy,seconds\n");
    for m in history {
        let (tl, ta) = m.test.as_ref().map_or((String::new(), String::new()), |e| {
            (format!("{:.6}", e.loss), format!("{:.4}", e.accuracy))
        });
        s.push_str(&format!(
            "{},{:.6},{tl},{ta},{:.3}\n",
            m.epoch, m.train_loss, m.seconds
        ));
    }
    s
}

/// Reads a run's metrics.csv back (the epochs it has finished).
pub fn parse_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_metrics_text(&text, path)
}

/// [`parse_metrics`] of text read from `path`.
fn parse_metrics_text(text: &str, path: &Path) -> Result<Vec<EpochMetrics>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || {
            Error::format(
                path,
                format!(
                    "line {}: expected epoch,train_loss,test_loss,test_accuracy,seconds",
                    i + 1
                ),
            )
        };
        if f.len() != 5 {
            return Err(bad());
        }
        let num = |s: &str| s.parse::<f64>().map_err(|_| bad());
        let test = if f[2].is_empty() {
            None
        } else {
            Some(Evaluation {
                loss: num(f[2])?,
                accuracy: num(f[3])?,
                confusion: Vec::new(),
            })
        };
        out.push(EpochMetrics {
            epoch: f[0].parse().map_err(|_| bad())?,
            train_loss: num(f[1])?,
            test,
            seconds: num(f[4])?,
            images_per_second: 0.0,
        });
    }
    Ok(out)
}

/// Writes the model file, weights, optimizer state and metrics after `epochs_done` epochs
/// (the observer is told afterwards: the CLI draws the curves from the metrics). The
/// checkpoint (weights + optimizer state + epoch + metrics) is one file, so it is always
/// self-consistent; each file is replaced atomically, so a failed write or a crash leaves
/// the previous one whole; nothing is written before the first epoch completes. The model
/// file comes first: --resume reads it beside any checkpoint.
fn save_epoch(
    paths: &RunPaths,
    t: &Trainer,
    opts: &TrainOptions,
    epochs_done: usize,
    history: &[EpochMetrics],
) -> Result<()> {
    // The run's model file carries the resolved options, so --resume needs nothing else.
    let file = super::model_file::ModelFile {
        spec: t.net.spec().clone(),
        recipe: opts.to_recipe(),
    };
    let store = paths.store.as_ref();
    let toml = file.to_toml();
    write_atomic_to(store, &paths.model(), |w| w.write_all(toml.as_bytes()))?;
    let weights = t.net.state();
    let mut state = weights.clone();
    for (i, name) in t.net.param_names().iter().enumerate() {
        if let Some(s) = t.opt.state1.get(i) {
            state.floats.insert(format!("state1.{name}"), s.clone());
        }
        if let Some(s) = t.opt.state2.get(i) {
            state.floats.insert(format!("state2.{name}"), s.clone());
        }
    }
    let csv = metrics_csv(history);
    let meta = HashMap::from([
        ("epochs_done".to_string(), epochs_done.to_string()),
        ("steps".to_string(), t.opt.steps.to_string()),
        ("seed".to_string(), opts.seed.to_string()),
        ("shuffle".to_string(), opts.shuffle.to_string()),
        (METRICS_KEY.to_string(), csv.clone()),
    ]);
    write_state_to(store, &paths.checkpoint(), &state, Some(meta))?;
    write_state_to(store, &paths.weights(), &weights, None)?;
    write_atomic_to(store, &paths.metrics(), |w| w.write_all(csv.as_bytes()))
}

/// Trains from `start` to `opts.epochs`, saving into `paths` after every epoch.
pub fn train(
    mut start: Start,
    data: &DataSplit,
    opts: &TrainOptions,
    paths: &RunPaths,
    stop: Option<Arc<AtomicBool>>,
    obs: &mut dyn Observer,
) -> Result<Trainer> {
    let outputs = start.trainer.net.output_len();
    let input = start.trainer.net.spec().input;
    data.train.check_fits(input, outputs)?;
    if let Some(t) = &data.test {
        t.check_fits(input, outputs)?;
    }
    let t = &mut start.trainer;
    let leads = t.leads();
    if leads {
        std::fs::create_dir_all(&paths.dir).map_err(|e| Error::io(&paths.dir, e))?;
    }
    t.seed = opts.seed;
    for epoch in start.epochs_done..opts.epochs {
        let begun = Instant::now();
        let (train_loss, ips) = run_epoch(t, &data.train, opts, epoch, stop.as_deref(), obs)?;
        // Rank 0 evaluates and writes (every rank holds the same weights); the others wait
        // for its word, so a failure there stops every rank.
        let saved = if leads {
            end_epoch(
                t,
                data,
                opts,
                paths,
                (epoch, train_loss, ips),
                begun,
                &mut start.history,
            )
            .map(Some)
        } else {
            Ok(None)
        };
        let m = match &t.group {
            Some(g) => agree_on(g.as_ref(), saved)?,
            None => saved?,
        };
        if let Some(m) = m {
            obs.epoch_end(&m);
            obs.epoch_saved(&start.history, paths)?;
        }
    }
    Ok(start.trainer)
}

/// Evaluates on the test set, records the epoch's metrics and saves the run.
fn end_epoch(
    t: &mut Trainer,
    data: &DataSplit,
    opts: &TrainOptions,
    paths: &RunPaths,
    (epoch, train_loss, ips): (usize, f64, f64),
    begun: Instant,
    history: &mut Vec<EpochMetrics>,
) -> Result<EpochMetrics> {
    let test = data
        .test
        .as_ref()
        .map(|d| evaluate(&mut t.net, d, opts.loss))
        .transpose()?;
    let m = EpochMetrics {
        epoch: epoch + 1,
        train_loss,
        test,
        seconds: begun.elapsed().as_secs_f64(),
        images_per_second: ips,
    };
    history.push(m.clone());
    save_epoch(paths, t, opts, epoch + 1, history)?;
    Ok(m)
}

/// What a checkpoint records besides tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointMeta {
    pub epochs_done: usize,
    pub steps: u64,
    pub seed: u64,
    pub shuffle: bool,
}

/// Reads the metadata of a run's checkpoint.
pub fn read_checkpoint_meta(ck: &Path) -> Result<CheckpointMeta> {
    checkpoint_meta(ck).map(|(m, _)| m)
}

/// The metadata of a run's checkpoint and the metrics it holds (None in checkpoints
/// written before they held them).
fn checkpoint_meta(ck: &Path) -> Result<(CheckpointMeta, Option<Vec<EpochMetrics>>)> {
    let bytes = std::fs::read(ck).map_err(|e| Error::io(ck, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(ck, format!("not a valid checkpoint: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .map(String::as_str)
            .ok_or_else(|| Error::format(ck, format!("checkpoint metadata lacks `{k}`")))
    };
    let bad = |k: &str| Error::format(ck, format!("checkpoint metadata `{k}` is malformed"));
    let metrics = meta
        .get(METRICS_KEY)
        .map(|text| parse_metrics_text(text, ck))
        .transpose()?;
    Ok((
        CheckpointMeta {
            epochs_done: get("epochs_done")?
                .parse()
                .map_err(|_| bad("epochs_done"))?,
            steps: get("steps")?.parse().map_err(|_| bad("steps"))?,
            seed: get("seed")?.parse().map_err(|_| bad("seed"))?,
            shuffle: get("shuffle")?.parse().map_err(|_| bad("shuffle"))?,
        },
        metrics,
    ))
}

/// Reloads a run directory's trainer and progress for --resume.
pub fn resume(paths: &RunPaths, opts: &TrainOptions, net: Network<f32>) -> Result<Start> {
    let ck = paths.checkpoint();
    let (
        CheckpointMeta {
            epochs_done, steps, ..
        },
        metrics,
    ) = checkpoint_meta(&ck)?;
    // Writers killed mid-write left their temporary files; this run writes its own.
    for p in paths.all() {
        remove_stale_temps(&p);
    }
    let mut state = read_state(&ck)?;
    let mut net = net;
    let (mut s1, mut s2) = (Vec::new(), Vec::new());
    for n in net.param_names() {
        if let Some(t) = state.floats.remove(&format!("state1.{n}")) {
            s1.push(t);
        }
        if let Some(t) = state.floats.remove(&format!("state2.{n}")) {
            s2.push(t);
        }
    }
    net.take_state(&mut state, &ck)?;
    let mut opt = Optimizer::new(opts.optimizer);
    opt.steps = steps;
    opt.state1 = s1;
    opt.state2 = s2;
    // The checkpoint's own metrics: metrics.csv may be an epoch behind it (a crash between
    // the two writes).
    let history = match metrics {
        Some(m) => m,
        None if paths.metrics().is_file() => parse_metrics(&paths.metrics())?,
        None => Vec::new(),
    };
    let history = history.into_iter().take(epochs_done).collect();
    let mut trainer = Trainer::new(net, opt, opts.loss);
    trainer.seed = opts.seed;
    Ok(Start {
        trainer,
        epochs_done,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_moves_content_and_fills_zeros() {
        let mut p: Vec<f32> = (1..=9).map(|v| v as f32).collect(); // [[1,2,3],[4,5,6],[7,8,9]]
        let mut tmp = vec![0.0; 9];
        shift(&mut p, 3, 3, 1, -1, &mut tmp); // down one row, left one column
        assert_eq!(p, [0., 0., 0., 2., 3., 0., 5., 6., 0.]);
        let mut q: Vec<f32> = (1..=6).map(|v| v as f32).collect(); // 2×3
        shift(&mut q, 2, 3, 0, 2, &mut tmp[..6]);
        assert_eq!(q, [0., 0., 1., 0., 0., 4.]);
    }

    #[test]
    fn hflip_mirrors_about_half_the_images_and_keeps_the_stream_of_shifts() {
        // 200 images of 2 channels, 2×3, each row [0, 1, 2] + 10·image.
        let (n, shape) = (200, [2, 2, 3]);
        let img =
            |i: usize| -> Vec<f32> { (0..12).map(|j| (j % 3) as f32 + 10.0 * i as f32).collect() };
        let mut x: Vec<f32> = (0..n).flat_map(img).collect();
        let mut rng = epoch_rng(7, 1);
        augment(&mut x, 0..n, n, shape, (0, true), &mut rng);
        let mut flipped = 0;
        for (i, got) in x.chunks_exact(12).enumerate() {
            let b = 10.0 * i as f32;
            let row = [got[0] - b, got[1] - b, got[2] - b];
            if row == [2.0, 1.0, 0.0] {
                flipped += 1;
                assert!(
                    got.chunks(3).all(|r| r[0] > r[2]),
                    "every row and plane of image {i}"
                );
            } else {
                assert_eq!(got, img(i), "image {i}");
            }
        }
        assert!((70..=130).contains(&flipped), "{flipped} of {n}");
        // The same seed and epoch draw the same flips.
        let mut y: Vec<f32> = (0..n).flat_map(img).collect();
        augment(&mut y, 0..n, n, shape, (0, true), &mut epoch_rng(7, 1));
        assert_eq!(x, y);
        // Without flips the stream of shifts is what it was: old runs stay bit-identical.
        let mut a: Vec<f32> = (0..n).flat_map(img).collect();
        let mut b = a.clone();
        augment(&mut a, 0..n, n, shape, (1, false), &mut epoch_rng(3, 2));
        let mut rng = epoch_rng(3, 2);
        let mut tmp = vec![0.0; 6];
        for im in b.chunks_exact_mut(12) {
            let (dy, dx) = (rng.gen_range(-1..=1isize), rng.gen_range(-1..=1isize));
            im.chunks_exact_mut(6)
                .for_each(|p| shift(p, 2, 3, dy, dx, &mut tmp));
        }
        assert_eq!(a, b);
    }

    #[test]
    fn metrics_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        let h = vec![EpochMetrics {
            epoch: 1,
            train_loss: 0.5,
            test: Some(Evaluation {
                loss: 0.25,
                accuracy: 0.9,
                confusion: vec![],
            }),
            seconds: 1.5,
            images_per_second: 0.0,
        }];
        std::fs::write(&p, metrics_csv(&h)).unwrap();
        assert_eq!(parse_metrics(&p).unwrap(), h);
    }
}

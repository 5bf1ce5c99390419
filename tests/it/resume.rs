//! Stopping and resuming a run through the library's stop flag (no signal to race): the
//! resumed run ends with exactly the weights and buffers of the uninterrupted one, with
//! BatchNorm, dropout, shuffling and augmentation (shifts and flips) on, and on 1 or 2 threads alike.
use crate::common::embedded_cut;
use convnet::data::DataSplit;
use convnet::nn::weights::StateDict;
use convnet::optim::Optimizer;
use convnet::train::trainer::{resume, EpochMetrics};
use convnet::train::{train, ModelFile, Observer, RunPaths, Start, TrainOptions, Trainer};
use convnet::{Error, ModelSpec, Network};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const MODEL: &str = r#"name = "bn-dropout"
input = [1, 28, 28]

[[layers]]
type = "conv2d"
out_channels = 4
kernel = 5
stride = 2
bias = false

[[layers]]
type = "batchnorm2d"

[[layers]]
type = "relu"

[[layers]]
type = "dropout2d"
p = 0.2

[[layers]]
type = "adaptiveavgpool2d"
output = 4

[[layers]]
type = "flatten"

[[layers]]
type = "dropout"
p = 0.3

[[layers]]
type = "linear"
out_features = 10

[train]
optimizer = "adam"
lr = 0.01
epochs = 3
batch_size = 50
augment = 1
hflip = true
"#;

/// Sets the stop flag at a given batch of a given epoch, as Ctrl-C would.
struct StopAt {
    epoch: usize,
    batch: usize,
    current: usize,
    flag: Arc<AtomicBool>,
}

impl Observer for StopAt {
    fn epoch_start(&mut self, epoch: usize, _epochs: usize, _batches: usize) {
        self.current = epoch;
    }
    fn batch(&mut self, done: usize, _loss: f64, _ips: f64) {
        if self.current == self.epoch && done == self.batch {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
    fn epoch_end(&mut self, _m: &EpochMetrics) {}
}

/// A small slice of the embedded digits: 1,000 training and 200 test images.
fn data() -> DataSplit {
    embedded_cut(1000, 200)
}

fn fresh(spec: &ModelSpec, opts: &TrainOptions) -> Start {
    let net = Network::<f32>::new(spec.clone(), opts.init, opts.seed);
    Start {
        trainer: Trainer::new(net, Optimizer::new(opts.optimizer), opts.loss),
        epochs_done: 0,
        history: Vec::new(),
    }
}

/// The whole run, and the run stopped in epoch 2 then resumed, in a pool of `threads`.
fn runs(threads: usize) -> (StateDict, StateDict) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let file = ModelFile::parse(MODEL, "bn-dropout").unwrap();
        let spec = file.spec;
        let opts = TrainOptions::resolve(&[&file.recipe], 11, true).unwrap();
        let data = data();
        let dir = tempfile::tempdir().unwrap();
        let full = RunPaths::new(dir.path().join("full"));
        let whole = train(
            fresh(&spec, &opts),
            &data,
            &opts,
            &full,
            None,
            &mut convnet::train::Silent,
        )
        .unwrap();
        let cut = RunPaths::new(dir.path().join("cut"));
        let flag = Arc::new(AtomicBool::new(false));
        let mut stop = StopAt {
            epoch: 2,
            batch: 7,
            current: 0,
            flag: flag.clone(),
        };
        let err = train(
            fresh(&spec, &opts),
            &data,
            &opts,
            &cut,
            Some(flag),
            &mut stop,
        )
        .err()
        .expect("the run stops");
        assert!(
            matches!(err, Error::Interrupted { epochs_done: 1 }),
            "{err}"
        );
        let net = Network::<f32>::new(spec.clone(), opts.init, opts.seed);
        let start = resume(&cut, &opts, net).unwrap();
        assert_eq!(start.epochs_done, 1);
        let resumed = train(start, &data, &opts, &cut, None, &mut convnet::train::Silent).unwrap();
        (whole.net.state(), resumed.net.state())
    })
}

#[test]
fn stopped_and_resumed_run_is_bit_identical_on_any_thread_count() {
    let (whole1, resumed1) = runs(1);
    assert!(whole1 == resumed1, "resumed run differs from the whole run");
    assert_eq!(whole1.counts["1.num_batches_tracked"], 60);
    let (whole2, resumed2) = runs(2);
    assert!(
        whole2 == resumed2,
        "resumed run differs from the whole run (2 threads)"
    );
    assert!(whole1 == whole2, "1 and 2 threads gave different weights");
}

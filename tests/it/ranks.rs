//! A run split over ranks (here threads of one process with `dist::threads`, the same
//! exchanges MPI carries) ends with exactly the weights and buffers of one process alone,
//! for 2, 3 and 5 ranks (some holding nothing of a batch), with shuffling, augmentation,
//! BatchNorm and dropout on; a rank whose data fails stops every rank with its message and
//! leaves the last complete epoch. `tests/mpi.rs` runs the same under `mpirun`.
use crate::common::embedded_cut;
use convnet::data::DataSplit;
use convnet::dist::threads::ThreadRanks;
use convnet::dist::Group;
use convnet::nn::weights::{read_state, StateDict};
use convnet::optim::Optimizer;
use convnet::train::trainer::{read_checkpoint_meta, EpochMetrics};
use convnet::train::{train, ModelFile, Observer, RunPaths, Start, TrainOptions, Trainer};
use convnet::{Error, Network};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const LENET: &str = r#"name = "small-lenet"
input = [1, 28, 28]

[[layers]]
type = "conv2d"
out_channels = 6
kernel = 5
padding = 2

[[layers]]
type = "relu"

[[layers]]
type = "maxpool2d"
kernel = 2

[[layers]]
type = "flatten"

[[layers]]
type = "linear"
out_features = 10

[train]
lr = 0.05
momentum = 0.9
epochs = 2
batch_size = 100
augment = 2
hflip = true
"#;

const BN_DROPOUT: &str = r#"name = "bn-dropout"
input = [1, 28, 28]

[[layers]]
type = "conv2d"
out_channels = 6
kernel = 3
stride = 2
bias = false

[[layers]]
type = "batchnorm2d"

[[layers]]
type = "relu"

[[layers]]
type = "residual"
layers = [{ type = "conv2d", out_channels = 6, kernel = 3, padding = 1, bias = false }, { type = "batchnorm2d" }, { type = "dropout2d", p = 0.2 }]

[[layers]]
type = "adaptiveavgpool2d"
output = 3

[[layers]]
type = "flatten"

[[layers]]
type = "batchnorm1d"

[[layers]]
type = "dropout"
p = 0.3

[[layers]]
type = "linear"
out_features = 10

[train]
optimizer = "adam"
lr = 0.01
epochs = 2
batch_size = 300
augment = 1
hflip = true
"#;

/// The first `n` training and 200 test digits of the embedded set.
fn data(n: usize) -> DataSplit {
    embedded_cut(n, 200)
}

fn start(model: &str, group: Option<Arc<dyn Group>>) -> (Start, TrainOptions) {
    let file = ModelFile::parse(model, "model").unwrap();
    let opts = TrainOptions::resolve(&[&file.recipe], 5, true).unwrap();
    let net = Network::<f32>::new(file.spec, opts.init, opts.seed);
    let mut trainer = Trainer::new(net, Optimizer::new(opts.optimizer), opts.loss);
    trainer.group = group;
    let start = Start {
        trainer,
        epochs_done: 0,
        history: Vec::new(),
    };
    (start, opts)
}

/// Trains `model` on `size` ranks (0: one process alone) into `dir`; each rank's result.
fn run(
    model: &str,
    data: &DataSplit,
    size: usize,
    dir: &Path,
    obs: impl Fn() -> Box<dyn Observer> + Sync,
) -> Vec<Result<StateDict, Error>> {
    let paths = RunPaths::new(dir.to_path_buf());
    let one = |group: Option<Arc<dyn Group>>| {
        let (s, opts) = start(model, group);
        train(s, data, &opts, &paths, None, obs().as_mut()).map(|t| t.net.state())
    };
    if size == 0 {
        return vec![one(None)];
    }
    std::thread::scope(|scope| {
        let ranks: Vec<_> = ThreadRanks::new(size)
            .into_iter()
            .map(|g| scope.spawn(|| one(Some(Arc::new(g)))))
            .collect();
        ranks.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn silent() -> Box<dyn Observer> {
    Box::new(convnet::train::Silent)
}

fn bytes(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn same_on_any_rank_count(model: &str, n: usize) {
    let data = data(n);
    let tmp = tempfile::tempdir().unwrap();
    let alone = run(model, &data, 0, &tmp.path().join("alone"), silent)
        .remove(0)
        .unwrap();
    for size in [2, 3, 5] {
        let dir = tmp.path().join(format!("ranks{size}"));
        for (rank, state) in run(model, &data, size, &dir, silent)
            .into_iter()
            .enumerate()
        {
            let state = state.unwrap();
            // Every rank holds the weights of one process alone; buffers (running
            // statistics) are updated by the ranks that compute shards, rank 0 always.
            let alone_w: Vec<_> = alone
                .floats
                .iter()
                .filter(|(k, _)| !k.contains("running"))
                .collect();
            let w: Vec<_> = state
                .floats
                .iter()
                .filter(|(k, _)| !k.contains("running"))
                .collect();
            assert!(
                w == alone_w,
                "{size} ranks: rank {rank}'s parameters differ"
            );
            if rank == 0 {
                assert!(state == alone, "{size} ranks: rank 0's buffers differ");
            }
        }
        let a = tmp.path().join("alone");
        assert_eq!(
            bytes(dir.join("model.safetensors")),
            bytes(a.join("model.safetensors")),
            "{size} ranks"
        );
        assert!(
            read_state(&dir.join("checkpoint.safetensors")).unwrap()
                == read_state(&a.join("checkpoint.safetensors")).unwrap()
        );
        assert_eq!(
            bytes(dir.join("metrics.csv")).len(),
            bytes(a.join("metrics.csv")).len()
        );
    }
}

#[test]
fn lenet_with_shuffling_and_augmentation_is_bit_identical_on_any_rank_count() {
    // 1,030 images in batches of 100: 3 shards per batch, a last batch of 30 in 1 shard.
    same_on_any_rank_count(LENET, 1030);
}

#[test]
fn batchnorm_and_dropout_are_bit_identical_on_any_rank_count() {
    // Batches of 300 in 2 shards (statistics exchanged between ranks), a last one of 10.
    same_on_any_rank_count(BN_DROPOUT, 610);
}

/// Removes a file of the data set once the first epoch is saved (rank 0's observer).
struct RemoveAfterEpoch1(PathBuf);

impl Observer for RemoveAfterEpoch1 {
    fn epoch_end(&mut self, m: &EpochMetrics) {
        if m.epoch == 1 {
            std::fs::remove_file(&self.0).unwrap();
        }
    }
}

#[test]
fn a_rank_whose_data_fails_stops_every_rank_and_keeps_the_last_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("digits");
    let set = data(300);
    let mut px = vec![0f32; 784];
    for i in 0..300 {
        set.train.gather(&[i], &mut px).unwrap();
        let dir = root.join(format!("c{}", set.train.labels[i]));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = px.iter().map(|v| (v * 255.0) as u8).collect();
        image::GrayImage::from_raw(28, 28, bytes)
            .unwrap()
            .save(dir.join(format!("{i:03}.png")))
            .unwrap();
    }
    // Read from disk at every batch, so each rank reads only its own rows.
    let opts = convnet::data::LoadOptions {
        cache_mb: Some(0),
        ..Default::default()
    };
    let streamed = convnet::data::dataset::load_dir(&root, &opts).unwrap();
    assert!(streamed.train.streamed());
    let gone = root
        .join(format!("c{}", set.train.labels[7]))
        .join("007.png");
    let gone2 = gone.clone();
    let dir = tmp.path().join("run");
    let model = LENET.replace("epochs = 2", "epochs = 3");
    let results = run(&model, &streamed, 2, &dir, move || {
        Box::new(RemoveAfterEpoch1(gone2.clone())) as Box<dyn Observer>
    });
    // Rank 1's observer does nothing: only rank 0 reports, and it removed the file once.
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Err(Error::Rank {
                message, ranks: 2, ..
            }) => {
                assert!(message.contains("007.png"), "rank {rank}: {message}")
            }
            other => panic!("rank {rank}: {:?}", other.map(|_| ())),
        }
    }
    let meta = read_checkpoint_meta(&dir.join("checkpoint.safetensors")).unwrap();
    assert_eq!(meta.epochs_done, 1);
    let metrics = String::from_utf8(bytes(dir.join("metrics.csv"))).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    assert!(!gone.exists());
}

//! Training under faults: a write that fails at every possible step of saving an epoch
//! (a full disk, a file too large, a lost permission), and `convnet train` killed with
//! SIGKILL at 20 random moments; the run always resumes, and ends bit-identical.
use crate::common::{convnet, embedded_cut, ok, p};
use convnet::data::DataSplit;
use convnet::io::{Disk, Storage, StoredFile};
use convnet::nn::weights::{read_state, StateDict};
use convnet::optim::Optimizer;
use convnet::train::trainer::resume;
use convnet::train::{train, ModelFile, RunPaths, Silent, Start, TrainOptions, Trainer};
use convnet::{Error, Network};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

const MODEL: &str = r#"name = "tiny"
input = [1, 28, 28]

[[layers]]
type = "conv2d"
out_channels = 4
kernel = 5
stride = 2

[[layers]]
type = "batchnorm2d"

[[layers]]
type = "relu"

[[layers]]
type = "adaptiveavgpool2d"
output = 4

[[layers]]
type = "flatten"

[[layers]]
type = "dropout"
p = 0.2

[[layers]]
type = "linear"
out_features = 10

[train]
optimizer = "adam"
lr = 0.01
batch_size = 50
augment = 1
"#;

/// The OS errors a failing write gives, in turn.
const ERRNOS: [i32; 3] = [libc::ENOSPC, libc::EFBIG, libc::EACCES];

/// Counts every step of every write (create, write, sync, rename, directory sync) and fails
/// the `fail_at`-th (from 1).
struct FailAt {
    fail_at: usize,
    ops: Arc<AtomicUsize>,
}

impl FailAt {
    fn new(fail_at: usize) -> Self {
        FailAt {
            fail_at,
            ops: Arc::default(),
        }
    }
}

fn step(ops: &AtomicUsize, fail_at: usize) -> std::io::Result<()> {
    if ops.fetch_add(1, Ordering::SeqCst) + 1 == fail_at {
        return Err(std::io::Error::from_raw_os_error(
            ERRNOS[fail_at % ERRNOS.len()],
        ));
    }
    Ok(())
}

struct FailingFile {
    inner: Box<dyn StoredFile>,
    fail_at: usize,
    ops: Arc<AtomicUsize>,
}

impl Write for FailingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        step(&self.ops, self.fail_at)?;
        // At most 4 KiB at a time, so that a file takes several writes.
        self.inner.write(&buf[..buf.len().min(4096)])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl StoredFile for FailingFile {
    fn sync_all(&mut self) -> std::io::Result<()> {
        step(&self.ops, self.fail_at)?;
        self.inner.sync_all()
    }
}

impl Storage for FailAt {
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn StoredFile>> {
        step(&self.ops, self.fail_at)?;
        Ok(Box::new(FailingFile {
            inner: Disk.create(path)?,
            fail_at: self.fail_at,
            ops: self.ops.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        step(&self.ops, self.fail_at)?;
        Disk.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        step(&self.ops, self.fail_at)?;
        Disk.sync_dir(dir)
    }
}

fn options(epochs: usize) -> (convnet::ModelSpec, TrainOptions) {
    let file = ModelFile::parse(MODEL, "tiny").unwrap();
    let mut opts = TrainOptions::resolve(&[&file.recipe], 5, true).unwrap();
    opts.epochs = epochs;
    (file.spec, opts)
}

fn fresh(epochs: usize) -> (Start, TrainOptions) {
    let (spec, opts) = options(epochs);
    let net = Network::<f32>::new(spec, opts.init, opts.seed);
    let start = Start {
        trainer: Trainer::new(net, Optimizer::new(opts.optimizer), opts.loss),
        epochs_done: 0,
        history: Vec::new(),
    };
    (start, opts)
}

/// Resumes the run in `dir` on disk and trains it to `epochs`: its final state.
fn finish(dir: &Path, epochs: usize, data: &DataSplit) -> (usize, StateDict) {
    let (spec, opts) = options(epochs);
    let paths = RunPaths::new(dir);
    let net = Network::<f32>::new(spec, opts.init, opts.seed);
    let start = resume(&paths, &opts, net).unwrap();
    let done = start.epochs_done;
    let t = train(start, data, &opts, &paths, None, &mut Silent).unwrap();
    (done, t.net.state())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_write_failing_at_any_step_of_a_save_keeps_the_run_resumable_and_exact() {
    let data = embedded_cut(200, 50);
    let root = tempfile::tempdir().unwrap();
    // Two epochs on disk, the run to go on from.
    let base = root.path().join("base");
    let (start, opts) = fresh(2);
    train(
        start,
        &data,
        &opts,
        &RunPaths::new(&base),
        None,
        &mut Silent,
    )
    .unwrap();
    // The reference: resumed on a working disk to 3 epochs.
    let reference = root.path().join("reference");
    copy_dir(&base, &reference);
    let (done, want) = finish(&reference, 3, &data);
    assert_eq!(done, 2);
    let files = RunPaths::new(&base).all();
    let mut n = 1;
    loop {
        let dir = root.path().join(format!("fail{n}"));
        copy_dir(&base, &dir);
        let (spec, opts) = options(3);
        let paths = RunPaths {
            dir: dir.clone(),
            store: Arc::new(FailAt::new(n)),
        };
        let start = resume(
            &paths,
            &opts,
            Network::<f32>::new(spec, opts.init, opts.seed),
        )
        .unwrap();
        let Err(err) = train(start, &data, &opts, &paths, None, &mut Silent) else {
            // Past the last step of the save: every step has failed once.
            break;
        };
        // A clear error naming the file (not its temporary) and the cause.
        let msg = err.to_string();
        let named = files
            .iter()
            .map(|f| dir.join(f.file_name().unwrap()))
            .find(|f| msg.starts_with(&format!("{}: ", f.display())));
        assert!(
            matches!(err, Error::Io { .. }) && named.is_some(),
            "failure {n}: {msg}"
        );
        let cause = std::io::Error::from_raw_os_error(ERRNOS[n % ERRNOS.len()]).to_string();
        assert!(msg.contains(&cause), "failure {n}: {msg}");
        // No temporary file is left, and the checkpoint is epoch 2's or epoch 3's, whole.
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.contains(".tmp"), "failure {n}: {name} left behind");
        }
        read_state(&dir.join("checkpoint.safetensors")).unwrap();
        // --resume goes on and ends where the run without a failure ends, bit for bit.
        let (done, got) = finish(&dir, 3, &data);
        assert!(done == 2 || done == 3, "failure {n}: {done} epochs");
        assert!(
            got == want,
            "failure {n}: resumed after {done} epochs, differs"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        n += 1;
    }
    // Four files of several steps each.
    eprintln!("saving an epoch took {} steps, each failed once", n - 1);
    assert!(n > 20, "only {} steps in saving an epoch", n - 1);
}

/// A run directory's weights and the epochs and losses of its metrics (not their times).
fn outcome(dir: &Path) -> (Vec<u8>, Vec<String>) {
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let metrics = std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect();
    (weights, metrics)
}

#[test]
fn sigkill_at_twenty_random_moments_never_spoils_the_run() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("tiny.toml");
    std::fs::write(&model, MODEL).unwrap();
    let epochs = "24";
    let args = |out: &Path| {
        vec![
            "train".to_string(),
            "--quiet".into(),
            "--model".into(),
            p(&model).into(),
            "--epochs".into(),
            epochs.into(),
            "--seed".into(),
            "3".into(),
            "--out".into(),
            p(out).into(),
            "--force".into(),
        ]
    };
    let whole = root.path().join("whole");
    let t = Instant::now();
    ok(&convnet(
        &args(&whole).iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let full_time = t.elapsed();
    let run = root.path().join("killed");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(41);
    let mut kills = 0;
    let mut resumed = 0;
    while kills < 20 {
        let fresh = !run.join("checkpoint.safetensors").is_file();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_convnet"));
        if fresh {
            // Killed before its first epoch ended, a run has nothing to resume: it starts over.
            cmd.args(args(&run));
        } else {
            cmd.args(["train", "--quiet", "--resume", p(&run)]);
            resumed += 1;
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Anywhere in a tenth of the whole run: starting up, training, evaluating, writing.
        let delay = full_time.mul_f64(rng.gen_range(0.0..0.1));
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the run ended before its kill ({status}): {err}");
        }
        // SAFETY: killing our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        kills += 1;
    }
    eprintln!("the whole run took {full_time:?}; {resumed} of 20 killed runs had resumed");
    assert!(resumed >= 10, "only {resumed} of 20 runs resumed");
    let out = ok(&convnet(&["train", "--quiet", "--resume", p(&run)]));
    assert!(out.contains("resuming"), "{out}");
    assert!(outcome(&run) == outcome(&whole), "the killed run differs");
    // Nothing of the killed writers is left.
    for e in std::fs::read_dir(&run).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains(".tmp"), "{name} left behind");
    }
}

//! Training under `mpirun` (built with `--features mpi`): 2 and 3 ranks end with exactly the
//! weights of one process alone (LeNet-5 with shuffling and augmentation; a network with
//! BatchNorm and dropout), a run resumes on another rank count, and failures stop every
//! rank with one message: a setup error, a diverging loss, and a killed rank (no hang).
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BN_DROPOUT: &str = r#"name = "bn-dropout"
input = [1, 28, 28]

[[layers]]
type = "conv2d"
out_channels = 8
kernel = 3
padding = 1
bias = false

[[layers]]
type = "batchnorm2d"

[[layers]]
type = "relu"

[[layers]]
type = "maxpool2d"
kernel = 2

[[layers]]
type = "residual"
layers = [{ type = "conv2d", out_channels = 8, kernel = 3, padding = 1, bias = false }, { type = "batchnorm2d" }, { type = "relu" }, { type = "dropout2d", p = 0.2 }]

[[layers]]
type = "adaptiveavgpool2d"
output = 2

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
"#;

fn convnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_convnet"))
}

/// `convnet args` on `np` ranks under mpirun, one thread each.
fn mpirun(np: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &np.to_string(),
    ])
    .arg(env!("CARGO_BIN_EXE_convnet"))
    .args(args)
    .args(["--threads", "1"]);
    c
}

/// Runs `c` to its end, failing the test if it takes longer than `limit` (a hang).
fn finish(mut c: Command, limit: Duration) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (Debian: openmpi-bin) and the convnet binary");
    let begun = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if begun.elapsed() > limit {
            let _ = child.kill();
            panic!("{c:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn ok(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stderr: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn bytes(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const LIMIT: Duration = Duration::from_secs(120);

/// The same training alone and on 2 and 3 ranks: the same weights file, byte for byte.
fn same_alone_and_on_ranks(args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    fn run<'a>(dir: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
        [&["train", "--quiet", "--out", p(dir)], args].concat()
    }
    let alone = tmp.path().join("alone");
    ok(finish(
        {
            let mut c = convnet();
            c.args(run(&alone, args)).args(["--threads", "2"]);
            c
        },
        LIMIT,
    ));
    for np in [2, 3] {
        let dir = tmp.path().join(format!("np{np}"));
        let out = ok(finish(mpirun(np, &run(&dir, args)), LIMIT));
        assert_eq!(
            out.matches("done in").count(),
            1,
            "rank 0 alone reports: {out}"
        );
        assert!(
            bytes(dir.join("model.safetensors")) == bytes(alone.join("model.safetensors")),
            "{np} ranks: {args:?}"
        );
        assert_eq!(
            bytes(dir.join("metrics.csv")).len(),
            bytes(alone.join("metrics.csv")).len()
        );
    }
}

#[test]
fn lenet5_with_shuffling_and_augmentation_is_bit_identical_on_2_and_3_ranks() {
    same_alone_and_on_ranks(&[
        "--epochs",
        "2",
        "--augment",
        "2",
        "--hflip",
        "--batch-size",
        "100",
    ]);
}

#[test]
fn batchnorm_and_dropout_are_bit_identical_on_2_and_3_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bn.toml");
    std::fs::write(&model, BN_DROPOUT).unwrap();
    let args = [
        "--model",
        p(&model),
        "--epochs",
        "1",
        "--batch-size",
        "260",
        "--augment",
        "1",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
    ];
    same_alone_and_on_ranks(&args);
}

#[test]
fn a_run_resumes_on_another_rank_count_with_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
    let args = |dir: &Path, epochs: &str| -> Vec<String> {
        // A constant learning rate: the preset's schedule would depend on the epochs given.
        [
            "train",
            "--quiet",
            "--out",
            p(dir),
            "--epochs",
            epochs,
            "--augment",
            "1",
            "--batch-size",
            "128",
            "--schedule",
            "constant",
        ]
        .map(String::from)
        .to_vec()
    };
    let mut c = convnet();
    c.args(args(&whole, "3"));
    ok(finish(c, LIMIT));
    ok(finish(
        mpirun(
            2,
            &args(&cut, "1")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ),
        LIMIT,
    ));
    let resume = ["train", "--quiet", "--resume", p(&cut), "--epochs", "2"];
    ok(finish(mpirun(3, &resume), LIMIT));
    let mut c = convnet();
    c.args(["train", "--quiet", "--resume", p(&cut), "--epochs", "3"]);
    ok(finish(c, LIMIT));
    assert!(
        bytes(cut.join("model.safetensors")) == bytes(whole.join("model.safetensors")),
        "1 epoch on 2 ranks, the 2nd on 3, the 3rd alone differ from 3 epochs alone"
    );
}

#[test]
fn errors_stop_every_rank_with_one_message() {
    // Bad data: every rank finds it while setting up; rank 0 reports.
    let o = finish(
        mpirun(2, &["train", "--data", "/nonexistent/digits"]),
        LIMIT,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/digits") && err.contains("(rank 0 of 2)"),
        "{err}"
    );
    // A diverging loss: every rank computes the same loss and stops at the same batch.
    let tmp = tempfile::tempdir().unwrap();
    let o = finish(
        mpirun(
            3,
            &[
                "train",
                "--quiet",
                "--lr",
                "1e30",
                "--out",
                p(&tmp.path().join("nan")),
            ],
        ),
        LIMIT,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(err.contains("the loss became"), "{err}");
}

/// The pids of the processes whose command line contains `needle` and whose environment
/// says they are MPI rank `rank`.
fn rank_pids(needle: &str, rank: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let has = |hay: &[u8], s: &str| hay.windows(s.len()).any(|w| w == s.as_bytes());
        let is_rank = has(&env, &format!("OMPI_COMM_WORLD_RANK={rank}\0"));
        if has(&cmd, needle) && is_rank && !has(&cmd, "mpirun") {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_killed_rank_stops_the_run_and_the_last_epoch_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("killed");
    let mut c = mpirun(
        2,
        &["train", "--quiet", "--epochs", "500", "--out", p(&dir)],
    );
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let begun = Instant::now();
    while !dir.join("metrics.csv").exists() {
        assert!(begun.elapsed() < LIMIT, "no epoch finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = rank_pids(p(&dir), 1);
    assert_eq!(pids.len(), 1, "rank 1's process");
    unsafe_kill(pids[0]);
    let killed = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if killed.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the run did not stop after its rank 1 was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!child.wait().unwrap().success());
    assert!(rank_pids(p(&dir), 0).is_empty(), "rank 0 stopped too");
    // The last complete epoch is on disk and evaluates.
    let metrics = String::from_utf8(bytes(dir.join("metrics.csv"))).unwrap();
    assert!(metrics.lines().count() >= 2, "{metrics}");
    let o = convnet()
        .args(["eval", "--model", p(&dir)])
        .output()
        .unwrap();
    assert!(ok(o).contains("accuracy"));
}

/// SIGKILL, as the kernel's out-of-memory killer or a failing node would end a rank.
fn unsafe_kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

//! The `convnet` binary as a user runs it: summary, predict, train, resume, eval, and errors.
use crate::common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn summary_of_lenet5() {
    let out = ok(&convnet(&["summary", "--model", "lenet5"]));
    assert!(out.contains("Total parameters: 61,706"), "{out}");
    assert!(out.contains("16×5×5") && out.contains("48,120"), "{out}");
    let out = ok(&convnet(&["summary", "--model", "resnet-small"]));
    assert!(
        out.contains("2.body.0") && out.contains("residual"),
        "{out}"
    );
}

#[test]
fn model_file_errors_name_the_layer_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "type = \"conv2d\"\nout_channels = 2\nkernel = 3\nstrid = 1",
            "layer 0 (conv2d): unknown key `strid`",
        ),
        ("type = \"convolution\"", "unknown layer type `convolution`"),
        (
            "type = \"conv2d\"\nout_channels = 0\nkernel = 3",
            "layer 0 (conv2d): key `out_channels`",
        ),
        (
            "type = \"conv2d\"\nout_channels = 2\nkernel = -3",
            "key `kernel`",
        ),
        (
            "type = \"conv2d\"\nout_channels = 2",
            "missing required key `kernel`",
        ),
        (
            "type = \"conv2d\"\nout_channels = 2\nkernel = 9",
            "larger than the padded input",
        ),
        (
            "type = \"conv2d\"\nout_channels = 3\nkernel = 3\ngroups = 2",
            "groups = 2 must divide",
        ),
        (
            "type = \"maxpool2d\"\nkernel = 2\npadding = 2",
            "at most half the kernel",
        ),
        (
            "type = \"linear\"\nout_features = 3",
            "put a flatten layer before it",
        ),
        (
            "type = \"residual\"\nlayers = [{ type = \"conv2d\", out_channels = 3, kernel = 3 }]",
            "a residual body must keep the shape",
        ),
        (
            "type = \"residual\"\nlayers = [{ type = \"relu\", alpha = 1 }]",
            "layer 0.body.0 (relu): unknown key `alpha`",
        ),
        (
            "type = \"conv2d\"\nout_channels = 2\nkernel = 3\nstride = 2\npadding = \"same\"",
            "needs stride 1",
        ),
    ];
    for (i, (layer, want)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("m{i}.toml"));
        std::fs::write(&f, format!("input = [2, 6, 6]\n[[layers]]\n{layer}\n")).unwrap();
        let err = fails(&convnet(&["summary", "--model", p(&f)]));
        assert!(
            err.contains(&format!("m{i}.toml")) && err.contains(want),
            "case {i}: {err}"
        );
    }
    let f = dir.path().join("syntax.toml");
    std::fs::write(&f, "input = [1, 2\n").unwrap();
    let err = fails(&convnet(&["summary", "--model", p(&f)]));
    assert!(
        err.contains("syntax.toml") && err.contains("line 1"),
        "{err}"
    );
    let err = fails(&convnet(&["summary", "--model", "lenet7"]));
    assert!(err.contains("lenet7") && err.contains("presets"), "{err}");
}

/// Writes the fixture's input batch as npy, IDX (first channel scaled to bytes) and PNG.
#[test]
fn predict_matches_pytorch_and_reads_every_input_kind() {
    let dir = tempfile::tempdir().unwrap();
    let io = tensors("fwd_lenet5_io.safetensors");
    let x = &io["x"]; // (5, 1, 28, 28)
    let npy = dir.path().join("x.npy");
    convnet::data::npy::write_npy_f32(&npy, x.shape(), x.data()).unwrap();
    let out = dir.path().join("y.npy");
    let model = fixture("fwd_lenet5.toml");
    let weights = fixture("fwd_lenet5.safetensors");
    let args = [
        "predict",
        "--model",
        p(&model),
        "--weights",
        p(&weights),
        "--input",
        p(&npy),
        "--output",
        p(&out),
    ];
    ok(&convnet(&args));
    let y = convnet::data::npy::read_npy(&out).unwrap();
    assert_eq!(y.shape, [5, 10]);
    let convnet::data::npy::NpyData::F32(yv) = y.data else {
        panic!("dtype")
    };
    assert!(rel_err(&yv, io["y"].data()) <= 1e-5);

    // Without --output: one line per input with its top class and probability.
    let text = ok(&convnet(&[
        "predict",
        "--model",
        p(&model),
        "--weights",
        p(&weights),
        "--input",
        p(&npy),
    ]));
    assert_eq!(text.lines().count(), 5);
    let row0 = &io["y"].data()[..10];
    let top = convnet::train::eval::argmax(row0);
    assert!(
        text.lines().next().unwrap().contains(&format!(": {top} ")),
        "{text}"
    );

    // IDX and PNG: the same bytes give the same outputs.
    let bytes: Vec<u8> = (0..2 * 784).map(|i| ((i * 37) % 256) as u8).collect();
    let mut idx = vec![0u8, 0, 8, 3];
    for d in [2u32, 28, 28] {
        idx.extend(d.to_be_bytes());
    }
    idx.extend(&bytes);
    let idx_path = dir.path().join("images-idx3-ubyte");
    std::fs::write(&idx_path, idx).unwrap();
    let png1 = dir.path().join("a.png");
    let png2 = dir.path().join("b.png");
    image::GrayImage::from_raw(28, 28, bytes[..784].to_vec())
        .unwrap()
        .save(&png1)
        .unwrap();
    image::GrayImage::from_raw(28, 28, bytes[784..].to_vec())
        .unwrap()
        .save(&png2)
        .unwrap();
    let (o1, o2) = (dir.path().join("o1.npy"), dir.path().join("o2.npy"));
    ok(&convnet(&[
        "predict",
        "--model",
        p(&model),
        "--weights",
        p(&weights),
        "--input",
        p(&idx_path),
        "--output",
        p(&o1),
    ]));
    ok(&convnet(&[
        "predict",
        "--model",
        p(&model),
        "--weights",
        p(&weights),
        "--input",
        p(&png1),
        p(&png2),
        "--output",
        p(&o2),
    ]));
    let (a, b) = (
        convnet::data::npy::read_npy(&o1).unwrap(),
        convnet::data::npy::read_npy(&o2).unwrap(),
    );
    assert_eq!(a.shape, [2, 10]);
    assert_eq!(a, b);

    // A size that does not match the model is a clear error.
    let small = dir.path().join("small.png");
    image::GrayImage::new(20, 20).save(&small).unwrap();
    let err = fails(&convnet(&[
        "predict",
        "--model",
        p(&model),
        "--weights",
        p(&weights),
        "--input",
        p(&small),
    ]));
    assert!(
        err.contains("small.png") && err.contains("1×28×28"),
        "{err}"
    );
    // Weights for another model: the tensor and both shapes are named.
    let other = fixture("fwd_convs.safetensors");
    let err = fails(&convnet(&[
        "predict",
        "--model",
        p(&model),
        "--weights",
        p(&other),
        "--input",
        p(&npy),
    ]));
    assert!(
        err.contains("fwd_convs.safetensors") && err.contains("tensor `0.weight`"),
        "{err}"
    );
}

fn metrics(run: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

#[test]
fn short_training_lowers_the_loss_and_the_run_is_usable() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    ok(&convnet(&[
        "train",
        "--quiet",
        "--model",
        "lenet5",
        "--epochs",
        "3",
        "--out",
        p(&run),
    ]));
    let m = metrics(&run);
    assert_eq!(m.len(), 3);
    assert!(m[2][1] < m[0][1] && m[0][1] < 2.3, "train loss {m:?}");
    assert!(m[2][3] > 0.9, "test accuracy {m:?}");
    let text = ok(&convnet(&["eval", "--model", p(&run)]));
    assert!(
        text.contains("accuracy: ") && text.contains("confusion matrix"),
        "{text}"
    );
    // The accuracy eval prints is the last epoch's.
    assert!(
        text.contains(&format!("{:.2}%", 100.0 * m[2][3])),
        "{text} vs {m:?}"
    );
    // An existing run is not overwritten without --force.
    let err = fails(&convnet(&[
        "train",
        "--quiet",
        "--epochs",
        "1",
        "--out",
        p(&run),
    ]));
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
}

#[test]
fn interrupted_and_resumed_run_ends_with_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (full, cut) = (dir.path().join("full"), dir.path().join("cut"));
    let common = [
        "train",
        "--quiet",
        "--model",
        "mlp",
        "--optimizer",
        "adam",
        "--lr",
        "0.001",
        "--schedule",
        "cosine",
        "--crop-padding",
        "1",
        "--hflip",
        "--seed",
        "3",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        common.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    // Enough epochs that the signal, sent as soon as the first is on disk, lands mid-run.
    let args = with(&["--epochs", "12", "--out", p(&full)]);
    ok(&Command::new(env!("CARGO_BIN_EXE_convnet"))
        .args(&args)
        .output()
        .unwrap());

    // Ctrl-C once the first epoch is on disk.
    let args = with(&["--epochs", "12", "--out", p(&cut)]);
    let child = Command::new(env!("CARGO_BIN_EXE_convnet"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !cut.join("metrics.csv").exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let done = metrics(&cut).len();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the run ended before the signal: {err}"
    );
    assert!(
        err.contains("interrupted") && err.contains("--resume"),
        "{err}"
    );
    assert!((1..12).contains(&done), "{done}");
    ok(&convnet(&["train", "--quiet", "--resume", p(&cut)]));
    assert_eq!(metrics(&cut).len(), 12);
    let a = std::fs::read(full.join("model.safetensors")).unwrap();
    let b = std::fs::read(cut.join("model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from the uninterrupted run");
    // A directory without a run is refused.
    let err = fails(&convnet(&["train", "--resume", p(dir.path())]));
    assert!(err.contains("holds no run"), "{err}");
}

#[test]
fn bad_options_are_clear_errors() {
    for (args, want) in [
        (vec!["train", "--epochs", "0"], "epochs must be at least 1"),
        (vec!["train", "--batch-size", "0"], "batch size"),
        (vec!["train", "--lr", "-1"], "learning rate"),
        (vec!["train", "--lr", "NaN"], "learning rate"),
        (
            vec!["train", "--optimizer", "rmsprop"],
            "unknown optimizer `rmsprop`",
        ),
        (vec!["train", "--schedule", "linear"], "unknown schedule"),
        (
            vec!["train", "--data", "/nonexistent/dir"],
            "/nonexistent/dir",
        ),
    ] {
        let err = fails(&convnet(&args));
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn weights_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let runs: Vec<_> = ["1", "2"]
        .iter()
        .map(|t| {
            let out = dir.path().join(format!("t{t}"));
            ok(&convnet(&[
                "--threads",
                t,
                "train",
                "--quiet",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--out",
                p(&out),
            ]));
            std::fs::read(out.join("model.safetensors")).unwrap()
        })
        .collect();
    assert!(runs[0] == runs[1], "1 and 2 threads gave different weights");
}

//! Bad input through every subcommand: a non-zero exit, one message naming the file and the
//! problem, no panic, no partial output; and nothing is lost when training goes wrong.
use crate::common;
use crate::common::convnet;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Asserts a clean failure with the given exit code and returns stderr.
fn fails_with(o: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn idx(magic: [u8; 4], dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

/// An IDX data directory with `n` images of 28×28 and `m` labels.
fn idx_dir(root: &Path, name: &str, n: u32, m: u32, label: u8) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("train-images-idx3-ubyte"),
        idx([0, 0, 8, 3], &[n, 28, 28], &vec![7; n as usize * 784]),
    )
    .unwrap();
    std::fs::write(
        d.join("train-labels-idx1-ubyte"),
        idx([0, 0, 8, 1], &[m], &vec![label; m as usize]),
    )
    .unwrap();
    d
}

#[test]
fn usage_errors_exit_2_and_file_errors_exit_1() {
    fails_with(&convnet(&["train", "--no-such-flag"]), 2);
    fails_with(&convnet(&["frobnicate"]), 2);
    fails_with(&convnet(&["train", "--epochs", "0"]), 2);
    fails_with(&convnet(&["train", "--threads", "0"]), 2);
    let err = fails_with(&convnet(&["summary", "--model", "/no/such/model.toml"]), 2);
    assert!(err.contains("/no/such/model.toml"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("bad.toml");
    std::fs::write(
        &m,
        "input = [1, 28, 28]\n[[layers]]\ntype = \"conv2d\"\nout_channels = 2\nkernel = 30\n",
    )
    .unwrap();
    let err = fails_with(&convnet(&["summary", "--model", s(&m)]), 1);
    assert!(
        err.contains("bad.toml") && err.contains("layer 0 (conv2d)"),
        "{err}"
    );
}

#[test]
fn data_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Wrong magic.
    let d = idx_dir(root, "magic", 2, 2, 1);
    std::fs::write(
        d.join("train-images-idx3-ubyte"),
        b"PK\x03\x04 not idx at all",
    )
    .unwrap();
    let err = fails_with(
        &convnet(&["train", "--data", s(&d), "--out", s(&root.join("r1"))]),
        1,
    );
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("not an IDX file"),
        "{err}"
    );
    // Truncated images.
    let d = idx_dir(root, "trunc", 3, 3, 1);
    std::fs::write(
        d.join("train-images-idx3-ubyte"),
        idx([0, 0, 8, 3], &[3, 28, 28], &[0; 1000]),
    )
    .unwrap();
    let err = fails_with(
        &convnet(&["train", "--data", s(&d), "--out", s(&root.join("r2"))]),
        1,
    );
    assert!(err.contains("truncated"), "{err}");
    // Counts differ.
    let d = idx_dir(root, "counts", 3, 2, 1);
    let err = fails_with(
        &convnet(&["train", "--data", s(&d), "--out", s(&root.join("r3"))]),
        1,
    );
    assert!(err.contains("3 images but 2 labels"), "{err}");
    // Labels beyond the model's outputs.
    let d = idx_dir(root, "labels", 2, 2, 12);
    let err = fails_with(
        &convnet(&["train", "--data", s(&d), "--out", s(&root.join("r4"))]),
        1,
    );
    assert!(
        err.contains("label 12") && err.contains("10 outputs"),
        "{err}"
    );
    // Empty set.
    let d = idx_dir(root, "empty", 0, 0, 1);
    let err = fails_with(
        &convnet(&["train", "--data", s(&d), "--out", s(&root.join("r5"))]),
        1,
    );
    assert!(err.contains("empty"), "{err}");
    // A hostile header claiming 4 billion images in a 100-byte file: refused at once.
    let d = idx_dir(root, "hostile", 1, 1, 1);
    std::fs::write(
        d.join("train-images-idx3-ubyte"),
        idx([0, 0, 8, 3], &[u32::MAX, 28, 28], &[0; 84]),
    )
    .unwrap();
    let t = std::time::Instant::now();
    let err = fails_with(
        &convnet(&["train", "--data", s(&d), "--out", s(&root.join("r6"))]),
        1,
    );
    assert!(
        err.contains("truncated") && t.elapsed().as_secs() < 5,
        "{err}"
    );
    for r in ["r1", "r2", "r3", "r4", "r5", "r6"] {
        assert!(!root.join(r).exists(), "{r}: a failed command left output");
    }
}

/// npy header for a little-endian array.
fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend((h.len() as u16).to_le_bytes());
    v.extend(h.as_bytes());
    v.extend(data);
    v
}

#[test]
fn npy_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let model = common::fixture("fwd_lenet5.toml");
    let weights = common::fixture("fwd_lenet5.safetensors");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            npy("<c8", false, "(1, 1, 28, 28)", &[0; 784 * 8]),
            "not supported",
        ),
        (npy("<f4", true, "(1, 1, 28, 28)", &[0; 784 * 4]), "Fortran"),
        (npy("<f4", false, "(1, 28, 28)", &[0; 784 * 4]), "1×28×28"),
        (
            npy("<f4", false, "(100000, 1, 28, 28)", &[0; 64]),
            "truncated",
        ),
        (
            npy(
                "<f4",
                false,
                "(9999999999999, 99999999999, 28, 28)",
                &[0; 64],
            ),
            "overflow",
        ),
        (b"\x93NUMPY garbage".to_vec(), "not a valid npy file"),
    ];
    for (i, (bytes, want)) in cases.iter().enumerate() {
        let p = root.join(format!("x{i}.npy"));
        std::fs::write(&p, bytes).unwrap();
        let out = root.join(format!("y{i}.npy"));
        let err = fails_with(
            &convnet(&[
                "predict",
                "--model",
                s(&model),
                "--weights",
                s(&weights),
                "--input",
                s(&p),
                "--output",
                s(&out),
            ]),
            1,
        );
        assert!(
            err.contains(&format!("x{i}.npy")) && err.contains(want),
            "case {i}: {err}"
        );
        assert!(!out.exists());
    }
    // Unsupported label dtype in an npy data directory.
    let d = root.join("npydata");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("train_images.npy"),
        npy("<f4", false, "(2, 1, 28, 28)", &[0; 2 * 784 * 4]),
    )
    .unwrap();
    std::fs::write(
        d.join("train_labels.npy"),
        npy("<f4", false, "(2,)", &[0; 8]),
    )
    .unwrap();
    let err = fails_with(
        &convnet(&["train", "--data", s(&d), "--out", s(&root.join("run"))]),
        1,
    );
    assert!(
        err.contains("train_labels.npy") && err.contains("integer"),
        "{err}"
    );
}

#[test]
fn weight_and_image_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let model = common::fixture("fwd_lenet5.toml");
    let good = std::fs::read(common::fixture("fwd_lenet5.safetensors")).unwrap();
    let x = root.join("x.png");
    image::GrayImage::new(28, 28).save(&x).unwrap();
    let bad_weights: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage.safetensors",
            b"hello world, not tensors".to_vec(),
            "not a valid safetensors file",
        ),
        (
            "truncated.safetensors",
            good[..good.len() / 2].to_vec(),
            "not a valid safetensors file",
        ),
    ];
    for (name, bytes, want) in bad_weights {
        let p = root.join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = fails_with(
            &convnet(&[
                "predict",
                "--model",
                s(&model),
                "--weights",
                s(&p),
                "--input",
                s(&x),
            ]),
            1,
        );
        assert!(err.contains(name) && err.contains(want), "{err}");
    }
    // Missing, extra, misshaped and non-float32 tensors are named.
    let mut tensors =
        convnet::nn::weights::read_tensors(&common::fixture("fwd_lenet5.safetensors")).unwrap();
    let w0 = tensors.remove("0.weight").unwrap();
    let write = |name: &str, t: &std::collections::BTreeMap<String, convnet::Tensor<f32>>| {
        let p = root.join(name);
        let list: Vec<(String, convnet::Tensor<f32>)> =
            t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        convnet::nn::weights::write_tensors(&p, &list, None).unwrap();
        p
    };
    let predict_err = |w: &Path| {
        fails_with(
            &convnet(&[
                "predict",
                "--model",
                s(&model),
                "--weights",
                s(w),
                "--input",
                s(&x),
            ]),
            1,
        )
    };
    let missing = write("missing.safetensors", &tensors);
    let err = predict_err(&missing);
    assert!(
        err.contains("`0.weight`") && err.contains("missing") && err.contains("[6, 1, 5, 5]"),
        "{err}"
    );
    tensors.insert("0.weight".into(), w0.clone().reshape(&[6, 25]).unwrap());
    let misshaped = write("misshaped.safetensors", &tensors);
    let err = predict_err(&misshaped);
    assert!(
        err.contains("`0.weight`") && err.contains("[6, 25]") && err.contains("[6, 1, 5, 5]"),
        "{err}"
    );
    tensors.insert("0.weight".into(), w0);
    tensors.insert("99.weight".into(), convnet::Tensor::zeros(&[2]));
    let extra = write("extra.safetensors", &tensors);
    let err = predict_err(&extra);
    assert!(
        err.contains("`99.weight`") && err.contains("not a parameter"),
        "{err}"
    );
    let f64_bytes: Vec<u8> = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &f64_bytes).unwrap();
    let f64_file = root.join("f64.safetensors");
    std::fs::write(
        &f64_file,
        safetensors::serialize(vec![("0.bias", view)], &None).unwrap(),
    )
    .unwrap();
    let err = predict_err(&f64_file);
    assert!(err.contains("`0.bias`") && err.contains("F64"), "{err}");
    // A corrupt image.
    let corrupt = root.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\n broken").unwrap();
    let weights = common::fixture("fwd_lenet5.safetensors");
    let err = fails_with(
        &convnet(&[
            "predict",
            "--model",
            s(&model),
            "--weights",
            s(&weights),
            "--input",
            s(&corrupt),
        ]),
        1,
    );
    assert!(
        err.contains("corrupt.png") && err.contains("cannot decode"),
        "{err}"
    );
    let err = fails_with(
        &convnet(&[
            "filter",
            s(&corrupt),
            "--kernel",
            "sobel-x",
            "--output",
            s(&root.join("f.png")),
        ]),
        1,
    );
    assert!(err.contains("corrupt.png"), "{err}");
    assert!(!root.join("f.png").exists());
}

#[test]
fn hostile_model_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    for (i, layer) in [
        "type = \"conv2d\"\nout_channels = 1000000\nkernel = 5",
        "type = \"conv2d\"\nout_channels = 9223372036854775807\nkernel = 5",
        "type = \"conv2d\"\nout_channels = 1000000000000\nkernel = 5",
        "type = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 1048576",
    ]
    .iter()
    .enumerate()
    {
        let m = dir.path().join(format!("h{i}.toml"));
        std::fs::write(&m, format!("input = [64, 512, 512]\n[[layers]]\n{layer}\n")).unwrap();
        let t = std::time::Instant::now();
        let err = fails_with(&convnet(&["summary", "--model", s(&m)]), 1);
        assert!(
            err.contains(&format!("h{i}.toml"))
                && (err.contains("more than") || err.contains("larger than")),
            "{err}"
        );
        assert!(t.elapsed().as_secs() < 5);
    }
}

#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Epoch 1 trains normally; the step schedule then multiplies the rate by 1e30.
    let o = convnet(&[
        "train",
        "--quiet",
        "--model",
        "mlp",
        "--epochs",
        "3",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--schedule",
        "step:1:1e30",
        "--out",
        s(&run),
    ]);
    let err = fails_with(&o, 1);
    assert!(
        err.contains("epoch 2") && err.contains("batch") && err.contains("lower learning rate"),
        "{err}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    let w = convnet::nn::weights::read_tensors(&run.join("model.safetensors")).unwrap();
    assert!(w.values().all(|t| t.data().iter().all(|v| v.is_finite())));
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn force_replaces_an_old_run_entirely() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    assert!(convnet(&[
        "train",
        "--quiet",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--out",
        s(&run)
    ])
    .status
    .success());
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    assert!(convnet(&[
        "train",
        "--quiet",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--out",
        s(&run),
        "--force"
    ])
    .status
    .success());
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    assert!(
        run.join("notes.txt").exists(),
        "--force removes only the run's own files"
    );
}

#[test]
fn files_whose_headers_claim_more_than_memory_holds_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let t = std::time::Instant::now();
    // A model file whose input has 10^12 channels.
    let m = root.join("wide.toml");
    std::fs::write(
        &m,
        "input = [1000000000000, 28, 28]\n[[layers]]\ntype = \"flatten\"\n",
    )
    .unwrap();
    let err = fails_with(&convnet(&["summary", "--model", s(&m)]), 1);
    assert!(err.contains("wide.toml"), "{err}");
    // Safetensors headers naming a tensor of 10^12 floats over 8 bytes of data, and a header
    // length of 10^12 bytes.
    let header = br#"{"0.weight":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#;
    let mut huge_tensor = (header.len() as u64).to_le_bytes().to_vec();
    huge_tensor.extend_from_slice(header);
    huge_tensor.extend_from_slice(&[0u8; 8]);
    let mut huge_header = 1_000_000_000_000u64.to_le_bytes().to_vec();
    huge_header.extend_from_slice(b"{}");
    let model = common::fixture("fwd_lenet5.toml");
    let x = root.join("x.png");
    image::GrayImage::new(28, 28).save(&x).unwrap();
    for (name, bytes) in [
        ("tensor.safetensors", huge_tensor),
        ("header.safetensors", huge_header),
    ] {
        let w = root.join(name);
        std::fs::write(&w, bytes).unwrap();
        let err = fails_with(
            &convnet(&[
                "predict",
                "--model",
                s(&model),
                "--weights",
                s(&w),
                "--input",
                s(&x),
            ]),
            1,
        );
        assert!(
            err.contains(name) && err.contains("not a valid safetensors file"),
            "{err}"
        );
    }
    // Images whose header claims 100,000×100,000 pixels (grey, read by zune-png first, and
    // RGBA, by `image`) or 65,000×65,000 (a JPEG): as inputs, and in a data folder.
    let weights = common::fixture("fwd_lenet5.safetensors");
    let images = [
        ("grey.png", common::lying_png(100_000, 100_000, 0)),
        ("rgba.png", common::lying_png(100_000, 100_000, 6)),
        ("big.jpg", common::lying_jpeg(65_000, 65_000)),
    ];
    for (name, bytes) in &images {
        let p = root.join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = fails_with(
            &convnet(&[
                "predict",
                "--model",
                s(&model),
                "--weights",
                s(&weights),
                "--input",
                s(&p),
            ]),
            1,
        );
        assert!(err.contains(name) && err.contains("cannot decode"), "{err}");
    }
    let folder = root.join("digits");
    for class in ["0", "1"] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        image::GrayImage::new(28, 28)
            .save(folder.join(class).join("a.png"))
            .unwrap();
    }
    std::fs::write(folder.join("1").join("grey.png"), &images[0].1).unwrap();
    let err = fails_with(
        &convnet(&[
            "eval",
            "--model",
            s(&model),
            "--weights",
            s(&weights),
            "--data",
            s(&folder),
        ]),
        1,
    );
    assert!(err.contains("grey.png"), "{err}");
    // Refused from the headers: no 10-gigabyte allocation, no time spent decoding.
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
}

//! Agreement with PyTorch: forward passes, weight exchange, k training steps and a CLI run,
//! against fixtures made by tests/fixtures/gen_torch.py.
use crate::common::*;
use convnet::loss::LossKind;
use convnet::optim::{OptimizerConfig, OptimizerKind};
use convnet::train::Trainer;
use convnet::{Network, Tensor};
use std::process::Command;

#[test]
fn forward_matches_pytorch_for_every_layer_option() {
    for name in [
        "convs",
        "residual",
        "pools",
        "lenet5",
        "modern_cnn",
        "modern_global",
    ] {
        let mut n = net(
            &format!("fwd_{name}.toml"),
            &format!("fwd_{name}.safetensors"),
        );
        let io = tensors(&format!("fwd_{name}_io.safetensors"));
        let y = n.forward(io["x"].clone(), false).unwrap();
        assert_eq!(y.shape(), io["y"].shape(), "{name}");
        let e = rel_err(y.data(), io["y"].data());
        assert!(e <= 1e-5, "{name}: relative error {e}");
    }
}

#[test]
fn weights_round_trip_under_pytorch_names() {
    let n = net("fwd_residual.toml", "fwd_residual.safetensors");
    let names: Vec<String> = n.named_params().into_iter().map(|(k, _)| k).collect();
    let torch_names: Vec<String> = tensors("fwd_residual.safetensors").into_keys().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, torch_names);
    assert!(
        names.contains(&"2.body.2.weight".to_string())
            && !names.contains(&"2.body.2.bias".to_string())
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    n.save_weights(&p).unwrap();
    let back = convnet::nn::weights::read_tensors(&p).unwrap();
    assert_eq!(back, tensors("fwd_residual.safetensors"));
}

fn case_config(case: &toml::Table) -> (OptimizerConfig, f64, LossKind) {
    let f = |k: &str| case.get(k).and_then(|v| v.as_float()).unwrap_or(0.0);
    let kind: OptimizerKind = case["optimizer"].as_str().unwrap().parse().unwrap();
    let default_wd = if kind == OptimizerKind::AdamW {
        0.01
    } else {
        0.0
    };
    let cfg = OptimizerConfig {
        kind,
        momentum: f("momentum"),
        nesterov: case
            .get("nesterov")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        weight_decay: case
            .get("weight_decay")
            .and_then(|v| v.as_float())
            .unwrap_or(default_wd),
        ..Default::default()
    };
    (
        cfg,
        f("lr"),
        case["loss"].as_str().unwrap().parse().unwrap(),
    )
}

/// k steps of every optimizer × loss case on the network `model` from `init` with the
/// batches of `data`, against PyTorch's results `{prefix}_{case}.safetensors`: each
/// parameter's update within 1e-4 relative, float buffers within 1e-4 of their largest
/// value, counters exactly.
fn k_steps_match(model: &str, init_file: &str, data_file: &str, prefix: &str) {
    let cases: toml::Table = std::fs::read_to_string(fixture("train_cases.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let data = tensors(data_file);
    let (xs, ys) = (&data["x"], &data["y"]); // (steps, B, C, H, W), (steps, B)
    let (steps, b) = (xs.shape()[0], xs.shape()[1]);
    let sample: Vec<usize> = xs.shape()[2..].to_vec();
    let init = state(init_file);
    let cases = cases["case"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let case = case.as_table().unwrap();
        let name = case["name"].as_str().unwrap();
        let (cfg, lr, loss) = case_config(case);
        let n = net(model, init_file);
        let mut t = Trainer::new(n, convnet::optim::Optimizer::new(cfg), loss);
        let per = b * sample.iter().product::<usize>();
        for s in 0..steps {
            let mut shape = vec![b];
            shape.extend(&sample);
            let x = Tensor::from_vec(&shape, xs.data()[s * per..(s + 1) * per].to_vec()).unwrap();
            let labels: Vec<usize> = ys.data()[s * b..(s + 1) * b]
                .iter()
                .map(|&v| v as usize)
                .collect();
            t.step(x, &labels, lr).unwrap();
        }
        let want = state(&format!("{prefix}_{name}.safetensors"));
        let got = t.net.state();
        let params: Vec<String> = t.net.named_params().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            got.floats.keys().collect::<Vec<_>>(),
            want.floats.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (pname, g) in &got.floats {
            let w = &want.floats[pname];
            let e = if params.contains(pname) {
                let w0 = &init.floats[pname];
                let du: Vec<f32> = g.data().iter().zip(w0.data()).map(|(a, b)| a - b).collect();
                let dt: Vec<f32> = w.data().iter().zip(w0.data()).map(|(a, b)| a - b).collect();
                rel_err(&du, &dt)
            } else {
                rel_err(g.data(), w.data())
            };
            assert!(e <= 1e-4, "{name} {pname}: relative error {e}");
        }
        assert_eq!(got.counts, want.counts, "{name}");
    }
}

#[test]
fn k_training_steps_match_pytorch_for_every_optimizer_and_loss() {
    k_steps_match(
        "train_net.toml",
        "train_init.safetensors",
        "train_data.safetensors",
        "train",
    );
}

/// BatchNorm in training mode (batch statistics, running statistics, counters), residual
/// shortcuts, adaptive pooling and the new activations, against PyTorch in float64.
#[test]
fn k_training_steps_of_modern_layers_match_pytorch_float64() {
    k_steps_match(
        "train_modern.toml",
        "train_modern_init.safetensors",
        "train_modern_data.safetensors",
        "train_modern",
    );
}

#[test]
fn cli_training_run_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_convnet"))
        .args([
            "train",
            "--quiet",
            "--no-shuffle",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--optimizer",
            "sgd",
        ])
        .args([
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--nesterov",
            "--weight-decay",
            "0.001",
        ])
        .args(["--schedule", "step:1:0.5", "--augment", "0"])
        .arg("--model")
        .arg(fixture("fwd_lenet5.toml"))
        .arg("--weights")
        .arg(fixture("cli_init.safetensors"))
        .arg("--data")
        .arg(fixture("cli_data"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let got = convnet::nn::weights::read_tensors(&out.join("model.safetensors")).unwrap();
    let init = tensors("cli_init.safetensors");
    let want = tensors("cli_final.safetensors");
    for (name, g) in &got {
        let du: Vec<f32> = g
            .data()
            .iter()
            .zip(init[name].data())
            .map(|(a, b)| a - b)
            .collect();
        let dt: Vec<f32> = want[name]
            .data()
            .iter()
            .zip(init[name].data())
            .map(|(a, b)| a - b)
            .collect();
        let e = rel_err(&du, &dt);
        assert!(e <= 1e-4, "{name}: relative error of the update {e}");
    }
    // The run directory is complete and usable by predict.
    for f in [
        "model.toml",
        "model.safetensors",
        "checkpoint.safetensors",
        "metrics.csv",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let _: Network<f32> = net("fwd_lenet5.toml", "cli_init.safetensors");
}

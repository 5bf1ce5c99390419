//! Central finite differences in f64 against backward, for every layer option and whole networks.
use crate::common;
use convnet::loss::{loss, LossKind};
use convnet::nn::layers::Pass;
use convnet::{ModelSpec, Network, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Adds `delta` to element `i` of the parameter called `name`.
fn nudge(net: &mut Network<f64>, name: &str, i: usize, delta: f64) {
    net.visit_params_mut(&mut |n, p| {
        if n == name {
            p.value.data_mut()[i] += delta;
        }
    });
}

/// E(θ, x) = Σ r ⊙ net(x) with a fixed random r, so dE/d(out) = r.
fn check(spec_text: &str, n: usize, seed: u64) {
    check_in(spec_text, n, seed, None)
}

/// [`check`] with the network run as `pass` says (training mode with a fixed random key,
/// or inference mode with caches); None: training forward, inference-mode energy, as for
/// layers whose modes agree.
fn check_in(spec_text: &str, n: usize, seed: u64, pass: Option<Pass>) {
    let spec = ModelSpec::parse(spec_text, "gradcheck").unwrap();
    let mut net = Network::<f64>::new(spec.clone(), Default::default(), seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let [c, h, w] = spec.input;
    let x: Vec<f64> = (0..n * c * h * w)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let x = Tensor::from_vec(&[n, c, h, w], x).unwrap();
    let out = match pass {
        Some(p) => net.forward_pass(x.clone(), p).unwrap(),
        None => net.forward(x.clone(), true).unwrap(),
    };
    let r: Vec<f64> = (0..out.len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let energy = |net: &mut Network<f64>, x: &Tensor<f64>| -> f64 {
        match pass {
            Some(p) => net.forward_pass(x.clone(), p),
            None => net.forward(x.clone(), false),
        }
        .unwrap()
        .data()
        .iter()
        .zip(&r)
        .map(|(a, b)| a * b)
        .sum()
    };
    net.zero_grad();
    let dx = net.backward_with_input_grad(Tensor::from_vec(out.shape(), r.clone()).unwrap());
    let h = 1e-6;
    let tol = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()));
    // Input gradient.
    for i in (0..x.len()).step_by(1 + x.len() / 40) {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp.data_mut()[i] += h;
        xm.data_mut()[i] -= h;
        let fd = (energy(&mut net, &xp) - energy(&mut net, &xm)) / (2.0 * h);
        assert!(
            tol(dx.data()[i], fd),
            "{}: dx[{i}] {} vs {fd}",
            spec.name,
            dx.data()[i]
        );
    }
    // Parameter gradients.
    let params = net.named_params();
    let mut grads = std::collections::HashMap::new();
    net.visit_params(&mut |name, p| {
        grads.insert(name, p.grad.clone());
    });
    for (name, value) in &params {
        for i in (0..value.len()).step_by(1 + value.len() / 20) {
            nudge(&mut net, name, i, h);
            let ep = energy(&mut net, &x);
            nudge(&mut net, name, i, -2.0 * h);
            let em = energy(&mut net, &x);
            nudge(&mut net, name, i, h);
            let fd = (ep - em) / (2.0 * h);
            let g = grads[name].data()[i];
            assert!(tol(g, fd), "{}: {name}[{i}] {g} vs {fd}", spec.name);
        }
    }
}

fn model(input: &str, layers: &str) -> String {
    format!("name = \"g\"\ninput = {input}\n{layers}")
}

#[test]
fn conv2d_every_option() {
    let convs = [
        "out_channels = 3\nkernel = 3",
        "out_channels = 4\nkernel = [3, 2]\nstride = [2, 1]\npadding = [1, 2]",
        "out_channels = 4\nkernel = 4\npadding = \"same\"",
        "out_channels = 2\nkernel = 3\ndilation = 2\npadding = \"same\"\nbias = false",
        "out_channels = 4\nkernel = 2\ngroups = 2\nstride = 2\npadding = \"valid\"",
        "out_channels = 6\nkernel = [2, 3]\ndilation = [2, 1]\nstride = [1, 2]\npadding = 1\ngroups = 2",
    ];
    for (i, c) in convs.iter().enumerate() {
        let text = model(
            "[2, 7, 8]",
            &format!("[[layers]]\ntype = \"conv2d\"\n{c}\n[[layers]]\ntype = \"flatten\"\n"),
        );
        check(&text, 3, i as u64);
    }
}

#[test]
fn pooling_every_option() {
    let pools = [
        ("maxpool2d", "kernel = 2"),
        (
            "maxpool2d",
            "kernel = 3\nstride = 2\npadding = 1\nceil_mode = true",
        ),
        (
            "maxpool2d",
            "kernel = [2, 3]\nstride = [1, 2]\npadding = [1, 1]",
        ),
        ("avgpool2d", "kernel = 2"),
        (
            "avgpool2d",
            "kernel = 3\nstride = 2\npadding = 1\nceil_mode = true",
        ),
        (
            "avgpool2d",
            "kernel = [2, 3]\nstride = [2, 1]\npadding = [1, 0]\nceil_mode = true",
        ),
        ("subsample", "kernel = 2"),
        ("subsample", "kernel = [3, 1]\nstride = [2, 3]"),
    ];
    for (i, (t, o)) in pools.iter().enumerate() {
        let text = model(
            "[2, 7, 8]",
            &format!("[[layers]]\ntype = \"{t}\"\n{o}\n[[layers]]\ntype = \"flatten\"\n"),
        );
        check(&text, 2, 10 + i as u64);
    }
}

#[test]
fn activations_linear_flatten_residual() {
    for act in ["relu", "sigmoid", "tanh", "identity"] {
        let text = model(
            "[1, 4, 4]",
            &format!("[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 6\n[[layers]]\ntype = \"{act}\"\n[[layers]]\ntype = \"linear\"\nout_features = 3\nbias = false\n"),
        );
        check(&text, 4, 20);
    }
    let res = model(
        "[2, 6, 6]",
        "[[layers]]\ntype = \"residual\"\nlayers = [{ type = \"conv2d\", out_channels = 2, kernel = 3, padding = 1 }, { type = \"tanh\" }, { type = \"residual\", layers = [{ type = \"conv2d\", out_channels = 2, kernel = 2, padding = \"same\" }] }]\n[[layers]]\ntype = \"flatten\"\n",
    );
    check(&res, 2, 21);
}

#[test]
fn whole_networks() {
    for f in [
        "fwd_convs.toml",
        "fwd_residual.toml",
        "fwd_pools.toml",
        "train_net.toml",
    ] {
        let text = std::fs::read_to_string(common::fixture(f)).unwrap();
        check(&text, 2, 30);
    }
}

#[test]
fn every_loss_through_a_network() {
    let text = std::fs::read_to_string(common::fixture("train_net.toml")).unwrap();
    let spec = ModelSpec::parse(&text, "t").unwrap();
    let mut net = Network::<f64>::new(spec, Default::default(), 3);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x = Tensor::from_vec(
        &[3, 2, 10, 10],
        (0..600).map(|_| rng.gen_range(-1.0..1.0)).collect(),
    )
    .unwrap();
    let labels = [1usize, 4, 0];
    for kind in [LossKind::CrossEntropy, LossKind::Square, LossKind::Bce] {
        let out = net.forward(x.clone(), true).unwrap();
        let mut g = vec![0.0; out.len()];
        loss(kind, out.data(), &labels, 5, Some(&mut g));
        net.zero_grad();
        net.backward(Tensor::from_vec(out.shape(), g).unwrap());
        let mut first = None;
        net.visit_params(&mut |name, p| {
            if first.is_none() {
                first = Some((name, p.grad.data()[0]));
            }
        });
        let (name, g0) = first.unwrap();
        let h = 1e-6;
        let mut e = |d: f64| {
            nudge(&mut net, &name, 0, d);
            let o = net.forward(x.clone(), false).unwrap();
            loss(kind, o.data(), &labels, 5, None)
        };
        let ep = e(h);
        let em = e(-2.0 * h);
        e(h);
        let fd = (ep - em) / (2.0 * h);
        assert!(
            (g0 - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
            "{kind:?}: {g0} vs {fd}"
        );
    }
}

/// The batch path of a training step (shards side by side, LeNet's convolution → ReLU →
/// pooling in one pass on the batch-lanes kernels) against the same network taking one sample
/// at a time (none of that): outputs, input gradients and parameter gradients, in f64.
#[test]
fn sharded_fused_batch_matches_one_sample_at_a_time() {
    use convnet::nn::{presets, Init};
    use convnet::{ModelSpec, Network, Tensor};
    let spec = ModelSpec::parse(presets::LENET5, "lenet5").unwrap();
    let mut big = Network::<f64>::new(spec.clone(), Init::Pytorch, 3);
    let mut one = Network::<f64>::new(spec, Init::Pytorch, 3);
    let n = 40; // 2 shards of 20: a whole group of 16 lanes and a part of one
    let mut s = 1u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let x: Vec<f64> = (0..n * 784).map(|_| next()).collect();
    let dy: Vec<f64> = (0..n * 10).map(|_| next()).collect();
    let y = big
        .forward(Tensor::from_vec(&[n, 1, 28, 28], x.clone()).unwrap(), true)
        .unwrap();
    let dx = big.backward_with_input_grad(Tensor::from_vec(&[n, 10], dy.clone()).unwrap());
    for i in 0..n {
        let xi = Tensor::from_vec(&[1, 1, 28, 28], x[i * 784..(i + 1) * 784].to_vec()).unwrap();
        let yi = one.forward(xi, true).unwrap();
        let dxi = one.backward_with_input_grad(
            Tensor::from_vec(&[1, 10], dy[i * 10..(i + 1) * 10].to_vec()).unwrap(),
        );
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-10);
        assert!(
            close(yi.data(), &y.data()[i * 10..(i + 1) * 10]),
            "output of sample {i}"
        );
        assert!(
            close(dxi.data(), &dx.data()[i * 784..(i + 1) * 784]),
            "dx of sample {i}"
        );
    }
    let a = big.named_params();
    assert_eq!(a.len(), 10);
    let mut ga = Vec::new();
    big.visit_params(&mut |name, p| ga.push((name, p.grad.clone())));
    let mut gb = Vec::new();
    one.visit_params(&mut |name, p| gb.push((name, p.grad.clone())));
    for ((na, ta), (nb, tb)) in ga.iter().zip(&gb) {
        assert_eq!(na, nb);
        let scale = tb.max_abs().max(1e-3);
        let err = ta
            .data()
            .iter()
            .zip(tb.data())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-9 * scale, "{na}: {err} against {scale}");
    }
    assert_eq!(
        a.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        [
            "0.weight",
            "0.bias",
            "3.weight",
            "3.bias",
            "7.weight",
            "7.bias",
            "9.weight",
            "9.bias",
            "11.weight",
            "11.bias"
        ]
    );
}

/// Inference on rows of a batch read in place (`infer_rows`: sharded, the first layer on
/// borrowed samples) against the training forward of the same rows, in f64: LeNet-5 (its
/// first layer a fused convolution) and a network whose first layer has no in-place pass.
/// Rows outside the batch are an error.
#[test]
fn inference_on_rows_in_place_matches_forward() {
    use convnet::nn::{presets, Init};
    use convnet::{ModelSpec, Network, Tensor};
    let mlp = model(
        "[2, 5, 5]",
        "[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 7\n",
    );
    let specs = [
        ModelSpec::parse(presets::LENET5, "lenet5").unwrap(),
        ModelSpec::parse(&mlp, "mlp").unwrap(),
    ];
    for spec in specs {
        let mut net = Network::<f64>::new(spec.clone(), Init::Pytorch, 5);
        let [c, h, w] = spec.input;
        let n = 90;
        let x: Vec<f64> = (0..n * c * h * w)
            .map(|i| ((i * 7919) % 1013) as f64 / 1013.0 - 0.5)
            .collect();
        let x = Tensor::from_vec(&[n, c, h, w], x).unwrap();
        for (a, b) in [(0, 90), (3, 74), (17, 18), (40, 40)] {
            let got = net.infer_rows(&x, a..b).unwrap();
            let want = net.forward(x.slice_rows(a, b), true).unwrap();
            assert_eq!(got.shape(), want.shape());
            for (i, (p, q)) in got.data().iter().zip(want.data()).enumerate() {
                assert!(
                    (p - q).abs() < 1e-12,
                    "{} rows {a}..{b} at {i}: {p} vs {q}",
                    spec.name
                );
            }
        }
        assert!(net.infer_rows(&x, 80..91).is_err());
        assert!(net
            .infer_rows(&x, std::ops::Range { start: 5, end: 4 })
            .is_err());
    }
}

/// Every new layer type and key in one network, in training mode (batch statistics, dropout
/// masks of a fixed key) and in inference mode (running statistics), through backward.
#[test]
fn modern_layers_in_both_modes() {
    let text = model(
        "[2, 9, 8]",
        r#"
[[layers]]
type = "conv2d"
out_channels = 4
kernel = 3
padding = 1
bias = false
[[layers]]
type = "batchnorm2d"
momentum = 0.3
[[layers]]
type = "leaky_relu"
negative_slope = 0.2
[[layers]]
type = "dropout2d"
p = 0.25
[[layers]]
type = "residual"
layers = [
  { type = "conv2d", out_channels = 6, kernel = 3, stride = 2, padding = 1 },
  { type = "batchnorm2d", affine = false },
  { type = "elu", alpha = 0.6 },
]
shortcut = [{ type = "conv2d", out_channels = 6, kernel = 1, stride = 2 }, { type = "batchnorm2d" }]
[[layers]]
type = "gelu"
[[layers]]
type = "adaptivemaxpool2d"
output = [3, 2]
[[layers]]
type = "silu"
[[layers]]
type = "adaptiveavgpool2d"
output = [2, 2]
[[layers]]
type = "flatten"
[[layers]]
type = "dropout"
p = 0.3
[[layers]]
type = "linear"
out_features = 5
[[layers]]
type = "batchnorm1d"
[[layers]]
type = "gelu"
approximate = "tanh"
[[layers]]
type = "linear"
out_features = 3
"#,
    );
    check_in(&text, 5, 40, Some(Pass::train(9)));
    check_in(&text, 5, 41, Some(Pass::FROZEN));
}

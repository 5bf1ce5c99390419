//! Definitions of the speed workloads shared by the criterion benches and the timing example:
//! each `setup` builds inputs once and returns the closure that runs one repetition.
#![allow(dead_code)]
use convnet::loss::LossKind;
use convnet::nn::presets;
use convnet::ops::conv::{conv2d_backward, conv2d_forward, Conv2dConfig, Conv2dGeometry};
use convnet::ops::gemm::{matmul, Par, Trans};
use convnet::ops::pool::{maxpool2d_forward, Pool2dConfig, Pool2dGeometry};
use convnet::ops::signal::{filter, FilterConfig, Method};
use convnet::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use convnet::train::Trainer;
use convnet::{ModelSpec, Network, Tensor};
use std::hint::black_box;

pub struct Workload {
    pub name: &'static str,
    pub warmup: usize,
    pub repeats: usize,
    pub setup: fn() -> Box<dyn FnMut()>,
}

/// Deterministic pseudo-random values in [−1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn lenet() -> Network<f32> {
    Network::new(
        ModelSpec::parse(presets::LENET5, "lenet5").expect("preset parses"),
        Default::default(),
        0,
    )
}

fn resnet20() -> Network<f32> {
    Network::new(
        ModelSpec::parse(presets::RESNET20, "resnet20").expect("preset parses"),
        Default::default(),
        0,
    )
}

/// A training step of ResNet-20 (3×32×32, batch 128) with SGD Nesterov, as the preset trains.
fn resnet20_step() -> Box<dyn FnMut()> {
    let opt = Optimizer::new(OptimizerConfig {
        kind: OptimizerKind::Sgd,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
        ..Default::default()
    });
    let mut t = Trainer::new(resnet20(), opt, LossKind::CrossEntropy);
    let x = Tensor::from_vec(&[128, 3, 32, 32], values(128 * 3072, 12)).expect("shape");
    let labels: Vec<usize> = (0..128).map(|i| i % 10).collect();
    Box::new(move || {
        black_box(t.step(x.clone(), &labels, 0.01).expect("step"));
    })
}

/// Which passes a convolution workload runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    /// Forward and backward with the input gradient.
    Both,
    /// Forward and backward without the input gradient (a network's first layer).
    BothNoDx,
}

// The workload table below reads best with the shape spelled out positionally.
#[allow(clippy::too_many_arguments)]
fn conv_case(
    n: usize,
    c: usize,
    hw: usize,
    k: usize,
    ks: usize,
    stride: usize,
    pad: usize,
    pass: Pass,
) -> Box<dyn FnMut()> {
    let cfg = Conv2dConfig {
        kernel: (ks, ks),
        stride: (stride, stride),
        pad_begin: (pad, pad),
        pad_end: (pad, pad),
        ..Default::default()
    };
    let g = Conv2dGeometry::new([c, hw, hw], k, cfg).expect("valid geometry");
    let x = values(n * g.in_len(), 1);
    let w = values(g.weight_len(), 2);
    let b = values(k, 3);
    let dy = values(n * g.out_len(), 4);
    let mut y = vec![0.0f32; n * g.out_len()];
    let (mut dx, mut dw, mut db) = (
        vec![0.0f32; x.len()],
        vec![0.0f32; w.len()],
        vec![0.0f32; k],
    );
    Box::new(move || {
        conv2d_forward(&g, n, &x, &w, Some(&b), &mut y);
        if pass != Pass::Forward {
            let dx = (pass == Pass::Both).then_some(&mut dx[..]);
            conv2d_backward(&g, n, &x, &w, &dy, dx, &mut dw, Some(&mut db));
        }
        black_box(&y);
    })
}

pub fn all() -> Vec<Workload> {
    vec![
        Workload {
            name: "lenet5_train_step_b64",
            warmup: 20,
            repeats: 200,
            setup: || {
                let opt = Optimizer::new(OptimizerConfig {
                    kind: OptimizerKind::Sgd,
                    momentum: 0.9,
                    ..Default::default()
                });
                let mut t = Trainer::new(lenet(), opt, LossKind::CrossEntropy);
                let x = Tensor::from_vec(
                    &[64, 1, 28, 28],
                    values(64 * 784, 5).iter().map(|v| v.abs()).collect(),
                )
                .expect("shape");
                let labels: Vec<usize> = (0..64).map(|i| i % 10).collect();
                Box::new(move || {
                    black_box(t.step(x.clone(), &labels, 0.01).expect("step"));
                })
            },
        },
        Workload {
            name: "lenet5_inference_10k",
            warmup: 2,
            repeats: 10,
            setup: || {
                let mut net = lenet();
                let x = Tensor::from_vec(
                    &[10_000, 1, 28, 28],
                    values(10_000 * 784, 6).iter().map(|v| v.abs()).collect(),
                )
                .expect("shape");
                Box::new(move || {
                    for s in (0..10_000).step_by(500) {
                        black_box(net.infer_rows(&x, s..s + 500).expect("forward"));
                    }
                })
            },
        },
        Workload {
            name: "resnet20_train_step_b128",
            warmup: 3,
            repeats: 15,
            setup: resnet20_step,
        },
        // Inference of 1,024 images of 3×32×32 in batches of 128.
        Workload {
            name: "resnet20_inference_1k",
            warmup: 2,
            repeats: 10,
            setup: || {
                let mut net = resnet20();
                let x =
                    Tensor::from_vec(&[1024, 3, 32, 32], values(1024 * 3072, 13)).expect("shape");
                Box::new(move || {
                    for s in (0..1024).step_by(128) {
                        black_box(net.infer_rows(&x, s..s + 128).expect("forward"));
                    }
                })
            },
        },
        Workload {
            name: "conv2d_n32_c64_56_k64_3x3_fwd",
            warmup: 2,
            repeats: 10,
            setup: || conv_case(32, 64, 56, 64, 3, 1, 1, Pass::Forward),
        },
        Workload {
            name: "conv2d_n32_c64_56_k64_3x3_fwdbwd",
            warmup: 2,
            repeats: 10,
            setup: || conv_case(32, 64, 56, 64, 3, 1, 1, Pass::Both),
        },
        Workload {
            name: "conv2d_n8_c3_224_k64_7x7_s2_fwd",
            warmup: 2,
            repeats: 10,
            setup: || conv_case(8, 3, 224, 64, 7, 2, 3, Pass::Forward),
        },
        // A stem layer: its input needs no gradient.
        Workload {
            name: "conv2d_n8_c3_224_k64_7x7_s2_fwdbwd",
            warmup: 2,
            repeats: 10,
            setup: || conv_case(8, 3, 224, 64, 7, 2, 3, Pass::BothNoDx),
        },
        // LeNet-5's two convolutions at batch 64 (the training step's building blocks).
        Workload {
            name: "conv2d_n64_c1_28_k6_5x5_p2_fwd",
            warmup: 5,
            repeats: 50,
            setup: || conv_case(64, 1, 28, 6, 5, 1, 2, Pass::Forward),
        },
        Workload {
            name: "conv2d_n64_c1_28_k6_5x5_p2_fwdbwd",
            warmup: 5,
            repeats: 50,
            setup: || conv_case(64, 1, 28, 6, 5, 1, 2, Pass::BothNoDx),
        },
        Workload {
            name: "conv2d_n64_c6_14_k16_5x5_fwd",
            warmup: 5,
            repeats: 50,
            setup: || conv_case(64, 6, 14, 16, 5, 1, 0, Pass::Forward),
        },
        Workload {
            name: "conv2d_n64_c6_14_k16_5x5_fwdbwd",
            warmup: 5,
            repeats: 50,
            setup: || conv_case(64, 6, 14, 16, 5, 1, 0, Pass::Both),
        },
        Workload {
            name: "sgemm_1024",
            warmup: 3,
            repeats: 20,
            setup: || {
                let (a, b) = (values(1 << 20, 7), values(1 << 20, 8));
                let mut c = vec![0.0f32; 1 << 20];
                Box::new(move || {
                    matmul(
                        &mut c,
                        &a,
                        Trans::No,
                        &b,
                        Trans::No,
                        1024,
                        1024,
                        1024,
                        false,
                        Par::Rayon,
                    );
                    black_box(&c);
                })
            },
        },
        Workload {
            name: "maxpool_n64_c16_28_2x2",
            warmup: 5,
            repeats: 50,
            setup: || {
                let g = Pool2dGeometry::new([16, 28, 28], Pool2dConfig::default()).expect("valid");
                let x = values(64 * 16 * 784, 9);
                let (mut y, mut a) = (vec![0.0f32; 64 * 16 * 196], vec![0u32; 64 * 16 * 196]);
                Box::new(move || {
                    maxpool2d_forward(&g, &x, &mut y, &mut a);
                    black_box(&y);
                })
            },
        },
        Workload {
            name: "filter_direct_3x3_512",
            warmup: 3,
            repeats: 30,
            setup: || filter_case(3, Method::Direct),
        },
        Workload {
            name: "filter_fft_31x31_512",
            warmup: 3,
            repeats: 30,
            setup: || filter_case(31, Method::Fft),
        },
    ]
}

fn filter_case(k: usize, method: Method) -> Box<dyn FnMut()> {
    let x = Tensor::from_vec(
        &[512, 512],
        values(512 * 512, 10).iter().map(|&v| v as f64).collect(),
    )
    .expect("shape");
    let kt = Tensor::from_vec(
        &[k, k],
        values(k * k, 11).iter().map(|&v| v as f64).collect(),
    )
    .expect("shape");
    let cfg = FilterConfig {
        method,
        ..Default::default()
    };
    Box::new(move || {
        black_box(filter(&x, &kt, &cfg).expect("filter"));
    })
}

//! ONNX export: networks of every layer type and option, exported and run in tract (a
//! second, independent runtime) against convnet's own inference, batches 1 and 7 from one
//! file; the exports are left in target/tmp/onnx for bench/onnx_check.py (onnxruntime).
use crate::common::{convnet, fails, ok, p};
use convnet::nn::layers::Buffer;
use convnet::nn::Init;
use convnet::onnx::{export, ExportOptions, OPSETS};
use convnet::{ModelSpec, Network, Tensor};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use tract_onnx::prelude::{tvec, Framework, InferenceModelExt, IntoRunnable, IntoTValue};

/// (name, model file): together every layer type and every key.
const NETWORKS: &[(&str, &str)] = &[
    (
        "convs",
        r#"
input = [3, 13, 11]
mean = [0.5, 0.4, 0.3]
std = [0.2, 0.25, 0.3]
classes = ["a", "b \"quoted\"", "c", "d", "e"]
[[layers]]
type = "conv2d"
out_channels = 4
kernel = [3, 2]
stride = [2, 1]
padding = [1, 0]
dilation = [1, 2]
[[layers]]
type = "tanh"
[[layers]]
type = "conv2d"
out_channels = 6
kernel = 4
padding = "same"
groups = 2
[[layers]]
type = "sigmoid"
[[layers]]
type = "conv2d"
out_channels = 6
kernel = [2, 3]
padding = "same"
dilation = [2, 1]
groups = 3
bias = false
[[layers]]
type = "maxpool2d"
kernel = 3
stride = 2
padding = 1
ceil_mode = true
[[layers]]
type = "avgpool2d"
kernel = 2
stride = 1
padding = 1
ceil_mode = true
[[layers]]
type = "conv2d"
out_channels = 5
kernel = 2
padding = "valid"
[[layers]]
type = "flatten"
[[layers]]
type = "linear"
out_features = 7
[[layers]]
type = "identity"
[[layers]]
type = "linear"
out_features = 5
bias = false
"#,
    ),
    (
        "pools",
        r#"
input = [2, 15, 30]
[[layers]]
type = "maxpool2d"
kernel = [3, 2]
stride = [2, 3]
padding = [1, 1]
ceil_mode = true
[[layers]]
type = "avgpool2d"
kernel = 2
stride = 2
padding = 1
ceil_mode = true
[[layers]]
type = "avgpool2d"
kernel = [2, 3]
stride = [1, 2]
ceil_mode = true
[[layers]]
type = "subsample"
kernel = [2, 1]
stride = [1, 2]
[[layers]]
type = "maxpool2d"
kernel = 2
stride = 1
[[layers]]
type = "avgpool2d"
kernel = 1
"#,
    ),
    (
        "ceil_overhang",
        r#"
input = [2, 2, 3]
[[layers]]
type = "avgpool2d"
kernel = 3
stride = 2
padding = 1
ceil_mode = true
[[layers]]
type = "maxpool2d"
kernel = 3
stride = 3
ceil_mode = true
[[layers]]
type = "avgpool2d"
kernel = [2, 1]
stride = 2
ceil_mode = true
"#,
    ),
    (
        "modern",
        r#"
input = [3, 11, 9]
[[layers]]
type = "conv2d"
out_channels = 6
kernel = 3
padding = 1
bias = false
[[layers]]
type = "batchnorm2d"
[[layers]]
type = "leaky_relu"
negative_slope = 0.2
[[layers]]
type = "dropout2d"
p = 0.3
[[layers]]
type = "residual"
layers = [
  { type = "conv2d", out_channels = 8, kernel = 3, stride = 2, padding = 1, bias = false },
  { type = "batchnorm2d", eps = 1e-3, momentum = 0.2 },
  { type = "elu", alpha = 0.7 },
  { type = "conv2d", out_channels = 8, kernel = 3, padding = 1 },
  { type = "batchnorm2d", affine = false },
]
shortcut = [
  { type = "conv2d", out_channels = 8, kernel = 1, stride = 2, bias = false },
  { type = "batchnorm2d" },
]
[[layers]]
type = "relu"
[[layers]]
type = "residual"
layers = [{ type = "conv2d", out_channels = 8, kernel = 3, padding = 1 }, { type = "gelu" }]
[[layers]]
type = "adaptivemaxpool2d"
output = [4, 3]
[[layers]]
type = "silu"
[[layers]]
type = "adaptiveavgpool2d"
output = [3, 2]
[[layers]]
type = "flatten"
[[layers]]
type = "dropout"
p = 0.5
[[layers]]
type = "linear"
out_features = 10
[[layers]]
type = "batchnorm1d"
momentum = 0.05
[[layers]]
type = "gelu"
approximate = "tanh"
[[layers]]
type = "elu"
[[layers]]
type = "leaky_relu"
[[layers]]
type = "linear"
out_features = 4
"#,
    ),
    (
        "adaptive",
        r#"
input = [2, 7, 10]
[[layers]]
type = "adaptiveavgpool2d"
output = [3, 4]
[[layers]]
type = "adaptivemaxpool2d"
output = [5, 6]
[[layers]]
type = "adaptiveavgpool2d"
output = [5, 3]
[[layers]]
type = "adaptivemaxpool2d"
output = [5, 1]
[[layers]]
type = "batchnorm2d"
affine = false
eps = 0.01
[[layers]]
type = "adaptivemaxpool2d"
output = 1
[[layers]]
type = "adaptiveavgpool2d"
output = 1
"#,
    ),
    (
        "upsampling_adaptive",
        r#"
input = [1, 2, 3]
[[layers]]
type = "adaptivemaxpool2d"
output = [3, 5]
[[layers]]
type = "adaptiveavgpool2d"
output = [4, 4]
[[layers]]
type = "flatten"
[[layers]]
type = "batchnorm1d"
affine = false
[[layers]]
type = "dropout"
p = 0.9
"#,
    ),
];

/// The network of `text` with seeded weights, and BatchNorm's running statistics and affine
/// parameters made non-trivial so that inference mode is what is compared.
fn network(name: &str, text: &str) -> Network<f32> {
    let spec = ModelSpec::parse(text, name).unwrap();
    let mut net = Network::<f32>::new(spec, Init::Pytorch, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    net.visit_buffers_mut(&mut |name, b| {
        if let Buffer::Float(t) = b {
            let var = name.ends_with("running_var");
            for v in t.data_mut() {
                *v = if var {
                    rng.gen_range(0.5..1.5)
                } else {
                    rng.gen_range(-0.5..0.5)
                };
            }
        }
    });
    let bn_affine: Vec<String> = net
        .summary()
        .iter()
        .filter(|r| r.kind.starts_with("batchnorm"))
        .map(|r| format!("{}.", r.index))
        .collect();
    net.visit_params_mut(&mut |name, p| {
        if bn_affine
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()))
        {
            for v in p.value.data_mut() {
                *v += rng.gen_range(-0.3..0.3);
            }
        }
    });
    net
}

fn input(net: &Network<f32>, n: usize, seed: u64) -> Tensor<f32> {
    let [c, h, w] = net.spec().input;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..n * c * h * w)
        .map(|_| rng.gen_range(0.0..1.0))
        .collect();
    Tensor::from_vec(&[n, c, h, w], data).unwrap()
}

/// Runs an ONNX model in tract on x.
fn tract_run(bytes: &[u8], x: &Tensor<f32>) -> (Vec<usize>, Vec<f32>) {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let arr =
        tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(x.shape(), x.data().to_vec())
            .unwrap();
    let out = model
        .run(tvec!(tract_onnx::prelude::Tensor::from(arr).into_tvalue()))
        .unwrap();
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    (view.shape().to_vec(), view.iter().copied().collect())
}

/// Largest difference relative to the largest output.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn exports_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tmp/onnx");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_npy(path: &std::path::Path, t: &Tensor<f32>) {
    convnet::data::npy::write_npy_f32(path, t.shape(), t.data()).unwrap();
}

#[test]
fn every_layer_runs_in_tract_as_in_convnet() {
    let dir = exports_dir();
    for opset in [13, convnet::onnx::DEFAULT_OPSET, 18, 20, *OPSETS.end()] {
        for (name, text) in NETWORKS {
            let mut net = network(name, text);
            let model = export(&net, &ExportOptions { opset }, name).unwrap();
            let bytes = model.encode_to_vec();
            for n in [1, 7] {
                let x = input(&net, n, n as u64);
                let want = net.forward(x.clone(), false).unwrap();
                let (shape, got) = tract_run(&bytes, &x);
                assert_eq!(shape, [n, net.output_len()], "{name} opset {opset}");
                let err = relative_error(&got, want.data());
                assert!(err <= 1e-5, "{name} opset {opset} batch {n}: {err:e}");
                if opset == convnet::onnx::DEFAULT_OPSET && n == 7 {
                    std::fs::write(dir.join(format!("{name}.onnx")), &bytes).unwrap();
                    write_npy(&dir.join(format!("{name}.input.npy")), &x);
                    write_npy(&dir.join(format!("{name}.expected.npy")), &want);
                }
            }
        }
    }
}

#[test]
fn the_model_carries_names_preprocessing_and_a_symbolic_batch() {
    let (name, text) = NETWORKS[0];
    let net = network(name, text);
    let m = export(&net, &ExportOptions::default(), name).unwrap();
    let meta: Vec<(&str, &str)> = m
        .metadata_props
        .iter()
        .map(|e| (e.key(), e.value()))
        .collect();
    let classes = meta.iter().find(|(k, _)| *k == "classes").unwrap().1;
    assert_eq!(classes, r#"["a","b \"quoted\"","c","d","e"]"#);
    let model_file = meta.iter().find(|(k, _)| *k == "convnet_model").unwrap().1;
    assert_eq!(
        ModelSpec::parse(model_file, "metadata").unwrap(),
        *net.spec()
    );
    let g = m.graph.as_ref().unwrap();
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type()).collect();
    assert_eq!(&ops[..2], ["Sub", "Div"], "normalisation first");
    assert_eq!(g.input[0].name(), "input");
    assert_eq!(g.output[0].name(), "logits");
    assert_eq!(m.opset_import[0].version(), convnet::onnx::DEFAULT_OPSET);
    // Inference mode: no Dropout node; the divisible adaptive pool is one pooling node.
    let (name, text) = NETWORKS[3];
    let m = export(&network(name, text), &ExportOptions::default(), name).unwrap();
    let ops: Vec<&str> = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type())
        .collect();
    assert!(!ops.contains(&"Dropout"), "{ops:?}");
    assert_eq!(
        ops.iter().filter(|o| **o == "BatchNormalization").count(),
        5
    );
}

#[test]
fn an_unsupported_opset_is_refused() {
    let (name, text) = NETWORKS[1];
    let net = network(name, text);
    for opset in [12, 22] {
        let e = export(&net, &ExportOptions { opset }, name)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("operator set {opset}")) && e.contains("13 to 21"),
            "{e}"
        );
    }
}

#[test]
fn export_command_writes_a_run_as_onnx_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let (name, text) = NETWORKS[3];
    let net = network(name, text);
    std::fs::write(run.join("model.toml"), net.spec().to_toml()).unwrap();
    net.save_weights(&run.join("model.safetensors")).unwrap();
    let out = dir.path().join("m.onnx");
    let o = ok(&convnet(&[
        "export",
        "--model",
        p(&run),
        "--output",
        p(&out),
        "--opset",
        "18",
    ]));
    assert!(
        o.contains("operator set 18") && o.contains("[batch, 4]"),
        "{o}"
    );
    let bytes = std::fs::read(&out).unwrap();
    let x = input(&net, 3, 5);
    let want = network(name, text).forward(x.clone(), false).unwrap();
    let (_, got) = tract_run(&bytes, &x);
    assert!(relative_error(&got, want.data()) <= 1e-5);

    // Errors: one message, no panic, the earlier file untouched, no temporary left.
    let e = fails(&convnet(&[
        "export",
        "--model",
        p(&run),
        "--output",
        p(&out),
        "--opset",
        "9",
    ]));
    assert!(e.contains("operator set 9"), "{e}");
    let e = fails(&convnet(&[
        "export",
        "--model",
        "lenet5",
        "--output",
        p(&out),
    ]));
    assert!(e.contains("needs weights"), "{e}");
    let e = fails(&convnet(&[
        "export",
        "--model",
        p(&run),
        "--output",
        p(&dir.path().join("no/such/dir/m.onnx")),
    ]));
    assert!(e.contains("no/such/dir"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

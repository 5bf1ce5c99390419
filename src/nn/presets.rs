//! Built-in model files, usable by name wherever a model file is accepted.

/// LeNet-5 (61,706 parameters) with the recipe of the main job in its [train] table.
pub const LENET5: &str = r#"name = "lenet5"
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
type = "conv2d"
out_channels = 16
kernel = 5

[[layers]]
type = "relu"

[[layers]]
type = "maxpool2d"
kernel = 2

[[layers]]
type = "flatten"

[[layers]]
type = "linear"
out_features = 120

[[layers]]
type = "relu"

[[layers]]
type = "linear"
out_features = 84

[[layers]]
type = "relu"

[[layers]]
type = "linear"
out_features = 10

[train]
optimizer = "adamw"
lr = 0.003
weight_decay = 0.1
schedule = "cosine"
epochs = 40
batch_size = 32
augment = 2
"#;

/// A one-hidden-layer perceptron for 28×28 digits.
pub const MLP: &str = r#"name = "mlp"
input = [1, 28, 28]

[[layers]]
type = "flatten"

[[layers]]
type = "linear"
out_features = 128

[[layers]]
type = "relu"

[[layers]]
type = "linear"
out_features = 10
"#;

/// A small residual CNN: f(z) = z + g(z) blocks between convolutions.
pub const RESNET_SMALL: &str = r#"name = "resnet-small"
input = [1, 28, 28]

[[layers]]
type = "conv2d"
out_channels = 16
kernel = 3
padding = 1

[[layers]]
type = "relu"

[[layers]]
type = "residual"
layers = [
  { type = "conv2d", out_channels = 16, kernel = 3, padding = "same" },
  { type = "relu" },
  { type = "conv2d", out_channels = 16, kernel = 3, padding = "same" },
]

[[layers]]
type = "relu"

[[layers]]
type = "maxpool2d"
kernel = 2

[[layers]]
type = "conv2d"
out_channels = 32
kernel = 3
padding = 1

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
"#;

/// (name, model file text) of every preset.
pub const PRESETS: [(&str, &str); 3] = [
    ("lenet5", LENET5),
    ("mlp", MLP),
    ("resnet-small", RESNET_SMALL),
];

/// The model file text of a preset, if `name` is one.
pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

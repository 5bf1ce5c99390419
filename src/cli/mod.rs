//! Command-line interface: argument definitions and the code behind each subcommand.
mod commands;
mod model_arg;
mod plots;
mod progress;
#[cfg(feature = "serve")]
mod serve;
mod signal;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub use commands::run;

/// Exit status for an error: 2 for bad command-line usage, 130 for Ctrl-C, 1 otherwise.
pub fn exit_code(e: &crate::Error) -> i32 {
    match e {
        crate::Error::Invalid(_) => 2,
        crate::Error::Interrupted { .. } => 130,
        _ => 1,
    }
}

/// Convolutional neural networks: define, train, evaluate and inspect them.
#[derive(Parser, Debug)]
#[command(name = "convnet", version, about)]
pub struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

/// What `convnet serve` allows a client: connections, and time for each part of a request.
#[cfg(feature = "serve")]
#[derive(clap::Args, Debug, Clone)]
pub struct ServeLimitArgs {
    /// Connections open at once; past them new ones are answered 503 (default: sized from
    /// the open-file limit, raised to its hard limit).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds from a request head's first byte to its end.
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout_secs: f64,
    /// Seconds a body may take beyond its size at --min-body-rate.
    #[arg(long, default_value_t = 10.0)]
    pub body_timeout_secs: f64,
    /// Slowest upload accepted, in bytes per second.
    #[arg(long, default_value_t = 16384)]
    pub min_body_rate: u64,
    /// Seconds a kept-alive connection may wait for its next request.
    #[arg(long, default_value_t = 60.0)]
    pub idle_timeout_secs: f64,
    /// On SIGTERM or Ctrl-C, seconds the requests in flight have to finish.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout_secs: f64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show each layer's output shape and parameter count.
    Summary {
        /// Model file, preset name (lenet5, mlp, resnet-small) or run directory.
        #[arg(long, default_value = "lenet5")]
        model: String,
    },
    /// Run a trained network on images.
    Predict {
        #[command(flatten)]
        trained: TrainedArgs,
        /// A .npy float32 [N, C, H, W] array, an IDX image file, or PNG/JPEG images.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Fit images of another size than the model's input (shorter side, centre crop).
        #[arg(long)]
        resize: bool,
        /// Write the raw outputs as float32 [N, outputs] to this .npy file.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Train a network (default: LeNet-5 on the embedded MNIST digits).
    Train(Box<TrainArgs>),
    /// Write a trained network as an ONNX model (inference mode, [0, 1] pixels in, logits out).
    Export {
        #[command(flatten)]
        trained: TrainedArgs,
        /// The .onnx file to write.
        #[arg(long)]
        output: PathBuf,
        /// ONNX operator set (13 to 21).
        #[arg(long, default_value_t = crate::onnx::DEFAULT_OPSET)]
        opset: i64,
    },
    /// Test accuracy, per-class accuracy and the confusion matrix of a trained network.
    Eval {
        #[command(flatten)]
        trained: TrainedArgs,
        /// Data directory (IDX, npy, CIFAR-10 batches or image folders); default: the
        /// embedded digits.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        images: ImageArgs,
        /// Confusion-matrix image (default: confusion.png in the run directory).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Convolve or correlate an array or image with kernels, exactly as scipy.signal does.
    Filter {
        /// A .npy array (1-D or 2-D, float32 or float64) or a PNG/JPEG image (as grayscale in [0, 1]).
        input: PathBuf,
        /// A .npy file, an inline matrix ("1,0,-1;2,0,-2;1,0,-1") or a name: sobel-x, sobel-y,
        /// laplacian, sharpen, box:N, gaussian:SIGMA, identity. Repeat for several responses.
        #[arg(long = "kernel", required = true)]
        kernels: Vec<String>,
        /// full, same or valid (default: same for images, full for arrays, as scipy).
        #[arg(long)]
        mode: Option<String>,
        /// fill, wrap or symm.
        #[arg(long, default_value = "fill")]
        boundary: String,
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        fill_value: f64,
        /// auto (the cheaper by estimated cost), direct or fft.
        #[arg(long, default_value = "auto")]
        method: String,
        /// Cross-correlation (no kernel flip), what deep nets call convolution.
        #[arg(long)]
        correlate: bool,
        /// Keep every S-th response along each axis.
        #[arg(long, default_value_t = 1)]
        stride: usize,
        /// .npy (the exact response of one kernel) or .png (the image beside each response).
        #[arg(long)]
        output: PathBuf,
    },
    /// Max pooling, average pooling or subsampling of a matrix or image.
    Pool {
        /// A 2-D .npy array or a PNG/JPEG image.
        input: PathBuf,
        #[arg(long, value_enum)]
        kind: signal::PoolKind,
        /// Window size: N or H,W.
        #[arg(long)]
        kernel: String,
        /// Step: N or H,W (default: the window size).
        #[arg(long)]
        stride: Option<String>,
        /// .npy or .png.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Figures: the activation functions, learned filters.
    Plot {
        #[command(subcommand)]
        what: PlotCommand,
    },
    /// A local web page for a trained model: draw or drop an image, see every layer respond.
    #[cfg(feature = "serve")]
    Serve {
        #[command(flatten)]
        trained: TrainedArgs,
        /// Data directory whose test images the page offers as examples (default: the
        /// embedded digits, for 1×28×28 models).
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        images: ImageArgs,
        /// Address to listen on; another than 127.0.0.1 opens the page to the network.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Largest image accepted, in MB.
        #[arg(long, default_value_t = 8)]
        max_body_mb: usize,
        #[command(flatten)]
        limits: ServeLimitArgs,
    },
    /// Merge consecutive linear layers (with only identity between) into one, and save the smaller model.
    Collapse {
        #[command(flatten)]
        trained: TrainedArgs,
        /// Directory for the collapsed model.toml and model.safetensors.
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum PlotCommand {
    /// Activation functions, one panel each (the lecture's identity, sigmoid, tanh and ReLU).
    Activations {
        /// Add the derivative curves.
        #[arg(long)]
        derivatives: bool,
        /// Comma-separated activation layer types: identity, sigmoid, tanh, relu, leaky_relu,
        /// elu, gelu, silu.
        #[arg(long, default_value = "identity,sigmoid,tanh,relu")]
        functions: String,
        /// .png or .svg.
        #[arg(long, default_value = "activations.png")]
        output: PathBuf,
    },
    /// The first convolution layer's filters and their responses on one digit.
    Filters {
        #[command(flatten)]
        trained: TrainedArgs,
        /// An image to filter (default: the first embedded test digit).
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long, default_value = "filters.png")]
        output: PathBuf,
    },
}

/// A trained network: its model and where its weights come from.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainedArgs {
    /// Model file, preset or run directory (a run directory brings its weights).
    #[arg(long)]
    pub model: String,
    /// Weights (.safetensors); optional when --model is a run directory.
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

/// How image files are read.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ImageArgs {
    /// Fit images of another size than the model's input: shorter side to the input size,
    /// then a centre crop (antialiased).
    #[arg(long)]
    pub resize: bool,
    /// Skip unreadable or corrupt image files (and count them) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Keep an image folder decoded in memory when its pixels fit this many MiB; a larger one
    /// is read from disk at every batch, a few batches ahead (bounded memory).
    #[arg(long, value_name = "MB", default_value_t = crate::data::stream::DEFAULT_CACHE_MB)]
    pub cache_mb: usize,
}

impl Default for ImageArgs {
    fn default() -> Self {
        ImageArgs {
            resize: false,
            skip_bad: false,
            cache_mb: crate::data::stream::DEFAULT_CACHE_MB,
        }
    }
}

#[derive(clap::Args, Debug, Default)]
pub struct TrainArgs {
    /// Model file or preset name.
    #[arg(long, default_value = "lenet5")]
    pub model: String,
    /// Start from these weights instead of a random initialisation.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Data directory: MNIST IDX files, npy arrays, CIFAR-10 binary batches, or image folders
    /// (DIR/train/<class>/*.png|jpg [+ DIR/test/<class>/], or DIR/<class>/*); default: the
    /// embedded MNIST subset.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Hold out this fraction of each class of a single image folder (DIR/<class>/*) as the
    /// test set (seeded by --seed).
    #[arg(long)]
    pub val_split: Option<f64>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// sgd, adam or adamw.
    #[arg(long)]
    pub optimizer: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    pub momentum: Option<f64>,
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// constant, cosine or step:EVERY[:GAMMA].
    #[arg(long)]
    pub schedule: Option<String>,
    /// cross-entropy, square or bce.
    #[arg(long)]
    pub loss: Option<String>,
    /// Random shifts of up to this many pixels.
    #[arg(long)]
    pub augment: Option<usize>,
    /// torchvision's RandomCrop(size, padding=P): zero padding P, then a random crop (the
    /// same shifts as --augment P).
    #[arg(long)]
    pub crop_padding: Option<usize>,
    /// torchvision's RandomHorizontalFlip: mirror each training image with probability 1/2.
    #[arg(long)]
    pub hflip: bool,
    /// pytorch, kaiming or xavier.
    #[arg(long)]
    pub init: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Batches in file order.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Run directory (default: runs/<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite an existing run directory.
    #[arg(long)]
    pub force: bool,
    /// Continue the run in this directory from its last completed epoch.
    #[arg(long, conflicts_with_all = ["model", "weights", "out"])]
    pub resume: Option<PathBuf>,
    /// No progress bars (one line per epoch only).
    #[arg(long)]
    pub quiet: bool,
}

//! convnet: convolutional neural networks: kernels, layers, model files, training, weights.
//!
//! A network is built from a model file (TOML, or a preset) and runs in f32:
//!
//! ```
//! use convnet::nn::{presets, Init};
//! use convnet::{ModelSpec, Network, Tensor};
//!
//! let spec = ModelSpec::parse(presets::LENET5, "lenet5")?;
//! let mut net = Network::<f32>::new(spec, Init::Pytorch, 0);
//! assert_eq!(net.param_count(), 61_706);
//! let logits = net.forward(Tensor::zeros(&[2, 1, 28, 28]), false)?; // (N, 10)
//! assert_eq!(logits.shape(), &[2, 10]);
//! # Ok::<(), convnet::Error>(())
//! ```
//!
//! One training step with PyTorch's SGD and cross-entropy:
//!
//! ```
//! use convnet::loss::LossKind;
//! use convnet::nn::presets;
//! use convnet::optim::{Optimizer, OptimizerConfig};
//! use convnet::train::Trainer;
//! use convnet::{ModelSpec, Network, Tensor};
//!
//! let net = Network::new(ModelSpec::parse(presets::MLP, "mlp")?, Default::default(), 0);
//! let opt = Optimizer::new(OptimizerConfig { momentum: 0.9, ..Default::default() });
//! let mut trainer = Trainer::new(net, opt, LossKind::CrossEntropy);
//! let loss = trainer.step(Tensor::zeros(&[4, 1, 28, 28]), &[0, 1, 2, 3], 0.01)?;
//! assert!((loss - 10f64.ln()).abs() < 0.5);
//! # Ok::<(), convnet::Error>(())
//! ```
//!
//! scipy.signal-exact filtering (here the lecture's 5×5 input and 2×2 filter):
//!
//! ```
//! use convnet::ops::signal::{filter, FilterConfig, Mode};
//! use convnet::Tensor;
//!
//! let x = Tensor::from_vec(&[5, 5], (0..25).map(f64::from).collect())?;
//! let k = Tensor::from_vec(&[2, 2], vec![1.0, 0.0, 0.0, -1.0])?;
//! let cfg = FilterConfig { mode: Mode::Valid, correlate: true, ..Default::default() };
//! let h = filter(&x, &k, &cfg)?;
//! assert_eq!(h.shape(), &[4, 4]);
//! assert!(h.data().iter().all(|&v| v == -6.0));
//! # Ok::<(), convnet::Error>(())
//! ```
pub mod alloc;
#[cfg(feature = "cli")]
pub mod cli;
pub mod data;
pub mod dist;
pub mod error;
pub mod io;
pub mod loss;
pub mod nn;
pub mod onnx;
pub mod ops;
pub mod optim;
#[cfg(feature = "cli")]
pub mod plot;
#[cfg(feature = "serve")]
pub mod serve;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use nn::{ModelSpec, Network};
pub use tensor::{Float, Tensor};

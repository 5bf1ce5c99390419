//! convnet: convolutional neural networks: kernels, layers, model files, training, weights.
pub mod cli;
pub mod data;
pub mod error;
pub mod io;
pub mod loss;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use nn::{ModelSpec, Network};
pub use tensor::{Float, Tensor};

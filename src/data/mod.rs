//! Reading data: IDX (MNIST), npy arrays, CIFAR-10 batches, PNG/JPEG images and image folders,
//! and the training sets built from them.
pub mod cifar;
pub mod dataset;
pub mod folder;
pub mod idx;
pub mod image;
pub mod npy;
pub mod stream;

pub use dataset::{DataSplit, Dataset, LoadOptions, Pixels};

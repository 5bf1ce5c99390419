//! Reading data: IDX (MNIST), npy arrays, PNG/JPEG images, and training sets built from them.
pub mod dataset;
pub mod idx;
pub mod image;
pub mod npy;

pub use dataset::{DataSplit, Dataset, Pixels};

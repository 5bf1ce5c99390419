//! The integration tests, as one crate: each test crate instantiates the library's generic
//! kernels anew at opt-level 3, so seven crates built them seven times (a rebuild of the
//! tests took 7 min 20 s of the 2-core machine's time before they were merged).
mod cli;
mod common;
mod data_sources;
mod faults;
mod gradcheck;
mod onnx;
mod ranks;
mod resume;
mod robustness;
#[cfg(feature = "serve")]
mod serve;
mod shapes_prop;
mod signal;
mod torch_fixtures;

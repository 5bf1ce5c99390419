//! Layers, networks, model files, presets and weight files.
pub mod collapse;
mod dag;
pub mod fuse;
pub mod graph;
pub mod init;
pub mod joins;
pub mod keys;
pub mod layers;
pub mod network;
pub mod presets;
mod relay;
pub mod spec;
pub mod weights;

pub use init::Init;
pub use layers::LayerSpec;
pub use network::{BuildOptions, Network, SummaryRow};
pub use spec::ModelSpec;

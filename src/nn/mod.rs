//! Layers, networks, model files, presets and weight files.
pub mod collapse;
pub mod init;
pub mod layers;
pub mod network;
pub mod presets;
pub mod spec;
pub mod weights;

pub use init::Init;
pub use network::{Network, SummaryRow};
pub use spec::{LayerSpec, ModelSpec};

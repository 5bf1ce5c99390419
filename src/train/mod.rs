//! Training: the loop, its options and recipe, metrics, checkpoints and evaluation.
pub mod eval;
pub mod model_file;
pub mod options;
pub mod recipe;
pub mod trainer;

pub use eval::{evaluate, Evaluation};
pub use model_file::ModelFile;
pub use options::TrainOptions;
pub use trainer::{train, Observer, RunPaths, Silent, Start, Trainer};

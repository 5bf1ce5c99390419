//! Resolving a `--model` argument: a preset name, a model file, or a run directory.
use crate::error::{Error, Result};
use crate::nn::presets::{preset, PRESETS};
use crate::nn::ModelSpec;
use crate::train::{recipe::TrainRecipe, ModelFile};
use std::path::{Path, PathBuf};

/// A model spec and, for a run directory, its weights file.
pub struct ModelArg {
    pub spec: ModelSpec,
    /// The model file's `[train]` table.
    pub recipe: TrainRecipe,
    pub run_weights: Option<PathBuf>,
    /// Named a preset (which takes the data's sample shape when training).
    pub preset: bool,
}

pub fn load_model(arg: &str) -> Result<ModelArg> {
    let path = Path::new(arg);
    if path.is_dir() {
        let file = path.join("model.toml");
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let m = ModelFile::parse(&text, &file.display().to_string())?;
        let w = path.join("model.safetensors");
        return Ok(ModelArg {
            spec: m.spec,
            recipe: m.recipe,
            run_weights: w.is_file().then_some(w),
            preset: false,
        });
    }
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let m = ModelFile::parse(&text, arg)?;
        return Ok(ModelArg {
            spec: m.spec,
            recipe: m.recipe,
            run_weights: None,
            preset: false,
        });
    }
    if let Some(text) = preset(arg) {
        let m = ModelFile::parse(text, &format!("preset {arg}"))?;
        return Ok(ModelArg {
            spec: m.spec,
            recipe: m.recipe,
            run_weights: None,
            preset: true,
        });
    }
    let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
    Err(Error::invalid(format!(
        "{arg}: no such model file, run directory or preset (presets: {})",
        names.join(", ")
    )))
}

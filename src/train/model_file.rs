//! A model file as a whole: the network (`nn::ModelSpec`) and the training recipe of its
//! `[train]` table, read and written together.
use super::recipe::TrainRecipe;
use crate::error::{Error, Result};
use crate::nn::spec::{parse_toml, RECIPE_TABLE};
use crate::nn::ModelSpec;
use toml::Value;

/// A parsed model file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    pub spec: ModelSpec,
    /// The model's recommended training recipe (the `[train]` table; empty when absent).
    pub recipe: TrainRecipe,
}

impl ModelFile {
    /// Parses and checks a model file's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<ModelFile> {
        let table = parse_toml(text, source)?;
        let spec = ModelSpec::from_table(&table, source)?;
        let err = |msg: String| Error::Model {
            source_name: source.into(),
            layer: None,
            msg,
        };
        let recipe = match table.get(RECIPE_TABLE) {
            None => TrainRecipe::default(),
            Some(Value::Table(t)) => {
                TrainRecipe::from_table(t).map_err(|e| err(format!("[{RECIPE_TABLE}]: {e}")))?
            }
            Some(v) => return Err(err(format!("`{RECIPE_TABLE}` must be a table, got {v}"))),
        };
        Ok(ModelFile { spec, recipe })
    }

    /// Canonical TOML text that parses back to an equal model file.
    pub fn to_toml(&self) -> String {
        let mut s = self.spec.to_toml();
        let recipe = self.recipe.to_toml();
        if !recipe.is_empty() {
            s.push_str(&format!("\n[{RECIPE_TABLE}]\n"));
            s.push_str(&recipe);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::presets;

    #[test]
    fn network_and_recipe_round_trip() {
        for (name, text) in presets::PRESETS {
            let m = ModelFile::parse(text, name).unwrap();
            assert_eq!(m.spec, ModelSpec::parse(text, name).unwrap());
            assert_eq!(ModelFile::parse(&m.to_toml(), name).unwrap(), m);
        }
        let m = ModelFile::parse(presets::LENET5, "lenet5").unwrap();
        assert_eq!((m.recipe.epochs, m.recipe.batch_size), (Some(40), Some(32)));
        let e = ModelFile::parse(
            "input = [1, 2, 2]\ntrain = 3\n[[layers]]\ntype = \"relu\"\n",
            "m",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`train` must be a table"), "{e}");
    }
}

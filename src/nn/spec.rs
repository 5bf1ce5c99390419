//! The model file: a TOML description of a network, parsed into typed layer specs with
//! errors that name the layer and the key, and written back in canonical form.
use super::graph::{flatten, parse_node, write_nodes, Graph, GraphError, Node, Op};
use super::layers::LayerSpec;
use crate::error::{Error, Result};
use std::fmt::Write as _;
use toml::Value;

pub use super::keys::MAX_SIZE;

/// Largest number of parameters, and of activations per sample, a model may have
/// (2²⁸ float32 = 1 GiB): a hostile model file is refused before anything is allocated.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// Product of dimensions, or None on overflow.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// A parsed, shape-checked model file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    /// [channels, height, width] of one input sample.
    pub input: [usize; 3],
    /// The network's nodes ([`super::graph`]): a chain of layers, or a graph.
    pub layers: Vec<Node>,
    /// Names of the output classes (`classes = [...]`), one per output; empty when unnamed
    /// (a class is then its index as text: see [`ModelSpec::class_name`]).
    pub classes: Vec<String>,
    /// Per-channel normalisation of [0, 1] pixels before the first layer, (x − mean) / std
    /// (`mean = [...]`, `std = [...]`, one value per input channel); empty when absent.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The top-level table of a model file that is not the network's: the training recipe
/// (`crate::train::model_file` reads it); the network spec passes over it.
pub const RECIPE_TABLE: &str = "train";

impl ModelSpec {
    /// Parses and shape-checks a model file's network (a `[train]` table is passed over);
    /// `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<ModelSpec> {
        Self::from_table(&parse_toml(text, source)?, source)
    }

    /// [`ModelSpec::parse`] of a model file's parsed TOML.
    pub fn from_table(table: &toml::Table, source: &str) -> Result<ModelSpec> {
        let top_err = |msg: String| Error::Model {
            source_name: source.into(),
            layer: None,
            msg,
        };
        for k in table.keys() {
            if ![
                "name",
                "input",
                "classes",
                "mean",
                "std",
                "layers",
                RECIPE_TABLE,
            ]
            .contains(&k.as_str())
            {
                return Err(top_err(format!(
                    "unknown top-level key `{k}` (known: name, input, classes, mean, std, layers, train)"
                )));
            }
        }
        let name = match table.get("name") {
            None => "model".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(top_err(format!("key `name` must be a string, got {v}"))),
        };
        let input = match table.get("input") {
            Some(Value::Array(a)) if a.len() == 3 => {
                let mut dims = [0usize; 3];
                for (d, v) in dims.iter_mut().zip(a) {
                    *d = match v.as_integer() {
                        Some(i) if i > 0 && i as u64 <= MAX_SIZE as u64 => i as usize,
                        _ => return Err(top_err(format!("key `input` must be [channels, height, width] of positive integers, got {v}"))),
                    };
                }
                dims
            }
            Some(v) => {
                return Err(top_err(format!(
                    "key `input` must be [channels, height, width], got {v}"
                )))
            }
            None => {
                return Err(top_err(
                    "missing required key `input` = [channels, height, width]".into(),
                ))
            }
        };
        let layers = match table.get("layers") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(_) => {
                return Err(top_err(
                    "`layers` must be a non-empty array of [[layers]] tables".into(),
                ))
            }
            None => return Err(top_err("missing [[layers]]".into())),
        };
        let layers = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let path = l
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| i.to_string(), str::to_string);
                parse_node(l, source, path)
            })
            .collect::<Result<Vec<_>>>()?;
        let classes = match table.get("classes") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(top_err(format!(
                        "key `classes` must be an array of strings, got {v}"
                    ))),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(v) => {
                return Err(top_err(format!(
                    "key `classes` must be an array of strings, got {v}"
                )))
            }
        };
        let channel_values = |key: &str| -> Result<Vec<f32>> {
            let bad = || {
                top_err(format!(
                    "key `{key}` must be an array of {} numbers (one per input channel)",
                    input[0]
                ))
            };
            match table.get(key) {
                None => Ok(Vec::new()),
                Some(Value::Array(a)) if a.len() == input[0] => a
                    .iter()
                    .map(|v| match v {
                        Value::Float(f) if f.is_finite() => Ok(*f as f32),
                        Value::Integer(i) => Ok(*i as f32),
                        _ => Err(bad()),
                    })
                    .collect(),
                Some(_) => Err(bad()),
            }
        };
        let (mean, std) = (channel_values("mean")?, channel_values("std")?);
        if mean.is_empty() != std.is_empty() {
            return Err(top_err(
                "`mean` and `std` go together: give both or neither".into(),
            ));
        }
        if let Some(s) = std.iter().find(|&&s| s <= 0.0) {
            return Err(top_err(format!("`std` values must be positive, got {s}")));
        }
        let spec = ModelSpec {
            name,
            input,
            layers,
            classes,
            mean,
            std,
        };
        spec.graph().map_err(|e| e.into_error(source))?;
        spec.check_classes(&spec.classes).map_err(top_err)?;
        Ok(spec)
    }

    /// A chain of `layers` on inputs `input`, unnamed, without classes or normalisation.
    pub fn chain(name: &str, input: [usize; 3], layers: Vec<LayerSpec>) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            input,
            layers: layers.into_iter().map(Node::chain).collect(),
            classes: Vec::new(),
            mean: Vec::new(),
            std: Vec::new(),
        }
    }

    /// The network's nodes flattened into steps, names resolved and shapes checked (an empty
    /// output, or more than [`MAX_ELEMENTS`] activations or parameters, is an error naming
    /// the node).
    pub fn graph(&self) -> Result<Graph, GraphError> {
        flatten(&self.layers, &self.input)
    }

    /// The layers in order when the network is a plain chain of unnamed top-level layers
    /// (what the lecture's tools, such as the collapse of linear layers, work on).
    pub fn chain_layers(&self) -> Option<Vec<&LayerSpec>> {
        self.layers
            .iter()
            .map(|n| match (&n.op, &n.name, n.inputs.is_empty()) {
                (Op::Layer(l), None, true) => Some(l),
                _ => None,
            })
            .collect()
    }

    /// Sample shape of the network's output.
    pub fn output_shape(&self) -> Result<Vec<usize>> {
        self.graph()
            .map(|g| g.output_shape().to_vec())
            .map_err(|e| e.into_error(&self.name))
    }

    /// The same layers on samples of another [channels, height, width] (a preset on other
    /// data); an error names the layer that does not fit them.
    pub fn with_input(&self, input: [usize; 3]) -> Result<ModelSpec> {
        if !self.mean.is_empty() && self.mean.len() != input[0] {
            return Err(Error::Model {
                source_name: format!("{} on inputs {input:?}", self.name),
                layer: None,
                msg: format!(
                    "its `mean` and `std` have {} values, not one per input channel",
                    self.mean.len()
                ),
            });
        }
        let spec = ModelSpec {
            input,
            ..self.clone()
        };
        spec.graph()
            .map_err(|e| e.into_error(&format!("{} on inputs {input:?}", self.name)))?;
        Ok(spec)
    }

    /// Checks that `names` fit the model: one per output, none repeated.
    pub fn check_classes(&self, names: &[String]) -> Result<(), String> {
        let outputs = self.output_len();
        if !names.is_empty() && names.len() != outputs {
            return Err(format!(
                "{} class names for the model's {outputs} outputs",
                names.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(format!("class name {dup:?} is given twice"));
        }
        Ok(())
    }

    /// The name of output `i`: its class name, or its index as text.
    pub fn class_name(&self, i: usize) -> String {
        self.classes
            .get(i)
            .cloned()
            .unwrap_or_else(|| i.to_string())
    }

    /// Every output's name ([`ModelSpec::class_name`]).
    pub fn class_names(&self) -> Vec<String> {
        (0..self.output_len()).map(|i| self.class_name(i)).collect()
    }

    /// Length of the network's output vector (its elements, flat or not).
    pub fn output_len(&self) -> usize {
        self.graph()
            .map(|g| g.output_shape().iter().product())
            .unwrap_or(0)
    }

    /// Canonical TOML text of the network that parses back to an equal spec.
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "name = {}\ninput = [{}, {}, {}]\n",
            Value::String(self.name.clone()),
            self.input[0],
            self.input[1],
            self.input[2]
        );
        if !self.mean.is_empty() {
            let list = |v: &[f32]| {
                v.iter()
                    .map(|x| format!("{x:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "mean = [{}]\nstd = [{}]",
                list(&self.mean),
                list(&self.std)
            );
        }
        if !self.classes.is_empty() {
            let names: Vec<String> = self
                .classes
                .iter()
                .map(|c| Value::String(c.clone()).to_string())
                .collect();
            let _ = writeln!(s, "classes = [{}]", names.join(", "));
        }
        write_nodes(&mut s, &self.layers, 0);
        s
    }
}

/// A model file's TOML table; a syntax error names `source`.
pub fn parse_toml(text: &str, source: &str) -> Result<toml::Table> {
    text.parse().map_err(|e: toml::de::Error| Error::Model {
        source_name: source.into(),
        layer: None,
        msg: e.to_string().trim_end().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str =
        "[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 3\n";

    fn parse(top: &str) -> Result<ModelSpec> {
        ModelSpec::parse(&format!("input = [2, 4, 4]\n{top}\n{BODY}"), "m.toml")
    }

    #[test]
    fn classes_mean_and_std_parse_check_and_round_trip() {
        let s = parse("classes = [\"cat\", \"dog\", \"bird\"]\nmean = [0.5, 0.25]\nstd = [0.2, 1]")
            .unwrap();
        assert_eq!(s.classes, ["cat", "dog", "bird"]);
        assert_eq!(
            (s.mean.clone(), s.std.clone()),
            (vec![0.5, 0.25], vec![0.2, 1.0])
        );
        assert_eq!(s.class_name(1), "dog");
        assert_eq!(ModelSpec::parse(&s.to_toml(), "again").unwrap(), s);
        let unnamed = parse("").unwrap();
        assert_eq!(unnamed.class_names(), ["0", "1", "2"]);
        for (top, says) in [
            (
                "classes = [\"a\", \"b\"]",
                "2 class names for the model's 3 outputs",
            ),
            ("classes = [\"a\", \"b\", \"a\"]", "given twice"),
            ("classes = \"abc\"", "array of strings"),
            ("mean = [0.5]\nstd = [1, 1]", "2 numbers"),
            ("mean = [0.5, 0.5]", "give both or neither"),
            ("mean = [0.5, 0.5]\nstd = [1, 0]", "must be positive"),
            ("mean = [0.5, \"x\"]\nstd = [1, 1]", "numbers"),
        ] {
            let e = parse(top).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("m.toml"), "{top}: {e}");
        }
    }
}

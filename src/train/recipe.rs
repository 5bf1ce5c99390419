//! A model's recommended training recipe: the `[train]` table of a model file.
use crate::loss::LossKind;
use crate::nn::Init;
use crate::optim::{OptimizerKind, Schedule};
use std::fmt::Write as _;
use toml::Value;

/// Every field is optional; unset ones fall back to the plain defaults of `convnet train`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainRecipe {
    pub optimizer: Option<OptimizerKind>,
    pub lr: Option<f64>,
    pub momentum: Option<f64>,
    pub nesterov: Option<bool>,
    pub weight_decay: Option<f64>,
    pub schedule: Option<Schedule>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub loss: Option<LossKind>,
    pub augment: Option<usize>,
    /// torchvision's `RandomCrop(size, padding=P)`: zero padding P, then a random crop of
    /// the original size (the same shifts as `augment`, under torchvision's name).
    pub crop_padding: Option<usize>,
    /// torchvision's `RandomHorizontalFlip()`: each image mirrored with probability 1/2.
    pub hflip: Option<bool>,
    pub init: Option<Init>,
}

const KEYS: &str = "optimizer, lr, momentum, nesterov, weight_decay, schedule, epochs, batch_size, loss, augment, crop_padding, hflip, init";

fn float(k: &str, v: &Value) -> Result<f64, String> {
    let x = match v {
        Value::Float(f) => *f,
        Value::Integer(i) => *i as f64,
        _ => return Err(format!("`{k}` must be a number, got {v}")),
    };
    if !x.is_finite() || x < 0.0 {
        return Err(format!(
            "`{k}` must be a finite non-negative number, got {v}"
        ));
    }
    Ok(x)
}

fn count(k: &str, v: &Value, min: i64) -> Result<usize, String> {
    match v.as_integer() {
        Some(i) if i >= min => Ok(i as usize),
        _ => Err(format!("`{k}` must be an integer ≥ {min}, got {v}")),
    }
}

fn parsed<X: std::str::FromStr<Err = String>>(k: &str, v: &Value) -> Result<X, String> {
    v.as_str()
        .ok_or_else(|| format!("`{k}` must be a string, got {v}"))?
        .parse()
}

impl TrainRecipe {
    /// Parses a `[train]` table; unknown keys and bad values are errors naming the key.
    pub fn from_table(t: &toml::Table) -> Result<TrainRecipe, String> {
        let mut r = TrainRecipe::default();
        for (k, v) in t {
            match k.as_str() {
                "optimizer" => r.optimizer = Some(parsed(k, v)?),
                "lr" => {
                    let x = float(k, v)?;
                    if x == 0.0 {
                        return Err("`lr` must be positive".into());
                    }
                    r.lr = Some(x);
                }
                "momentum" => r.momentum = Some(float(k, v)?),
                "nesterov" => {
                    r.nesterov = Some(
                        v.as_bool()
                            .ok_or_else(|| format!("`nesterov` must be true or false, got {v}"))?,
                    )
                }
                "weight_decay" => r.weight_decay = Some(float(k, v)?),
                "schedule" => r.schedule = Some(parsed(k, v)?),
                "epochs" => r.epochs = Some(count(k, v, 1)?),
                "batch_size" => r.batch_size = Some(count(k, v, 1)?),
                "loss" => r.loss = Some(parsed(k, v)?),
                "augment" => r.augment = Some(count(k, v, 0)?),
                "crop_padding" => r.crop_padding = Some(count(k, v, 0)?),
                "hflip" => {
                    r.hflip = Some(
                        v.as_bool()
                            .ok_or_else(|| format!("`hflip` must be true or false, got {v}"))?,
                    )
                }
                "init" => r.init = Some(parsed(k, v)?),
                _ => return Err(format!("unknown key `{k}` (known: {KEYS})")),
            }
        }
        Ok(r)
    }

    /// The set fields as `key = value` lines (empty when nothing is set).
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(s, "{k} = {v}");
        };
        if let Some(o) = self.optimizer {
            line("optimizer", format!("\"{}\"", o.name()));
        }
        if let Some(x) = self.lr {
            line("lr", Value::Float(x).to_string());
        }
        if let Some(x) = self.momentum {
            line("momentum", Value::Float(x).to_string());
        }
        if let Some(x) = self.nesterov {
            line("nesterov", x.to_string());
        }
        if let Some(x) = self.weight_decay {
            line("weight_decay", Value::Float(x).to_string());
        }
        if let Some(x) = self.schedule {
            line("schedule", format!("\"{x}\""));
        }
        if let Some(x) = self.epochs {
            line("epochs", x.to_string());
        }
        if let Some(x) = self.batch_size {
            line("batch_size", x.to_string());
        }
        if let Some(x) = self.loss {
            line("loss", format!("\"{}\"", x.name()));
        }
        if let Some(x) = self.augment {
            line("augment", x.to_string());
        }
        if let Some(x) = self.crop_padding {
            line("crop_padding", x.to_string());
        }
        if let Some(x) = self.hflip {
            line("hflip", x.to_string());
        }
        if let Some(x) = self.init {
            line("init", format!("\"{}\"", x.name()));
        }
        s
    }
}

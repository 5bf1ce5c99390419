//! Reading one layer table of a model file: typed keys, defaults, and errors that name the
//! model file, the layer's path and the key; keys nobody read are reported as unknown.
use crate::error::{Error, Result};
use std::collections::BTreeSet;
use toml::Value;

/// Largest value of any size key (kernel, stride, channels, ...).
pub const MAX_SIZE: usize = 1 << 20;

/// Where a parse error happened: the source's name, the layer path and its type.
pub struct Ctx<'a> {
    pub source: &'a str,
    pub path: String,
    pub kind: String,
}

impl Ctx<'_> {
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Model {
            source_name: self.source.to_string(),
            layer: Some(format!("layer {} ({})", self.path, self.kind)),
            msg: msg.into(),
        }
    }
}

/// A layer table's keys, remembering which were read so leftovers can be reported.
pub struct Fields<'a, 'c> {
    table: &'a toml::Table,
    used: BTreeSet<&'static str>,
    /// Keys read by someone else than the layer (a graph node's `name` and `inputs`): not
    /// unknown, and not the layer's own in the list an unknown key's error shows.
    others: BTreeSet<&'static str>,
    pub ctx: &'c Ctx<'c>,
}

impl<'a, 'c> Fields<'a, 'c> {
    pub fn new(table: &'a toml::Table, ctx: &'c Ctx<'c>) -> Self {
        Fields {
            table,
            used: BTreeSet::new(),
            others: BTreeSet::new(),
            ctx,
        }
    }

    /// The raw value of `key`, marking it as known.
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.table.get(key)
    }

    /// An error about this layer.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        self.ctx.err(msg)
    }

    fn positive_value(&self, key: &str, v: &Value) -> Result<usize> {
        match v.as_integer() {
            Some(i) if i > 0 => Ok(i as usize),
            _ => Err(self.err(format!("key `{key}` must be a positive integer, got {v}"))),
        }
    }

    /// A positive integer, required.
    pub fn required_usize(&mut self, key: &'static str) -> Result<usize> {
        match self.get(key) {
            Some(v) => self.positive_value(key, v),
            None => Err(self.err(format!("missing required key `{key}`"))),
        }
    }

    /// A positive integer with a default.
    pub fn usize_or(&mut self, key: &'static str, default: usize) -> Result<usize> {
        match self.get(key) {
            Some(v) => self.positive_value(key, v),
            None => Ok(default),
        }
    }

    /// An int or an [h, w] pair of positive ints; `default` None makes the key required.
    pub fn pair(
        &mut self,
        key: &'static str,
        default: Option<(usize, usize)>,
    ) -> Result<(usize, usize)> {
        match self.get(key) {
            None => default.ok_or_else(|| self.err(format!("missing required key `{key}`"))),
            Some(Value::Array(a)) if a.len() == 2 => Ok((
                self.positive_value(key, &a[0])?,
                self.positive_value(key, &a[1])?,
            )),
            Some(v @ Value::Integer(_)) => {
                let n = self.positive_value(key, v)?;
                Ok((n, n))
            }
            Some(v) => Err(self.err(format!(
                "key `{key}` must be a positive integer or an [h, w] pair, got {v}"
            ))),
        }
    }

    /// Like [`Fields::pair`] but zero is allowed and the default is (0, 0) (padding).
    pub fn pair0(&mut self, key: &'static str) -> Result<(usize, usize)> {
        let ctx = self.ctx;
        let bad = |v: &Value| {
            ctx.err(format!(
                "key `{key}` must be a non-negative integer or an [h, w] pair, got {v}"
            ))
        };
        let nonneg = |v: &Value| match v.as_integer() {
            Some(i) if i >= 0 && i as u64 <= MAX_SIZE as u64 => Ok(i as usize),
            _ => Err(bad(v)),
        };
        match self.get(key) {
            None => Ok((0, 0)),
            Some(Value::Array(a)) if a.len() == 2 => Ok((nonneg(&a[0])?, nonneg(&a[1])?)),
            Some(v @ Value::Integer(_)) => {
                let n = nonneg(v)?;
                Ok((n, n))
            }
            Some(v) => Err(bad(v)),
        }
    }

    /// true or false, with a default.
    pub fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(v) => Err(self.err(format!("key `{key}` must be true or false, got {v}"))),
        }
    }

    /// A finite number (an integer is taken as a float) in `range`, with a default.
    pub fn float(
        &mut self,
        key: &'static str,
        default: f64,
        range: (f64, f64),
        what: &str,
    ) -> Result<f64> {
        let v = match self.get(key) {
            None => return Ok(default),
            Some(Value::Float(f)) => *f,
            Some(Value::Integer(i)) => *i as f64,
            Some(v) => return Err(self.err(format!("key `{key}` must be a number, got {v}"))),
        };
        if v.is_finite() && v >= range.0 && v <= range.1 {
            Ok(v)
        } else {
            Err(self.err(format!("key `{key}` must be {what}, got {v}")))
        }
    }

    /// One of `choices`, with a default.
    pub fn choice(
        &mut self,
        key: &'static str,
        default: &'static str,
        choices: &[&'static str],
    ) -> Result<&'static str> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::String(s)) => choices
                .iter()
                .find(|c| **c == s.as_str())
                .copied()
                .ok_or_else(|| {
                    self.err(format!(
                        "key `{key}` must be one of {}, got \"{s}\"",
                        choices.join(", ")
                    ))
                }),
            Some(v) => Err(self.err(format!(
                "key `{key}` must be one of {}, got {v}",
                choices.join(", ")
            ))),
        }
    }

    /// The raw value of `key`, read for someone else than the layer (see `others`).
    pub fn get_other(&mut self, key: &'static str) -> Option<&'a Value> {
        self.others.insert(key);
        self.table.get(key)
    }

    /// Forgets that `key` was read (for a key read again by another accessor).
    pub fn unread(&mut self, key: &'static str) {
        self.used.remove(key);
    }

    /// An error for the first key nobody read.
    pub fn finish(self) -> Result<()> {
        for k in self.table.keys() {
            if k != "type" && !self.used.contains(k.as_str()) && !self.others.contains(k.as_str()) {
                let known: Vec<&str> = self.used.iter().copied().collect();
                let hint = if known.is_empty() {
                    "it takes no options".to_string()
                } else {
                    format!("known keys: {}", known.join(", "))
                };
                return Err(self.err(format!("unknown key `{k}` ({hint})")));
            }
        }
        Ok(())
    }
}

/// An (h, w) pair as a model file writes it: one number when both agree.
pub fn pair_text((h, w): (usize, usize)) -> String {
    if h == w {
        h.to_string()
    } else {
        format!("[{h}, {w}]")
    }
}

/// A float as TOML writes it back exactly (always with a decimal point or exponent).
pub fn float_text(v: f64) -> String {
    Value::Float(v).to_string()
}

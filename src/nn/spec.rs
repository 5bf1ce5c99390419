//! The model file: a TOML description of a network, parsed into typed layer specs with
//! errors that name the layer and the key, and written back in canonical form.
use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::ops::conv::{Conv2dConfig, Conv2dGeometry};
use crate::ops::pool::{Pool2dConfig, Pool2dGeometry};
use crate::ops::shape::same_padding;
use crate::train::recipe::TrainRecipe;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use toml::Value;

/// Largest value of any size key (kernel, stride, channels, ...).
pub const MAX_SIZE: usize = 1 << 20;
/// Largest number of parameters, and of activations per sample, a model may have
/// (2²⁸ float32 = 1 GiB): a hostile model file is refused before anything is allocated.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// Product of dimensions, or None on overflow.
fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Convolution padding as written in a model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Rows, columns of zeros on each side.
    Explicit(usize, usize),
    /// PyTorch's "same": output size = input size (stride 1 only), extra padding at the end.
    Same,
    /// No padding.
    Valid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: Padding,
    pub dilation: (usize, usize),
    pub groups: usize,
    pub bias: bool,
}

impl Conv2dSpec {
    /// The kernel-level configuration (padding resolved to begin/end amounts).
    pub fn config(&self) -> Conv2dConfig {
        let (pad_begin, pad_end) = match self.padding {
            Padding::Explicit(h, w) => ((h, w), (h, w)),
            Padding::Valid => ((0, 0), (0, 0)),
            Padding::Same => {
                let (t, b) = same_padding(self.kernel.0, self.dilation.0);
                let (l, r) = same_padding(self.kernel.1, self.dilation.1);
                ((t, l), (b, r))
            }
        };
        Conv2dConfig {
            kernel: self.kernel,
            stride: self.stride,
            dilation: self.dilation,
            pad_begin,
            pad_end,
            groups: self.groups,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub ceil_mode: bool,
}

impl PoolSpec {
    pub fn config(&self) -> Pool2dConfig {
        Pool2dConfig {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            ceil_mode: self.ceil_mode,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearSpec {
    pub out_features: usize,
    pub bias: bool,
}

/// One layer of a model file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    Conv2d(Conv2dSpec),
    MaxPool2d(PoolSpec),
    AvgPool2d(PoolSpec),
    /// h[i,j] = x[i·s, j·s]; uses `kernel` and `stride` of the pool spec.
    Subsample(PoolSpec),
    Activation(Activation),
    Flatten,
    Linear(LinearSpec),
    /// x + body(x).
    Residual(Vec<LayerSpec>),
}

impl LayerSpec {
    /// The `type` name used in model files.
    pub fn type_name(&self) -> &'static str {
        match self {
            LayerSpec::Conv2d(_) => "conv2d",
            LayerSpec::MaxPool2d(_) => "maxpool2d",
            LayerSpec::AvgPool2d(_) => "avgpool2d",
            LayerSpec::Subsample(_) => "subsample",
            LayerSpec::Activation(a) => a.name(),
            LayerSpec::Flatten => "flatten",
            LayerSpec::Linear(_) => "linear",
            LayerSpec::Residual(_) => "residual",
        }
    }

    /// Output shape for an input shape ([C, H, W] or [F]); the error says what does not fit.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let chw = || -> Result<[usize; 3], String> {
            <[usize; 3]>::try_from(input)
                .map_err(|_| format!("needs a [channels, height, width] input, got {input:?} (is it after a flatten?)"))
        };
        match self {
            LayerSpec::Conv2d(c) => {
                let g = Conv2dGeometry::new(chw()?, c.out_channels, c.config())?;
                Ok(vec![g.out_channels, g.out_h, g.out_w])
            }
            LayerSpec::MaxPool2d(p) | LayerSpec::AvgPool2d(p) | LayerSpec::Subsample(p) => {
                let g = Pool2dGeometry::new(chw()?, p.config())?;
                Ok(vec![g.channels, g.out_h, g.out_w])
            }
            LayerSpec::Activation(_) => Ok(input.to_vec()),
            LayerSpec::Flatten => Ok(vec![
                elements(input).ok_or("the input is too large to flatten")?
            ]),
            LayerSpec::Linear(l) => {
                if input.len() != 1 {
                    return Err(format!(
                        "needs a flat input, got {input:?}; put a flatten layer before it"
                    ));
                }
                Ok(vec![l.out_features])
            }
            LayerSpec::Residual(body) => {
                let mut s = input.to_vec();
                for (j, l) in body.iter().enumerate() {
                    s = l
                        .output_shape(&s)
                        .map_err(|e| format!("body layer {j} ({}): {e}", l.type_name()))?;
                    if elements(&s).is_none_or(|n| n == 0 || n > MAX_ELEMENTS) {
                        return Err(format!("body layer {j} ({}): the output shape {s:?} is empty or has more than {MAX_ELEMENTS} elements", l.type_name()));
                    }
                }
                if s != input {
                    return Err(format!(
                        "the body maps {input:?} to {s:?}; a residual body must keep the shape"
                    ));
                }
                Ok(s)
            }
        }
    }

    /// Trainable parameters of this layer for the given input shape (already validated).
    pub fn param_count(&self, input: &[usize]) -> usize {
        match self {
            LayerSpec::Conv2d(c) => {
                let k = input[0] / c.groups * c.kernel.0 * c.kernel.1;
                c.out_channels * k + if c.bias { c.out_channels } else { 0 }
            }
            LayerSpec::Linear(l) => {
                l.out_features * input[0] + if l.bias { l.out_features } else { 0 }
            }
            LayerSpec::Residual(body) => {
                let mut s = input.to_vec();
                let mut n = 0;
                for l in body {
                    n += l.param_count(&s);
                    s = l.output_shape(&s).unwrap_or_default();
                }
                n
            }
            _ => 0,
        }
    }
}

/// A parsed, shape-checked model file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    /// [channels, height, width] of one input sample.
    pub input: [usize; 3],
    pub layers: Vec<LayerSpec>,
    /// The model's recommended training recipe (the `[train]` table).
    pub train: TrainRecipe,
}

/// Where a parse error happened: the source's name and the layer path.
struct Ctx<'a> {
    source: &'a str,
    path: String,
    kind: String,
}

impl Ctx<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Model {
            source_name: self.source.to_string(),
            layer: Some(format!("layer {} ({})", self.path, self.kind)),
            msg: msg.into(),
        }
    }
}

/// Reads a layer table's keys, remembering which were used so leftovers can be reported.
struct Fields<'a, 'c> {
    table: &'a toml::Table,
    used: BTreeSet<&'static str>,
    ctx: &'c Ctx<'c>,
}

impl<'a> Fields<'a, '_> {
    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.table.get(key)
    }

    fn positive(&self, key: &str, v: &Value) -> Result<usize> {
        match v.as_integer() {
            Some(i) if i > 0 => Ok(i as usize),
            _ => Err(self
                .ctx
                .err(format!("key `{key}` must be a positive integer, got {v}"))),
        }
    }

    fn required_usize(&mut self, key: &'static str) -> Result<usize> {
        match self.get(key) {
            Some(v) => self.positive(key, v),
            None => Err(self.ctx.err(format!("missing required key `{key}`"))),
        }
    }

    /// An int or an [h, w] pair of positive ints.
    fn pair(
        &mut self,
        key: &'static str,
        default: Option<(usize, usize)>,
    ) -> Result<(usize, usize)> {
        match self.get(key) {
            None => default.ok_or_else(|| self.ctx.err(format!("missing required key `{key}`"))),
            Some(Value::Array(a)) if a.len() == 2 => {
                Ok((self.positive(key, &a[0])?, self.positive(key, &a[1])?))
            }
            Some(v @ Value::Integer(_)) => {
                let n = self.positive(key, v)?;
                Ok((n, n))
            }
            Some(v) => Err(self.ctx.err(format!(
                "key `{key}` must be a positive integer or an [h, w] pair, got {v}"
            ))),
        }
    }

    /// Like [`Fields::pair`] but zero is allowed (padding).
    fn pair0(&mut self, key: &'static str) -> Result<(usize, usize)> {
        let nonneg = |v: &Value| match v.as_integer() {
            Some(i) if i >= 0 && i as u64 <= MAX_SIZE as u64 => Ok(i as usize),
            _ => Err(self.ctx.err(format!(
                "key `{key}` must be a non-negative integer or an [h, w] pair, got {v}"
            ))),
        };
        match self.get(key) {
            None => Ok((0, 0)),
            Some(Value::Array(a)) if a.len() == 2 => Ok((nonneg(&a[0])?, nonneg(&a[1])?)),
            Some(v @ Value::Integer(_)) => {
                let n = nonneg(v)?;
                Ok((n, n))
            }
            Some(v) => Err(self.ctx.err(format!(
                "key `{key}` must be a non-negative integer or an [h, w] pair, got {v}"
            ))),
        }
    }

    fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(v) => Err(self
                .ctx
                .err(format!("key `{key}` must be true or false, got {v}"))),
        }
    }

    fn finish(self) -> Result<()> {
        for k in self.table.keys() {
            if k != "type" && !self.used.contains(k.as_str()) {
                let known: Vec<&str> = self.used.iter().copied().collect();
                let hint = if known.is_empty() {
                    "it takes no options".to_string()
                } else {
                    format!("known keys: {}", known.join(", "))
                };
                return Err(self.ctx.err(format!("unknown key `{k}` ({hint})")));
            }
        }
        Ok(())
    }
}

const LAYER_TYPES: &str = "conv2d, maxpool2d, avgpool2d, subsample, relu, sigmoid, tanh, identity, flatten, linear, residual";

fn parse_pool(f: &mut Fields, padded: bool) -> Result<PoolSpec> {
    let kernel = f.pair("kernel", None)?;
    let stride = f.pair("stride", Some(kernel))?;
    let (padding, ceil_mode) = if padded {
        (f.pair0("padding")?, f.bool("ceil_mode", false)?)
    } else {
        ((0, 0), false)
    };
    Ok(PoolSpec {
        kernel,
        stride,
        padding,
        ceil_mode,
    })
}

fn parse_layer(v: &Value, source: &str, path: String) -> Result<LayerSpec> {
    let Some(table) = v.as_table() else {
        return Err(Error::Model {
            source_name: source.into(),
            layer: Some(format!("layer {path}")),
            msg: "must be a table".into(),
        });
    };
    let kind = match table.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(Error::Model {
                source_name: source.into(),
                layer: Some(format!("layer {path}")),
                msg: format!("`type` must be a string, got {v}"),
            })
        }
        None => {
            return Err(Error::Model {
                source_name: source.into(),
                layer: Some(format!("layer {path}")),
                msg: "missing required key `type`".into(),
            })
        }
    };
    let ctx = Ctx {
        source,
        path: path.clone(),
        kind: kind.clone(),
    };
    let mut f = Fields {
        table,
        used: BTreeSet::new(),
        ctx: &ctx,
    };
    let spec = match kind.as_str() {
        "conv2d" => {
            let out_channels = f.required_usize("out_channels")?;
            let kernel = f.pair("kernel", None)?;
            let stride = f.pair("stride", Some((1, 1)))?;
            let padding = match f.get("padding") {
                Some(Value::String(s)) if s == "same" => Padding::Same,
                Some(Value::String(s)) if s == "valid" => Padding::Valid,
                Some(Value::String(s)) => {
                    return Err(ctx.err(format!(
                    "key `padding` must be an integer, [h, w], \"same\" or \"valid\", got \"{s}\""
                )))
                }
                Some(_) => {
                    f.used.remove("padding");
                    let (h, w) = f.pair0("padding")?;
                    Padding::Explicit(h, w)
                }
                None => Padding::Explicit(0, 0),
            };
            let dilation = f.pair("dilation", Some((1, 1)))?;
            let groups = match f.get("groups") {
                None => 1,
                Some(v) => f.positive("groups", v)?,
            };
            let bias = f.bool("bias", true)?;
            if padding == Padding::Same && stride != (1, 1) {
                return Err(ctx.err("padding = \"same\" needs stride 1 (as in PyTorch)"));
            }
            LayerSpec::Conv2d(Conv2dSpec {
                out_channels,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                bias,
            })
        }
        "maxpool2d" => LayerSpec::MaxPool2d(parse_pool(&mut f, true)?),
        "avgpool2d" => LayerSpec::AvgPool2d(parse_pool(&mut f, true)?),
        "subsample" => LayerSpec::Subsample(parse_pool(&mut f, false)?),
        "relu" => LayerSpec::Activation(Activation::Relu),
        "sigmoid" => LayerSpec::Activation(Activation::Sigmoid),
        "tanh" => LayerSpec::Activation(Activation::Tanh),
        "identity" => LayerSpec::Activation(Activation::Identity),
        "flatten" => LayerSpec::Flatten,
        "linear" => {
            let out_features = f.required_usize("out_features")?;
            let bias = f.bool("bias", true)?;
            LayerSpec::Linear(LinearSpec { out_features, bias })
        }
        "residual" => {
            let body = match f.get("layers") {
                Some(Value::Array(a)) if !a.is_empty() => a,
                Some(_) => {
                    return Err(ctx.err("key `layers` must be a non-empty array of layer tables"))
                }
                None => return Err(ctx.err("missing required key `layers`")),
            };
            let body = body
                .iter()
                .enumerate()
                .map(|(j, l)| parse_layer(l, source, format!("{path}.body.{j}")))
                .collect::<Result<Vec<_>>>()?;
            LayerSpec::Residual(body)
        }
        other => {
            return Err(ctx.err(format!(
                "unknown layer type `{other}` (known: {LAYER_TYPES})"
            )))
        }
    };
    f.finish()?;
    Ok(spec)
}

impl ModelSpec {
    /// Parses and shape-checks a model file's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<ModelSpec> {
        let top_err = |msg: String| Error::Model {
            source_name: source.into(),
            layer: None,
            msg,
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| top_err(e.to_string().trim_end().to_string()))?;
        for k in table.keys() {
            if !["name", "input", "layers", "train"].contains(&k.as_str()) {
                return Err(top_err(format!(
                    "unknown top-level key `{k}` (known: name, input, layers, train)"
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
            .map(|(i, l)| parse_layer(l, source, i.to_string()))
            .collect::<Result<Vec<_>>>()?;
        let train = match table.get("train") {
            None => TrainRecipe::default(),
            Some(Value::Table(t)) => {
                TrainRecipe::from_table(t).map_err(|e| top_err(format!("[train]: {e}")))?
            }
            Some(v) => return Err(top_err(format!("`train` must be a table, got {v}"))),
        };
        let spec = ModelSpec {
            name,
            input,
            layers,
            train,
        };
        spec.shapes().map_err(|(i, msg)| Error::Model {
            source_name: source.into(),
            layer: Some(format!("layer {i} ({})", spec.layers[i].type_name())),
            msg,
        })?;
        Ok(spec)
    }

    /// Output shape of every top-level layer, or the index of the first that does not fit
    /// (an empty output, or more than [`MAX_ELEMENTS`] activations or parameters).
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>, (usize, String)> {
        let mut s = self.input.to_vec();
        let mut out = Vec::with_capacity(self.layers.len());
        let mut params = 0usize;
        for (i, l) in self.layers.iter().enumerate() {
            params = params.saturating_add(l.param_count(&s));
            if params > MAX_ELEMENTS {
                return Err((
                    i,
                    format!("the model would have more than {MAX_ELEMENTS} parameters"),
                ));
            }
            s = l.output_shape(&s).map_err(|e| (i, e))?;
            if s.contains(&0) {
                return Err((i, format!("the output shape {s:?} is empty")));
            }
            if elements(&s).is_none_or(|n| n > MAX_ELEMENTS) {
                return Err((
                    i,
                    format!("the output shape {s:?} has more than {MAX_ELEMENTS} elements"),
                ));
            }
            out.push(s.clone());
        }
        Ok(out)
    }

    /// Length of the network's output vector (its last layer must be flat).
    pub fn output_len(&self) -> usize {
        self.shapes()
            .ok()
            .and_then(|s| s.last().map(|l| l.iter().product()))
            .unwrap_or(0)
    }

    /// Canonical TOML text that parses back to an equal spec.
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "name = {}\ninput = [{}, {}, {}]\n",
            Value::String(self.name.clone()),
            self.input[0],
            self.input[1],
            self.input[2]
        );
        for l in &self.layers {
            s.push_str("\n[[layers]]\n");
            for (k, v) in layer_fields(l, true) {
                let _ = writeln!(s, "{k} = {v}");
            }
        }
        let train = self.train.to_toml();
        if !train.is_empty() {
            s.push_str("\n[train]\n");
            s.push_str(&train);
        }
        s
    }
}

fn pair_text((h, w): (usize, usize)) -> String {
    if h == w {
        h.to_string()
    } else {
        format!("[{h}, {w}]")
    }
}

/// `key = value` pairs of one layer, in TOML syntax; `multiline` lets a residual body's
/// array span lines (allowed at the top level, not inside an inline table).
fn layer_fields(l: &LayerSpec, multiline: bool) -> Vec<(&'static str, String)> {
    let mut f = vec![("type", format!("\"{}\"", l.type_name()))];
    match l {
        LayerSpec::Conv2d(c) => {
            f.push(("out_channels", c.out_channels.to_string()));
            f.push(("kernel", pair_text(c.kernel)));
            f.push(("stride", pair_text(c.stride)));
            f.push((
                "padding",
                match c.padding {
                    Padding::Explicit(h, w) => pair_text((h, w)),
                    Padding::Same => "\"same\"".into(),
                    Padding::Valid => "\"valid\"".into(),
                },
            ));
            f.push(("dilation", pair_text(c.dilation)));
            f.push(("groups", c.groups.to_string()));
            f.push(("bias", c.bias.to_string()));
        }
        LayerSpec::MaxPool2d(p) | LayerSpec::AvgPool2d(p) => {
            f.push(("kernel", pair_text(p.kernel)));
            f.push(("stride", pair_text(p.stride)));
            f.push(("padding", pair_text(p.padding)));
            f.push(("ceil_mode", p.ceil_mode.to_string()));
        }
        LayerSpec::Subsample(p) => {
            f.push(("kernel", pair_text(p.kernel)));
            f.push(("stride", pair_text(p.stride)));
        }
        LayerSpec::Linear(l) => {
            f.push(("out_features", l.out_features.to_string()));
            f.push(("bias", l.bias.to_string()));
        }
        LayerSpec::Residual(body) => {
            let items: Vec<String> = body
                .iter()
                .map(|b| {
                    format!(
                        "{{ {} }}",
                        layer_fields(b, false)
                            .iter()
                            .map(|(k, v)| format!("{k} = {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
                .collect();
            let text = if multiline {
                format!("[\n  {},\n]", items.join(",\n  "))
            } else {
                format!("[{}]", items.join(", "))
            };
            f.push(("layers", text));
        }
        LayerSpec::Activation(_) | LayerSpec::Flatten => {}
    }
    f
}

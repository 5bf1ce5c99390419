//! Graph models: a model file's layer list as a directed acyclic graph of named modules.
//!
//! A model file lists nodes: layers, joins (`add`, `mul`, `concat`) and blocks (`type =
//! "block"`, a named group of nodes, as a PyTorch module holds its children). A node reads
//! the previous node's output unless it names its inputs (`inputs = ["bn2", "downsample"]`,
//! names of earlier nodes of its block or of an enclosing one, or `"input"`: the block's
//! input, at the top the network's). A node's `name` is its module name, so that its tensors
//! are named as PyTorch's `state_dict` names them (`layer1.0.conv1.weight`); an unnamed node
//! is its index in its block, as in `nn.Sequential`. A plain list of layers is a chain.
//!
//! This file is the one place that resolves names and walks shapes: [`flatten`] turns the
//! node tree into [`Graph`], a flat list of steps in file order (the order is the schedule,
//! so random streams, parameter order and exchanges are the same on every thread and rank),
//! each with its module path, input values and shapes.
use super::joins::JoinSpec;
use super::keys::{Ctx, Fields};
use super::layers::{LayerSpec, TensorKind};
use super::spec::{elements, MAX_ELEMENTS};
use crate::error::{Error, Result};
use std::fmt::Write as _;
use toml::Value;

/// The name by which a node reads its block's input (at the top: the network's input).
pub const INPUT: &str = "input";

/// The `type` of a block node.
pub const BLOCK: &str = "block";

/// One entry of a model file's layer list.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The module name (a path segment of its tensors' names); None: its index in its block.
    pub name: Option<String>,
    /// The names of the values it reads; empty: the previous node's output (the block's input
    /// for a block's first node).
    pub inputs: Vec<String>,
    pub op: Op,
}

/// What a node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A layer of one input.
    Layer(LayerSpec),
    /// A layer of several inputs.
    Join(JoinSpec),
    /// Nodes of their own, run on the block's one input; the last one's output is the block's.
    Block(Vec<Node>),
}

impl Node {
    /// An unnamed node reading the previous node's output.
    pub fn chain(layer: LayerSpec) -> Node {
        Node {
            name: None,
            inputs: Vec::new(),
            op: Op::Layer(layer),
        }
    }

    /// The node's `type` in the model file.
    pub fn type_name(&self) -> &'static str {
        match &self.op {
            Op::Layer(l) => l.type_name(),
            Op::Join(j) => j.type_name(),
            Op::Block(_) => BLOCK,
        }
    }

    /// `key = value` pairs of the node in TOML syntax: `name`, `inputs`, `type`, then the
    /// layer's or join's keys (a block's nodes are not among them).
    fn toml_fields(&self, multiline: bool) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        if let Some(n) = &self.name {
            f.push(("name", Value::String(n.clone()).to_string()));
        }
        if !self.inputs.is_empty() {
            let names: Vec<String> = self
                .inputs
                .iter()
                .map(|n| Value::String(n.clone()).to_string())
                .collect();
            f.push(("inputs", format!("[{}]", names.join(", "))));
        }
        match &self.op {
            Op::Layer(l) => f.extend(l.toml_fields(multiline)),
            Op::Join(j) => {
                f.push(("type", format!("\"{}\"", j.type_name())));
                f.extend(j.fields());
            }
            Op::Block(_) => f.push(("type", format!("\"{BLOCK}\""))),
        }
        f
    }
}

/// Writes `nodes` as `[[layers]]` tables (`[[layers.layers]]` inside a block at depth 1, and
/// so on): every node a table of its own, so that deep module trees stay readable.
pub fn write_nodes(s: &mut String, nodes: &[Node], depth: usize) {
    let header = vec!["layers"; depth + 1].join(".");
    for n in nodes {
        let _ = writeln!(s, "\n[[{header}]]");
        for (k, v) in n.toml_fields(true) {
            let _ = writeln!(s, "{k} = {v}");
        }
        if let Op::Block(children) = &n.op {
            write_nodes(s, children, depth + 1);
        }
    }
}

/// Parses one node table; `path` names it in errors ("3", "layer1.0.conv1").
pub fn parse_node(v: &Value, source: &str, path: String) -> Result<Node> {
    let at = |msg: String| Error::Model {
        source_name: source.into(),
        layer: Some(format!("layer {path}")),
        msg,
    };
    let Some(table) = v.as_table() else {
        return Err(at("must be a table".into()));
    };
    let kind = match table.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(at(format!("`type` must be a string, got {v}"))),
        None => return Err(at("missing required key `type`".into())),
    };
    let ctx = Ctx {
        source,
        path: path.clone(),
        kind: kind.clone(),
    };
    let mut f = Fields::new(table, &ctx);
    let name = match f.get_other("name") {
        None => None,
        Some(Value::String(s)) if valid_name(s) => Some(s.clone()),
        Some(v) => {
            return Err(ctx.err(format!(
                "`name` must be a non-empty string of letters, digits, `_`, `-` and `.`, other than \"{INPUT}\"; got {v}"
            )))
        }
    };
    let inputs = match f.get_other("inputs") {
        None => Vec::new(),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(ctx.err(format!("`inputs` must be an array of names, got {v}"))),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(v) => {
            return Err(ctx.err(format!(
                "`inputs` must be a non-empty array of names, got {v}"
            )))
        }
    };
    let child_path = |j: usize, n: &Value| -> String {
        let own = n
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| j.to_string(), str::to_string);
        format!("{path}.{own}")
    };
    let op = if kind == BLOCK {
        let items = match f.get("layers") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            _ => {
                return Err(ctx
                    .err("a block needs `layers`, a non-empty array of layer tables".to_string()))
            }
        };
        let children = items
            .iter()
            .enumerate()
            .map(|(j, n)| parse_node(n, source, child_path(j, n)))
            .collect::<Result<Vec<_>>>()?;
        Op::Block(children)
    } else if let Some(join) = JoinSpec::parse_known(&kind, &mut f) {
        Op::Join(join?)
    } else {
        match LayerSpec::parse_known(&kind, &mut f) {
            Some(spec) => Op::Layer(spec?),
            None => {
                let mut known = LayerSpec::type_names();
                known.extend(JoinSpec::type_names());
                known.push(BLOCK);
                return Err(ctx.err(format!(
                    "unknown layer type `{kind}` (known: {})",
                    known.join(", ")
                )));
            }
        }
    };
    f.finish()?;
    Ok(Node { name, inputs, op })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != INPUT
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// One layer or join of a graph, at its place in the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Its module path: the prefix of its tensors' names ("layer1.0.conv1", "3").
    pub path: String,
    pub op: StepOp,
    /// The values it reads: 0 is the network's input, i + 1 step i's output.
    pub inputs: Vec<usize>,
    /// Sample shapes of those values.
    pub input_shapes: Vec<Vec<usize>>,
    pub output_shape: Vec<usize>,
}

/// What a step computes.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOp {
    Layer(LayerSpec),
    Join(JoinSpec),
}

impl StepOp {
    pub fn type_name(&self) -> &'static str {
        match self {
            StepOp::Layer(l) => l.type_name(),
            StepOp::Join(j) => j.type_name(),
        }
    }
}

/// A model's nodes flattened into steps in file order, their names resolved and their shapes
/// checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub steps: Vec<Step>,
    /// Sample shape of the network's input.
    pub input: Vec<usize>,
    /// The value that is the network's output: the last node's.
    pub output: usize,
}

impl Graph {
    /// Sample shape of value `v`.
    pub fn shape(&self, v: usize) -> &[usize] {
        match v {
            0 => &self.input,
            v => &self.steps[v - 1].output_shape,
        }
    }

    /// Sample shape of the network's output.
    pub fn output_shape(&self) -> &[usize] {
        self.shape(self.output)
    }

    /// How many steps read each value (the output counts one more reader: the loss).
    pub fn consumers(&self) -> Vec<usize> {
        let mut n = vec![0; self.steps.len() + 1];
        for s in &self.steps {
            for &v in &s.inputs {
                n[v] += 1;
            }
        }
        n[self.output] += 1;
        n
    }

    /// Whether the graph is a chain: every step reads the one before it.
    pub fn is_chain(&self) -> bool {
        self.steps.iter().enumerate().all(|(i, s)| s.inputs == [i])
    }
}

/// Where a graph does not fit: the node's path and type, and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphError {
    pub path: String,
    pub kind: &'static str,
    pub msg: String,
}

impl GraphError {
    /// The error as a model error of `source`.
    pub fn into_error(self, source: &str) -> Error {
        Error::Model {
            source_name: source.into(),
            layer: Some(format!("layer {} ({})", self.path, self.kind)),
            msg: self.msg,
        }
    }
}

/// Flattens `nodes` on inputs of sample shape `input`: resolves every name, checks every
/// shape (non-empty, at most [`MAX_ELEMENTS`] values per sample and parameters in all) and
/// that no two tensors get one name.
pub fn flatten(nodes: &[Node], input: &[usize]) -> Result<Graph, GraphError> {
    let mut walk = Walk {
        steps: Vec::new(),
        input: input.to_vec(),
        scopes: Vec::new(),
        params: 0,
        names: std::collections::BTreeMap::new(),
    };
    let output = walk.block(nodes, "", 0)?;
    Ok(Graph {
        steps: walk.steps,
        input: walk.input,
        output,
    })
}

/// The state of [`flatten`].
struct Walk {
    steps: Vec<Step>,
    input: Vec<usize>,
    /// The names visible from the node being read: one list per enclosing block, innermost
    /// last, each (name, value) in file order.
    scopes: Vec<Vec<(String, usize)>>,
    params: usize,
    /// Every tensor name so far, with the path of the node that has it.
    names: std::collections::BTreeMap<String, String>,
}

impl Walk {
    fn shape(&self, v: usize) -> &[usize] {
        match v {
            0 => &self.input,
            v => &self.steps[v - 1].output_shape,
        }
    }

    /// The latest value named `name` in the innermost scope that has one.
    fn resolve(&self, name: &str) -> Option<usize> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.iter().rev().find(|(n, _)| n == name).map(|&(_, v)| v))
    }

    /// Adds the steps of a block's `nodes` on value `input`; returns the block's output.
    fn block(&mut self, nodes: &[Node], prefix: &str, input: usize) -> Result<usize, GraphError> {
        self.scopes.push(vec![(INPUT.to_string(), input)]);
        let mut prev = input;
        for (j, node) in nodes.iter().enumerate() {
            let local = node.name.clone().unwrap_or_else(|| j.to_string());
            let path = if prefix.is_empty() {
                local
            } else {
                format!("{prefix}.{local}")
            };
            let err = |msg: String| GraphError {
                path: path.clone(),
                kind: node.type_name(),
                msg,
            };
            let inputs = if node.inputs.is_empty() {
                vec![prev]
            } else {
                node.inputs
                    .iter()
                    .map(|n| {
                        self.resolve(n).ok_or_else(|| {
                            let known: Vec<&str> = self
                                .scopes
                                .iter()
                                .flatten()
                                .map(|(n, _)| n.as_str())
                                .collect();
                            err(format!(
                                "no earlier layer is named `{n}` (names here: {})",
                                known.join(", ")
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
            let out = match &node.op {
                Op::Block(children) => {
                    let [x] = inputs[..] else {
                        return Err(err(format!(
                            "a block takes one input, got {}",
                            inputs.len()
                        )));
                    };
                    self.block(children, &path, x)?
                }
                Op::Layer(l) => {
                    let [x] = inputs[..] else {
                        return Err(err(format!(
                            "takes one input, got {} (joins: {})",
                            inputs.len(),
                            JoinSpec::type_names().join(", ")
                        )));
                    };
                    let s = self.shape(x).to_vec();
                    let out = l.output_shape(&s).map_err(&err)?;
                    for t in l.tensors(&s) {
                        let n = elements(&t.shape).unwrap_or(usize::MAX);
                        if t.kind == TensorKind::Param {
                            self.params = self.params.saturating_add(n);
                        }
                        let full = super::layers::tensor_name(&path, &t.name);
                        if let Some(other) = self.names.insert(full.clone(), path.clone()) {
                            return Err(err(format!(
                                "its tensor `{full}` has the name of one of layer {other}'s (give the layers other names)"
                            )));
                        }
                    }
                    self.push(&path, StepOp::Layer(l.clone()), inputs, out, &err)?
                }
                Op::Join(j) => {
                    let shapes: Vec<Vec<usize>> =
                        inputs.iter().map(|&v| self.shape(v).to_vec()).collect();
                    let out = j.output_shape(&shapes).map_err(&err)?;
                    self.push(&path, StepOp::Join(j.clone()), inputs, out, &err)?
                }
            };
            if self.params > MAX_ELEMENTS {
                return Err(err(format!(
                    "the model would have more than {MAX_ELEMENTS} parameters"
                )));
            }
            if let Some(name) = &node.name {
                self.scopes
                    .last_mut()
                    .expect("pushed above")
                    .push((name.clone(), out));
            }
            prev = out;
        }
        self.scopes.pop();
        Ok(prev)
    }

    fn push(
        &mut self,
        path: &str,
        op: StepOp,
        inputs: Vec<usize>,
        out: Vec<usize>,
        err: &dyn Fn(String) -> GraphError,
    ) -> Result<usize, GraphError> {
        if out.contains(&0) {
            return Err(err(format!("the output shape {out:?} is empty")));
        }
        if elements(&out).is_none_or(|n| n > MAX_ELEMENTS) {
            return Err(err(format!(
                "the output shape {out:?} has more than {MAX_ELEMENTS} elements"
            )));
        }
        let input_shapes = inputs.iter().map(|&v| self.shape(v).to_vec()).collect();
        self.steps.push(Step {
            path: path.to_string(),
            op,
            inputs,
            input_shapes,
            output_shape: out,
        });
        Ok(self.steps.len())
    }
}

#[cfg(test)]
mod tests {
    use crate::nn::ModelSpec;

    const BLOCKS: &str = r#"name = "g"
input = [2, 6, 6]

[[layers]]
type = "conv2d"
name = "conv1"
out_channels = 4
kernel = 3
padding = 1

[[layers]]
type = "block"
name = "layer1"

[[layers.layers]]
type = "block"

[[layers.layers.layers]]
type = "conv2d"
name = "conv1"
out_channels = 4
kernel = 3
padding = 1

[[layers.layers.layers]]
type = "relu"
name = "relu"

[[layers.layers.layers]]
type = "block"
name = "downsample"
inputs = ["input"]

[[layers.layers.layers.layers]]
type = "conv2d"
out_channels = 4
kernel = 1

[[layers.layers.layers]]
type = "add"
inputs = ["relu", "downsample"]

[[layers.layers.layers]]
type = "relu"
name = "relu"

[[layers]]
type = "concat"
inputs = ["conv1", "layer1"]

[[layers]]
type = "flatten"
"#;

    #[test]
    fn names_follow_the_module_tree_and_inputs_resolve_by_scope() {
        let spec = ModelSpec::parse(BLOCKS, "g.toml").unwrap();
        let g = spec.graph().unwrap();
        let paths: Vec<&str> = g.steps.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "conv1",
                "layer1.0.conv1",
                "layer1.0.relu",
                "layer1.0.downsample.0",
                "layer1.0.3",
                "layer1.0.relu",
                "2",
                "3"
            ]
        );
        let inputs: Vec<Vec<usize>> = g.steps.iter().map(|s| s.inputs.clone()).collect();
        // The downsample block reads the block's input (conv1's output, value 1); the
        // concat reads conv1 and the block layer1 (its last node, value 6).
        assert_eq!(
            inputs,
            [
                vec![0],
                vec![1],
                vec![2],
                vec![1],
                vec![3, 4],
                vec![5],
                vec![1, 6],
                vec![7]
            ]
        );
        assert_eq!(g.output_shape(), [8 * 36]);
        assert!(!g.is_chain());
        assert_eq!(g.consumers(), [1, 3, 1, 1, 1, 1, 1, 1, 1]);
        // The canonical text parses back to the same spec.
        let again = ModelSpec::parse(&spec.to_toml(), "again").unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn bad_graphs_are_errors_naming_the_node() {
        let with = |extra: &str| {
            ModelSpec::parse(&format!("input = [2, 4, 4]\n{extra}"), "m.toml")
                .unwrap_err()
                .to_string()
        };
        for (text, says) in [
            (
                "[[layers]]\ntype = \"relu\"\ninputs = [\"nope\"]",
                "no earlier layer is named `nope`",
            ),
            (
                "[[layers]]\ntype = \"relu\"\nname = \"input\"",
                "`name` must be",
            ),
            (
                "[[layers]]\ntype = \"relu\"\nname = \"a\"\n[[layers]]\ntype = \"relu\"\ninputs = [\"a\", \"a\"]",
                "takes one input, got 2",
            ),
            (
                "[[layers]]\ntype = \"conv2d\"\nname = \"c\"\nout_channels = 2\nkernel = 1\n[[layers]]\ntype = \"conv2d\"\nname = \"c\"\nout_channels = 2\nkernel = 1",
                "has the name of one of layer c's",
            ),
            (
                "[[layers]]\ntype = \"conv2d\"\nname = \"c\"\nout_channels = 3\nkernel = 1\n[[layers]]\ntype = \"add\"\ninputs = [\"c\", \"input\"]",
                "layer 1 (add): adds values of one shape",
            ),
            ("[[layers]]\ntype = \"block\"", "a block needs `layers`"),
            (
                "[[layers]]\ntype = \"relu\"\ninputs = []",
                "non-empty array of names",
            ),
        ] {
            let e = with(text);
            assert!(e.contains(says) && e.contains("m.toml"), "{text}: {e}");
        }
    }
}

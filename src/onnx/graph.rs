//! An ONNX graph under construction: nodes in order, float32 initializers, int64 constants
//! and fresh value names, written out as ONNX's protobuf `ModelProto` by prost.
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::tensor::Tensor;
use std::collections::{BTreeMap, BTreeSet};

/// An attribute value of a node.
#[derive(Clone, Debug)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(String),
}

/// One dimension of a graph input or output: fixed, or named and chosen at run time.
#[derive(Clone, Debug)]
pub enum Dim {
    Fixed(usize),
    Symbolic(&'static str),
}

/// The graph being built, for operator set `opset` of the default ONNX domain.
#[derive(Debug)]
pub struct Graph {
    pub opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: BTreeSet<String>,
    counter: usize,
}

impl Graph {
    pub fn new(opset: i64) -> Self {
        Graph {
            opset,
            nodes: Vec::new(),
            initializers: Vec::new(),
            names: BTreeSet::new(),
            counter: 0,
        }
    }

    /// `base`, or `base_2`, `base_3`, … if that name is taken.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        while self.names.contains(&name) {
            self.counter += 1;
            name = format!("{base}_{}", self.counter);
        }
        self.names.insert(name.clone());
        name
    }

    /// Reserves a value name that the graph's interface uses (its input).
    pub fn reserve(&mut self, name: &str) -> String {
        self.fresh(name)
    }

    /// A float32 initializer named after `name` with the given shape and values.
    pub fn float(&mut self, name: &str, shape: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        let name = self.fresh(name);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    /// A float32 scalar initializer.
    pub fn scalar(&mut self, name: &str, value: f32) -> String {
        self.float(name, &[], &[value])
    }

    /// A 1-D int64 initializer (Slice's starts, a Reduce's axes).
    pub fn ints(&mut self, name: &str, values: &[i64]) -> String {
        let name = self.fresh(name);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    /// Appends a node `op(inputs)` with one output named after `out`; returns that name.
    /// An empty input name stands for an omitted optional input.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)], out: &str) -> String {
        let output = self.fresh(out);
        let node_name = self.fresh(&format!("{output}/{op}"));
        self.nodes.push(NodeProto {
            op_type: Some(op.into()),
            name: Some(node_name),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
        output
    }

    /// Gives value `v` the name `name` (a graph output's): the node that computes it is
    /// renamed, or an Identity node added when `v` is not computed by a node (the input).
    pub fn rename_output(&mut self, v: &str, name: &str) {
        let name = self.fresh(name);
        match self
            .nodes
            .iter_mut()
            .find(|n| n.output.iter().any(|o| o == v))
        {
            Some(node) => node.output = vec![name],
            None => {
                let node_name = self.fresh(&format!("{name}/Identity"));
                self.nodes.push(NodeProto {
                    op_type: Some("Identity".into()),
                    name: Some(node_name),
                    input: vec![v.to_string()],
                    output: vec![name],
                    ..Default::default()
                });
            }
        }
    }

    /// The model: `input` and `output` (float32, with their dimensions) around the nodes,
    /// with `metadata` as the model's string properties.
    pub fn into_model(
        self,
        name: &str,
        input: (&str, &[Dim]),
        output: (&str, &[Dim]),
        metadata: Vec<(String, String)>,
    ) -> ModelProto {
        let graph = GraphProto {
            name: Some(name.into()),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(input.0, input.1)],
            output: vec![value_info(output.0, output.1)],
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(ir_version(self.opset)),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            producer_name: Some("convnet".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            graph: Some(graph),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto {
                    key: Some(key),
                    value: Some(value),
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// The IR version ONNX released together with an operator set (onnx/docs/Versioning.md):
/// a runtime that knows the operator set reads that IR.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn attribute(name: &str, a: &Attr) -> AttributeProto {
    let mut p = AttributeProto {
        name: Some(name.into()),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.r#type = Some(AttributeType::Int as i32);
            p.i = Some(*i);
        }
        Attr::Float(f) => {
            p.r#type = Some(AttributeType::Float as i32);
            p.f = Some(*f);
        }
        Attr::Ints(v) => {
            p.r#type = Some(AttributeType::Ints as i32);
            p.ints = v.clone();
        }
        Attr::Str(s) => {
            p.r#type = Some(AttributeType::String as i32);
            p.s = Some(s.as_bytes().to_vec());
        }
    }
    p
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Symbolic(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where a layer writes its nodes: the graph, the network's trained tensors by state_dict
/// name, and the layer's own name prefix ("3.", "2.body.1.").
pub struct Scope<'a> {
    pub graph: &'a mut Graph,
    tensors: &'a BTreeMap<String, Tensor<f32>>,
    prefix: String,
}

impl<'a> Scope<'a> {
    pub fn new(graph: &'a mut Graph, tensors: &'a BTreeMap<String, Tensor<f32>>) -> Self {
        Scope {
            graph,
            tensors,
            prefix: String::new(),
        }
    }

    /// The scope of nested layer `name` ("3", "body.1").
    pub fn child(&mut self, name: &str) -> Scope<'_> {
        Scope {
            graph: self.graph,
            tensors: self.tensors,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    /// The layer's path as the model file's errors name it ("2.body.1").
    pub fn path(&self) -> &str {
        self.prefix.trim_end_matches('.')
    }

    /// The operator set the graph targets.
    pub fn opset(&self) -> i64 {
        self.graph.opset
    }

    /// The layer's trained tensor `name` ("weight", "running_var").
    pub fn tensor(&self, name: &str) -> Result<&'a Tensor<f32>, String> {
        let full = crate::nn::layers::tensor_name(self.path(), name);
        self.tensors
            .get(&full)
            .ok_or_else(|| format!("the network has no tensor `{full}`"))
    }

    /// The layer's trained tensor `name` as an initializer of the same name.
    pub fn weight(&mut self, name: &str) -> Result<String, String> {
        let t = self.tensor(name)?;
        let full = crate::nn::layers::tensor_name(self.path(), name);
        Ok(self.graph.float(&full, t.shape(), t.data()))
    }

    /// A node of this layer whose output is named `{path}/{what}`.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
        what: &str,
    ) -> String {
        let out = format!("{}/{what}", self.path());
        self.graph.node(op, inputs, attrs, &out)
    }

    /// A float32 constant of this layer named `{path}/{what}`.
    pub fn float(&mut self, what: &str, shape: &[usize], values: &[f32]) -> String {
        let name = format!("{}/{what}", self.path());
        self.graph.float(&name, shape, values)
    }

    /// An int64 constant of this layer named `{path}/{what}`.
    pub fn ints(&mut self, what: &str, values: &[i64]) -> String {
        let name = format!("{}/{what}", self.path());
        self.graph.ints(&name, values)
    }

    /// Mean or max of x over `axes`, kept as size-1 dimensions (ReduceMean / ReduceMax take
    /// their axes as an attribute before operator set 18 and as an input from it on).
    pub fn reduce(&mut self, max: bool, x: &str, axes: &[i64], what: &str) -> String {
        let op = if max { "ReduceMax" } else { "ReduceMean" };
        if self.opset() >= 18 {
            let a = self.ints(&format!("{what}_axes"), axes);
            self.node(op, &[x, &a], &[("keepdims", Attr::Int(1))], what)
        } else {
            self.node(
                op,
                &[x],
                &[
                    ("axes", Attr::Ints(axes.to_vec())),
                    ("keepdims", Attr::Int(1)),
                ],
                what,
            )
        }
    }

    /// x sliced along each `(axis, begin, end, step)`.
    pub fn slice(&mut self, x: &str, cuts: &[(i64, usize, usize, usize)], what: &str) -> String {
        let col =
            |f: fn(&(i64, usize, usize, usize)) -> i64| cuts.iter().map(f).collect::<Vec<_>>();
        let starts = self.ints(&format!("{what}_starts"), &col(|c| c.1 as i64));
        let ends = self.ints(&format!("{what}_ends"), &col(|c| c.2 as i64));
        let axes = self.ints(&format!("{what}_axes"), &col(|c| c.0));
        let steps = self.ints(&format!("{what}_steps"), &col(|c| c.3 as i64));
        self.node("Slice", &[x, &starts, &ends, &axes, &steps], &[], what)
    }
}

//! ONNX export: a network in inference mode as an ONNX model of standard operators, its
//! preprocessing (mean/std) as the first nodes and its class names in the metadata.
pub mod graph;
#[allow(clippy::all, missing_docs)]
pub mod proto;

use crate::error::{Error, Result};
use crate::nn::graph::StepOp;
use crate::nn::layers::Buffer;
use crate::nn::Network;
use crate::tensor::Tensor;
use graph::{Attr, Dim, Graph, Scope};
use prost::Message;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;

/// Operator sets an export may target: from 13 (Slice with steps, Gemm without bias, the
/// current Pad) to 21. Gelu is a single operator from 20 on, its definition before.
pub const OPSETS: RangeInclusive<i64> = 13..=21;

/// The default operator set: one that onnxruntime and tract both run.
pub const DEFAULT_OPSET: i64 = 17;

/// The graph's input and output names.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Operator set of the default ONNX domain (within [`OPSETS`]).
    pub opset: i64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
        }
    }
}

/// The network as an ONNX model: input `input` float32 [batch, C, H, W] of [0, 1] pixels
/// (batch symbolic), output `logits` [batch, outputs]; `source` names the model in errors.
pub fn export(
    net: &Network<f32>,
    options: &ExportOptions,
    source: &str,
) -> Result<proto::ModelProto> {
    if !OPSETS.contains(&options.opset) {
        return Err(Error::invalid(format!(
            "operator set {} is not supported (choose {} to {})",
            options.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let spec = net.spec();
    let mut tensors: BTreeMap<String, Tensor<f32>> = net.named_params().into_iter().collect();
    for (name, b) in net.named_buffers() {
        if let Buffer::Float(t) = b {
            tensors.insert(name, t);
        }
    }
    let mut g = Graph::new(options.opset);
    let input = g.reserve(INPUT);
    let [c, h, w] = spec.input;
    let mut x = input.clone();
    if !spec.mean.is_empty() {
        let mean = g.float("mean", &[1, c, 1, 1], &spec.mean);
        let std = g.float("std", &[1, c, 1, 1], &spec.std);
        let centred = g.node("Sub", &[&x, &mean], &[], "centred");
        x = g.node("Div", &[&centred, &std], &[], "normalized");
    }
    let graph = spec.graph().map_err(|e| e.into_error(source))?;
    let mut scope = Scope::new(&mut g, &tensors);
    // The ONNX value of each graph value: the input, then each step's output.
    let mut values = vec![x];
    for step in &graph.steps {
        let mut cx = scope.child(&step.path);
        let ins: Vec<&str> = step.inputs.iter().map(|&v| values[v].as_str()).collect();
        let y = match &step.op {
            StepOp::Layer(l) => l.onnx(&step.input_shapes[0], ins[0], &mut cx),
            StepOp::Join(j) => j.onnx(&step.input_shapes, &ins, &mut cx),
        }
        .map_err(|msg| Error::Model {
            source_name: source.into(),
            layer: Some(format!("layer {} ({})", step.path, step.op.type_name())),
            msg: format!("cannot export to ONNX: {msg}"),
        })?;
        values.push(y);
    }
    x = values.swap_remove(graph.output);
    let out_shape = graph.output_shape().to_vec();
    if out_shape.len() > 1 {
        x = g.node("Flatten", &[&x], &[("axis", Attr::Int(1))], "flat");
    }
    g.rename_output(&x, OUTPUT);
    let outputs = out_shape.iter().product();
    let mut metadata = vec![("convnet_model".to_string(), spec.to_toml())];
    if !spec.classes.is_empty() {
        let names = serde_json::to_string(&spec.classes).expect("strings serialise");
        metadata.push(("classes".to_string(), names));
    }
    Ok(g.into_model(
        &spec.name,
        (
            INPUT,
            &[
                Dim::Symbolic("batch"),
                Dim::Fixed(c),
                Dim::Fixed(h),
                Dim::Fixed(w),
            ],
        ),
        (OUTPUT, &[Dim::Symbolic("batch"), Dim::Fixed(outputs)]),
        metadata,
    ))
}

/// Exports the network and writes the model to `path` atomically.
pub fn write(net: &Network<f32>, options: &ExportOptions, source: &str, path: &Path) -> Result<()> {
    let model = export(net, options, source)?;
    crate::io::write_atomic(path, &model.encode_to_vec())
}

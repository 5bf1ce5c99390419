//! A built graph model: each chain of layers (steps that read the step before them, whose
//! outputs have no other reader) runs as one [`Seq`], with its fusions inside; joins run
//! between chains. Values are freed after their last reader, and the gradient of a value
//! read by several steps is summed in the fixed order of those steps, last first.
use super::fuse::fuse;
use super::graph::{Graph, StepOp};
use super::joins::Join;
use super::layers::{Buffer, BuildCx, Named, NamedMut, Param, Pass, Recycled, Seq, Shared};
use crate::ops::activation::add_residual;
use crate::tensor::{Float, Tensor};

/// One unit of the schedule.
enum Run<T> {
    Chain(Seq<T>),
    Join(Box<dyn Join<T>>),
}

struct Exec<T> {
    run: Run<T>,
    /// The values it reads (0: the network's input; i + 1: graph step i's output).
    inputs: Vec<usize>,
    /// The value it writes.
    output: usize,
}

pub struct Dag<T> {
    execs: Vec<Exec<T>>,
    /// Graph values in all (the input and one per step).
    values: usize,
    /// Sample shape of each value.
    shapes: Vec<Vec<usize>>,
    /// The value that is the network's output.
    output: usize,
    /// For each value, the last exec that reads it (None: none does, or only the loss).
    last_use: Vec<Option<usize>>,
    /// The network's spent buffers, shared with every chain's layers.
    pub recycled: Shared<Recycled<T>>,
}

impl<T: Float> Dag<T> {
    /// Builds `graph`'s layers in step order (so that initial values are drawn in the model
    /// file's order), each chain fused when `fuse_chains`.
    pub fn build(graph: &Graph, cx: &mut BuildCx, fuse_chains: bool) -> Self {
        let consumers = graph.consumers();
        let mut execs: Vec<Exec<T>> = Vec::new();
        for (i, step) in graph.steps.iter().enumerate() {
            match &step.op {
                StepOp::Layer(l) => {
                    // Step i reads value `step.inputs[0]`; it extends the chain that wrote
                    // step i − 1's output (value i) when that output has no other reader.
                    let extends = step.inputs == [i]
                        && consumers[i] == 1
                        && execs
                            .last()
                            .is_some_and(|e| e.output == i && matches!(e.run, Run::Chain(_)));
                    let layer = l.build(&step.input_shapes[0], cx);
                    if extends {
                        let e = execs.last_mut().expect("checked above");
                        if let Run::Chain(seq) = &mut e.run {
                            seq.layers.push(layer);
                            seq.paths.push(step.path.clone());
                        }
                        e.output = i + 1;
                    } else {
                        execs.push(Exec {
                            run: Run::Chain(Seq {
                                layers: vec![layer],
                                paths: vec![step.path.clone()],
                                recycled: cx.shared(),
                            }),
                            inputs: step.inputs.clone(),
                            output: i + 1,
                        });
                    }
                }
                StepOp::Join(j) => execs.push(Exec {
                    run: Run::Join(j.build(&step.input_shapes)),
                    inputs: step.inputs.clone(),
                    output: i + 1,
                }),
            }
        }
        if fuse_chains {
            for e in &mut execs {
                if let Run::Chain(seq) = &mut e.run {
                    fuse(seq);
                }
            }
        }
        let values = graph.steps.len() + 1;
        let mut last_use = vec![None; values];
        for (k, e) in execs.iter().enumerate() {
            for &v in &e.inputs {
                last_use[v] = Some(k);
            }
        }
        Dag {
            execs,
            values,
            shapes: (0..values).map(|v| graph.shape(v).to_vec()).collect(),
            output: graph.output,
            last_use,
            recycled: cx.shared(),
        }
    }

    /// The one chain that is the whole network, when it is one (every plain model file).
    fn sole_chain(&mut self) -> Option<&mut Seq<T>> {
        match &mut self.execs[..] {
            [Exec {
                run: Run::Chain(seq),
                inputs,
                output,
            }] if inputs[..] == [0] && *output == self.output => Some(seq),
            _ => None,
        }
    }

    fn chains(&self) -> impl Iterator<Item = &Seq<T>> {
        self.execs.iter().filter_map(|e| match &e.run {
            Run::Chain(s) => Some(s),
            Run::Join(_) => None,
        })
    }

    fn chains_mut(&mut self) -> impl Iterator<Item = &mut Seq<T>> {
        self.execs.iter_mut().filter_map(|e| match &mut e.run {
            Run::Chain(s) => Some(s),
            Run::Join(_) => None,
        })
    }

    /// y = network(x) for a batch in the mode `pass` gives, caching for backward with
    /// `pass.grad`.
    pub fn forward(&mut self, x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        if pass.is_inference() {
            return self.infer(x.data(), x.shape());
        }
        if let Some(seq) = self.sole_chain() {
            return seq.forward(x, pass);
        }
        let mut values: Vec<Option<Tensor<T>>> = (0..self.values).map(|_| None).collect();
        values[0] = Some(x);
        for (k, e) in self.execs.iter_mut().enumerate() {
            let y = match &mut e.run {
                Run::Chain(seq) => {
                    let v = e.inputs[0];
                    let x = if self.last_use[v] == Some(k) {
                        values[v].take()
                    } else {
                        values[v].clone()
                    };
                    seq.forward(x.expect("written before it is read"), pass)
                }
                Run::Join(j) => {
                    let xs: Vec<&Tensor<T>> = e
                        .inputs
                        .iter()
                        .map(|&v| values[v].as_ref().expect("written before it is read"))
                        .collect();
                    let y = j.forward(&xs, pass);
                    for &v in &e.inputs {
                        if self.last_use[v] == Some(k) {
                            values[v] = None;
                        }
                    }
                    y
                }
            };
            values[e.output] = Some(y);
        }
        values[self.output]
            .take()
            .expect("the output is written by the last step")
    }

    /// Inference on borrowed samples x with `shape` (N first): a chain reading the input
    /// reads it in place, and spent values go to the recycled buffers.
    pub fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        if let Some(seq) = self.sole_chain() {
            return seq.infer(x, shape);
        }
        let mut values: Vec<Option<Tensor<T>>> = (0..self.values).map(|_| None).collect();
        if self
            .execs
            .iter()
            .any(|e| matches!(e.run, Run::Join(_)) && e.inputs.contains(&0))
        {
            values[0] = Some(Tensor::copy_of(shape, x)); // a join reads the input as a tensor
        }
        for (k, e) in self.execs.iter_mut().enumerate() {
            let y = match &mut e.run {
                Run::Chain(seq) => match (e.inputs[0], &values[e.inputs[0]]) {
                    (0, None) => seq.infer(x, shape),
                    (_, Some(t)) => seq.infer(t.data(), t.shape()),
                    (_, None) => unreachable!("a value is written before it is read"),
                },
                Run::Join(j) => {
                    let xs: Vec<&Tensor<T>> = e
                        .inputs
                        .iter()
                        .map(|&v| values[v].as_ref().expect("written before it is read"))
                        .collect();
                    j.forward(&xs, &Pass::INFER)
                }
            };
            for &v in &e.inputs {
                if self.last_use[v] == Some(k) {
                    if let Some(spent) = values[v].take() {
                        self.recycled.lock().put(spent);
                    }
                }
            }
            values[e.output] = Some(y);
        }
        values[self.output]
            .take()
            .expect("the output is written by the last step")
    }

    /// Inference that keeps the output of every built layer and join, with its module path.
    pub fn infer_each(&mut self, x: Tensor<T>) -> Vec<(String, Tensor<T>)> {
        let mut values: Vec<Option<Tensor<T>>> = (0..self.values).map(|_| None).collect();
        values[0] = Some(x);
        let mut outs = Vec::new();
        for e in &mut self.execs {
            let y = match &mut e.run {
                Run::Chain(seq) => {
                    let mut h = values[e.inputs[0]].clone().expect("written before");
                    for (layer, path) in seq.layers.iter_mut().zip(&seq.paths) {
                        h = layer.forward(h, &Pass::INFER);
                        outs.push((path.clone(), h.clone()));
                    }
                    h
                }
                Run::Join(j) => {
                    let xs: Vec<&Tensor<T>> = e
                        .inputs
                        .iter()
                        .map(|&v| values[v].as_ref().expect("written before it is read"))
                        .collect();
                    j.forward(&xs, &Pass::INFER)
                }
            };
            values[e.output] = Some(y);
        }
        outs
    }

    /// Back-propagates dy through the cached forward pass, adding into every parameter's
    /// gradient; returns dL/d(input) when `need_dx`.
    pub fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        if let Some(seq) = self.sole_chain() {
            return seq.backward(dy, need_dx);
        }
        let n = dy.shape()[0];
        let mut grads: Vec<Option<Tensor<T>>> = (0..self.values).map(|_| None).collect();
        grads[self.output] = Some(dy);
        for e in self.execs.iter_mut().rev() {
            // A value that reaches no loss gets a zero gradient, so that every layer runs its
            // backward (and its exchanges with the other shards) in every step.
            let g = grads[e.output].take().unwrap_or_else(|| {
                let mut shape = vec![n];
                shape.extend_from_slice(&self.shapes[e.output]);
                Tensor::zeros(&shape)
            });
            let wanted = |v: usize| v != 0 || need_dx;
            match &mut e.run {
                Run::Chain(seq) => {
                    let v = e.inputs[0];
                    if let Some(dx) = seq.backward(g, wanted(v)) {
                        accumulate(&mut grads, v, dx);
                    }
                }
                Run::Join(j) => {
                    for (&v, dx) in e.inputs.iter().zip(j.backward(g)) {
                        if wanted(v) {
                            accumulate(&mut grads, v, dx);
                        }
                    }
                }
            }
        }
        if need_dx {
            grads[0].take()
        } else {
            None
        }
    }

    /// Parameters named by their module paths, in step (state_dict) order.
    pub fn params(&self) -> Named<'_, Param<T>> {
        self.chains().flat_map(|s| s.params()).collect()
    }

    pub fn params_mut(&mut self) -> NamedMut<'_, Param<T>> {
        self.chains_mut().flat_map(|s| s.params_mut()).collect()
    }

    /// Buffers named by their module paths, in step (state_dict) order.
    pub fn buffers(&self) -> Named<'_, Buffer<T>> {
        self.chains().flat_map(|s| s.buffers()).collect()
    }

    pub fn buffers_mut(&mut self) -> NamedMut<'_, Buffer<T>> {
        self.chains_mut().flat_map(|s| s.buffers_mut()).collect()
    }

    /// How many built layers the chains hold (fewer after fusion).
    #[cfg(test)]
    pub fn layer_count(&self) -> usize {
        self.chains().map(|s| s.layers.len()).sum()
    }

    /// How many times a training step exchanges values between shards.
    pub fn exchanges(&self) -> usize {
        self.chains().map(|s| s.exchanges()).sum()
    }

    /// Frees what the layers keep between training steps only to reuse it.
    pub fn release(&mut self) {
        self.chains_mut().for_each(|s| s.release());
    }
}

/// Adds dx into value v's gradient (the first contribution is kept as it is).
fn accumulate<T: Float>(grads: &mut [Option<Tensor<T>>], v: usize, dx: Tensor<T>) {
    match &mut grads[v] {
        Some(g) => add_residual(g.data_mut(), dx.data(), false, None),
        slot => *slot = Some(dx),
    }
}

#[cfg(test)]
mod tests {
    use crate::nn::{BuildOptions, Init, ModelSpec, Network};
    use crate::tensor::Tensor;

    /// A graph with every join, a channel split and shuffle, a squeeze-and-excitation gate,
    /// a value read three times and BatchNorm in a branch.
    const GRAPH: &str = r#"input = [4, 5, 5]

[[layers]]
type = "conv2d"
name = "stem"
out_channels = 6
kernel = 3
padding = 1

[[layers]]
type = "slice"
name = "left"
start = 0
end = 3

[[layers]]
type = "block"
name = "right"
inputs = ["stem"]

[[layers.layers]]
type = "slice"
start = 3
end = 6

[[layers.layers]]
type = "conv2d"
out_channels = 3
kernel = 1

[[layers.layers]]
type = "batchnorm2d"

[[layers]]
type = "concat"
name = "cat"
inputs = ["left", "right"]

[[layers]]
type = "channel_shuffle"
groups = 2

[[layers]]
type = "block"
name = "se"

[[layers.layers]]
type = "adaptiveavgpool2d"
output = 1

[[layers.layers]]
type = "conv2d"
out_channels = 2
kernel = 1

[[layers.layers]]
type = "sigmoid"

[[layers.layers]]
type = "conv2d"
out_channels = 6
kernel = 1

[[layers]]
type = "mul"
name = "gated"
inputs = ["cat", "se"]

[[layers]]
type = "add"
inputs = ["gated", "stem", "cat"]

[[layers]]
type = "flatten"

[[layers]]
type = "linear"
name = "fc"
out_features = 3
"#;

    fn net(seed: u64) -> Network<f64> {
        let spec = ModelSpec::parse(GRAPH, "graph").unwrap();
        Network::<f64>::new(spec, Init::Pytorch, seed)
    }

    fn input(n: usize) -> Tensor<f64> {
        let v = (0..n * 100)
            .map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0)
            .collect();
        Tensor::from_vec(&[n, 4, 5, 5], v).unwrap()
    }

    #[test]
    fn graph_gradients_match_central_differences() {
        let mut a = net(5);
        let names = a.param_names();
        assert!(names.contains(&"right.1.weight".to_string()), "{names:?}");
        assert!(
            names.contains(&"se.3.bias".to_string()) && names.contains(&"fc.weight".to_string())
        );
        let x = input(3);
        let r: Vec<f64> = (0..9).map(|i| (i as f64 * 0.7).sin()).collect();
        let energy = |n: &mut Network<f64>, x: &Tensor<f64>| -> f64 {
            let y = n.forward(x.clone(), true).unwrap();
            y.data().iter().zip(&r).map(|(a, b)| a * b).sum()
        };
        energy(&mut a, &x);
        let dx = a.backward_with_input_grad(Tensor::from_vec(&[3, 3], r.clone()).unwrap());
        let grads: Vec<(String, Tensor<f64>)> = {
            let mut g = Vec::new();
            a.visit_params(&mut |n, p| g.push((n, p.grad.clone())));
            g
        };
        let h = 1e-6;
        let close = |g: f64, fd: f64| (g - fd).abs() <= 1e-5 * (1.0 + g.abs().max(fd.abs()));
        for i in (0..x.len()).step_by(7) {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp.data_mut()[i] += h;
            xm.data_mut()[i] -= h;
            let fd = (energy(&mut a, &xp) - energy(&mut a, &xm)) / (2.0 * h);
            assert!(close(dx.data()[i], fd), "dx[{i}] {} vs {fd}", dx.data()[i]);
        }
        for (name, g) in grads {
            for i in (0..g.len()).step_by(5) {
                let nudge = |a: &mut Network<f64>, d: f64| {
                    a.visit_params_mut(&mut |n, p| {
                        if n == name {
                            p.value.data_mut()[i] += d;
                        }
                    })
                };
                nudge(&mut a, h);
                let ep = energy(&mut a, &x);
                nudge(&mut a, -2.0 * h);
                let em = energy(&mut a, &x);
                nudge(&mut a, h);
                let fd = (ep - em) / (2.0 * h);
                assert!(
                    close(g.data()[i], fd),
                    "{name}[{i}] {} vs {fd}",
                    g.data()[i]
                );
            }
        }
    }

    #[test]
    fn graph_inference_is_the_same_fused_or_not_and_in_shards() {
        let spec = ModelSpec::parse(GRAPH, "graph").unwrap();
        let build = |fuse| {
            Network::<f64>::with_options(
                spec.clone(),
                BuildOptions {
                    seed: 2,
                    fuse,
                    ..Default::default()
                },
            )
        };
        let (mut fused, mut plain) = (build(true), build(false));
        let x = input(40); // several shards
        let a = fused.forward(x.clone(), false).unwrap();
        let b = plain.forward(x.clone(), false).unwrap();
        for (u, v) in a.data().iter().zip(b.data()) {
            assert!((u - v).abs() < 1e-12, "{u} vs {v}");
        }
        let one = fused.infer_rows(&x, 7..8).unwrap();
        for (u, v) in one.data().iter().zip(&a.data()[21..24]) {
            assert!((u - v).abs() < 1e-12, "{u} vs {v}");
        }
        // The traced outputs end in the network's output.
        let each = plain.infer_layers(&x).unwrap();
        assert_eq!(each.last().unwrap().0, "fc");
        for (u, v) in each.last().unwrap().1.data().iter().zip(b.data()) {
            assert!((u - v).abs() < 1e-12, "{u} vs {v}");
        }
    }

    #[test]
    fn graph_training_is_the_same_on_any_thread_count() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut n = net(9).cast::<f32>();
                let x = input(64).cast::<f32>();
                let dloss = |rows: std::ops::Range<usize>, y: &Tensor<f32>| {
                    let d: Vec<f32> = y
                        .data()
                        .iter()
                        .map(|v| v * 0.5 + rows.start as f32)
                        .collect();
                    (Tensor::from_vec(y.shape(), d).unwrap(), 0.0)
                };
                n.forward_backward(x, &dloss).unwrap();
                n.named_params()
                    .into_iter()
                    .map(|(k, _)| k)
                    .zip({
                        let mut g = Vec::new();
                        n.visit_params(&mut |_, p| g.push(p.grad.data().to_vec()));
                        g
                    })
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(run(1), run(3));
    }
}

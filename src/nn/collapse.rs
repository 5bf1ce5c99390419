//! Deep linear networks collapse: consecutive `linear` layers with only `identity` between
//! them compute one affine map, W = W²W¹ and b = b² + W²b¹ (the lecture's intermission).
use super::layers::activation::ActivationSpec;
use super::layers::linear::LinearSpec;
use super::layers::LayerSpec;
use super::network::Network;
use super::spec::ModelSpec;
use super::weights::StateDict;
use crate::error::Result;
use crate::tensor::Tensor;

/// Top-level runs `[start, end]` (inclusive) of linear → (identity)* → linear → … that
/// [`collapse`] merges into one layer (none in a graph model).
pub fn collapsible_runs(spec: &ModelSpec) -> Vec<(usize, usize)> {
    let l = chain(spec);
    let mut runs = Vec::new();
    let mut i = 0;
    while i < l.len() {
        if matches!(l[i], LayerSpec::Linear(_)) {
            let (mut j, mut end) = (i + 1, i);
            loop {
                while j < l.len()
                    && l[j]
                        == LayerSpec::Activation(ActivationSpec(
                            crate::ops::activation::Activation::Identity,
                        ))
                {
                    j += 1;
                }
                if j < l.len() && matches!(l[j], LayerSpec::Linear(_)) {
                    end = j;
                    j += 1;
                } else {
                    break;
                }
            }
            if end > i {
                runs.push((i, end));
                i = end + 1;
                continue;
            }
        }
        i += 1;
    }
    runs
}

/// The layers of a chain model; none for a graph model.
fn chain(spec: &ModelSpec) -> Vec<LayerSpec> {
    spec.chain_layers()
        .map(|v| v.into_iter().cloned().collect())
        .unwrap_or_default()
}

/// The equivalent network with every collapsible run merged into one linear layer
/// (computed in f64); other layers and their weights are kept, renumbered. A graph model
/// (named nodes, joins, blocks) is an error: the collapse is of chains.
pub fn collapse(net: &Network<f32>) -> Result<Network<f32>> {
    let spec = net.spec();
    if spec.chain_layers().is_none() {
        return Err(crate::error::Error::invalid(format!(
            "model `{}` is a graph (named layers, joins or blocks); collapse works on chains of layers",
            spec.name
        )));
    }
    let chain_layers = chain(spec);
    let state = net.state();
    let params = &state.floats;
    let runs = collapsible_runs(spec);
    let mut layers = Vec::new();
    let mut new_state = StateDict::default();
    let new_params = &mut new_state.floats;
    let mut i = 0;
    while i < chain_layers.len() {
        let ni = layers.len();
        if let Some(&(_, end)) = runs.iter().find(|r| r.0 == i) {
            // Accumulate (W, b) through the run: W ← Wₗ·W, b ← Wₗ·b + bₗ.
            let (mut w, mut b, mut rows, mut cols) =
                (Vec::<f64>::new(), Vec::<f64>::new(), 0usize, 0usize);
            let mut any_bias = false;
            for (k, layer) in chain_layers.iter().enumerate().take(end + 1).skip(i) {
                let LayerSpec::Linear(ls) = layer else {
                    continue;
                };
                let wl = &params[&format!("{k}.weight")]; // (out, in)
                let (o, n) = (wl.shape()[0], wl.shape()[1]);
                let bl: Vec<f64> = if ls.bias {
                    params[&format!("{k}.bias")]
                        .data()
                        .iter()
                        .map(|&v| v as f64)
                        .collect()
                } else {
                    vec![0.0; o]
                };
                any_bias |= ls.bias;
                if w.is_empty() {
                    w = wl.data().iter().map(|&v| v as f64).collect();
                    b = bl;
                    (rows, cols) = (o, n);
                    continue;
                }
                let mut nw = vec![0.0; o * cols];
                let mut nb = bl;
                for r in 0..o {
                    for m in 0..n {
                        let a = wl.data()[r * n + m] as f64;
                        nb[r] += a * b[m];
                        for c in 0..cols {
                            nw[r * cols + c] += a * w[m * cols + c];
                        }
                    }
                }
                (w, b, rows) = (nw, nb, o);
            }
            layers.push(LayerSpec::Linear(LinearSpec {
                out_features: rows,
                bias: any_bias,
            }));
            new_params.insert(
                format!("{ni}.weight"),
                Tensor::from_vec(&[rows, cols], w.iter().map(|&v| v as f32).collect())?,
            );
            if any_bias {
                new_params.insert(
                    format!("{ni}.bias"),
                    Tensor::from_vec(&[rows], b.iter().map(|&v| v as f32).collect())?,
                );
            }
            i = end + 1;
            continue;
        }
        let prefix = format!("{i}.");
        for (name, t) in params {
            if let Some(rest) = name.strip_prefix(&prefix) {
                new_params.insert(format!("{ni}.{rest}"), t.clone());
            }
        }
        for (name, c) in &state.counts {
            if let Some(rest) = name.strip_prefix(&prefix) {
                new_state.counts.insert(format!("{ni}.{rest}"), *c);
            }
        }
        layers.push(chain_layers[i].clone());
        i += 1;
    }
    let new_spec = ModelSpec {
        layers: layers.into_iter().map(super::graph::Node::chain).collect(),
        ..spec.clone()
    };
    let mut out = Network::<f32>::new(new_spec, Default::default(), 0);
    out.take_state(&mut new_state, std::path::Path::new("collapsed network"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_agree_before_and_after() {
        let text = "input = [1, 4, 4]\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 7\n[[layers]]\ntype = \"identity\"\n[[layers]]\ntype = \"linear\"\nout_features = 5\nbias = false\n[[layers]]\ntype = \"linear\"\nout_features = 3\n[[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"linear\"\nout_features = 2\n";
        let spec = ModelSpec::parse(text, "t").unwrap();
        assert_eq!(collapsible_runs(&spec), vec![(1, 4)]);
        let mut net = Network::<f32>::new(spec, Default::default(), 1);
        let mut small = collapse(&net).unwrap();
        assert_eq!(small.spec().layers.len(), 4);
        assert_eq!(small.param_count(), 16 * 3 + 3 + 3 * 2 + 2);
        let x = Tensor::from_vec(
            &[3, 1, 4, 4],
            (0..48).map(|v| (v as f32 * 0.37).sin()).collect(),
        )
        .unwrap();
        let a = net.forward(x.clone(), false).unwrap();
        let b = small.forward(x, false).unwrap();
        assert!(
            a.data()
                .iter()
                .zip(b.data())
                .all(|(p, q)| (p - q).abs() < 1e-5),
            "{a:?} {b:?}"
        );
    }
}

//! `convnet plot filters`: a network's first convolution filters and their responses on one input.
use crate::data::dataset;
use crate::data::image::read_image;
use crate::error::{Error, Result};
use crate::nn::Network;
use crate::nn::{LayerSpec, ModelSpec};
use crate::plot::panels::{save_panels, Panel};
use crate::tensor::Tensor;
use std::path::Path;

pub fn plot_filters(net: &Network<f32>, input: Option<&Path>, output: &Path) -> Result<()> {
    let spec = net.spec();
    let i = spec
        .layers
        .iter()
        .position(|l| matches!(l, LayerSpec::Conv2d(_)))
        .ok_or_else(|| {
            Error::invalid(format!(
                "model `{}` has no top-level conv2d layer to show",
                spec.name
            ))
        })?;
    let [c, h, w] = spec.input;
    let x: Vec<f32> = match input {
        Some(p) => {
            let (px, ih, iw) = read_image(p, c)?;
            if (ih, iw) != (h, w) {
                return Err(Error::format(
                    p,
                    format!("image is {ih}×{iw} but the model takes {h}×{w}"),
                ));
            }
            px
        }
        None => {
            let test = dataset::embedded()?
                .test
                .ok_or_else(|| Error::invalid("no embedded test set"))?;
            if test.sample_shape != spec.input {
                return Err(Error::invalid(
                    "the embedded digits do not fit this model; pass --input IMAGE",
                ));
            }
            let mut v = vec![0.0; c * h * w];
            test.gather(&[0], &mut v)?;
            v
        }
    };
    // The network up to and including the first convolution, with the same weights.
    let head_spec = ModelSpec {
        layers: spec.layers[..=i].to_vec(),
        classes: Vec::new(),
        ..spec.clone()
    };
    let mut head = Network::<f32>::new(head_spec, Default::default(), 0);
    let mut keep = net.state();
    let within = |n: &String| {
        n.split('.')
            .next()
            .and_then(|k| k.parse::<usize>().ok())
            .is_some_and(|k| k <= i)
    };
    keep.floats.retain(|n, _| within(n));
    keep.counts.retain(|n, _| within(n));
    head.take_state(&mut keep, Path::new("the model's weights"))?;
    let y = head.forward(Tensor::from_vec(&[1, c, h, w], x.clone())?, false)?; // (1, C_out, H', W')
    let (oc, oh, ow) = (y.shape()[1], y.shape()[2], y.shape()[3]);
    let weight = net
        .named_params()
        .into_iter()
        .find(|(n, _)| *n == format!("{i}.weight"))
        .map(|(_, t)| t)
        .ok_or_else(|| Error::invalid("missing conv weight"))?;
    let (kh, kw) = (weight.shape()[2], weight.shape()[3]);
    let per_filter = weight.len() / oc;
    let cols = oc.clamp(1, 8);
    let mut panels = vec![Panel {
        title: "Input".into(),
        height: h,
        width: w,
        values: x[..h * w].iter().map(|&v| v as f64).collect(),
    }];
    panels.extend((1..cols).map(|_| Panel::blank()));
    for k in 0..oc {
        let f = &weight.data()[k * per_filter..k * per_filter + kh * kw];
        panels.push(Panel {
            title: format!("filter {}", k + 1),
            height: kh,
            width: kw,
            values: f.iter().map(|&v| v as f64).collect(),
        });
    }
    panels.extend((0..(cols - oc % cols) % cols).map(|_| Panel::blank()));
    for k in 0..oc {
        let r = &y.data()[k * oh * ow..(k + 1) * oh * ow];
        panels.push(Panel {
            title: crate::plot::panels::response_title(k),
            height: oh,
            width: ow,
            values: r.iter().map(|&v| v as f64).collect(),
        });
    }
    save_panels(output, &panels, cols, 140)?;
    println!("wrote {} ({} filters of layer {i})", output.display(), oc);
    Ok(())
}

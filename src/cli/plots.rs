//! `convnet plot filters`: a network's first convolution filters and their responses on one input.
use crate::data::dataset;
use crate::data::image::read_image;
use crate::error::{Error, Result};
use crate::nn::graph::StepOp;
use crate::nn::layers::tensor_name;
use crate::nn::LayerSpec;
use crate::nn::{BuildOptions, Network};
use crate::plot::panels::{save_panels, Panel};
use crate::tensor::Tensor;
use std::path::Path;

pub fn plot_filters(net: &Network<f32>, input: Option<&Path>, output: &Path) -> Result<()> {
    let spec = net.spec();
    let graph = spec.graph().map_err(|e| e.into_error(&spec.name))?;
    let i = graph
        .steps
        .iter()
        .find(|s| matches!(s.op, StepOp::Layer(LayerSpec::Conv2d(_))))
        .map(|s| s.path.clone())
        .ok_or_else(|| {
            Error::invalid(format!("model `{}` has no conv2d layer to show", spec.name))
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
    // The same network unfused, so that the convolution's own output can be read.
    let mut plain = Network::<f32>::with_options(
        spec.clone(),
        BuildOptions {
            fuse: false,
            ..Default::default()
        },
    );
    plain.take_state(&mut net.state(), Path::new("the model's weights"))?;
    let outs = plain.infer_layers(&Tensor::from_vec(&[1, c, h, w], x.clone())?)?;
    let y = outs
        .into_iter()
        .find(|(p, _)| *p == i)
        .map(|(_, t)| t)
        .ok_or_else(|| Error::invalid(format!("no output of layer {i}")))?; // (1, C_out, H', W')
    let (oc, oh, ow) = (y.shape()[1], y.shape()[2], y.shape()[3]);
    let weight = net
        .named_params()
        .into_iter()
        .find(|(n, _)| *n == tensor_name(&i, "weight"))
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

//! The model behind `convnet serve`: a pool of networks sharing one set of weights, what a
//! prediction answers, and the model's summary, filters, curves and example images.
use crate::data::image::decode_image;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::graph::StepOp;
use crate::nn::layers::tensor_name;
use crate::nn::weights::StateDict;
use crate::nn::{BuildOptions, LayerSpec, ModelSpec, Network, SummaryRow};
use crate::tensor::Tensor;
use crate::train::trainer::EpochMetrics;
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

/// What a request did wrong, answered with a 4xx status and `{"error": message}`.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub status: u16,
    pub message: String,
}

impl BadRequest {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        BadRequest {
            status,
            message: message.into(),
        }
    }
}

/// Networks with the same weights, one per request in flight: a network caches buffers as it
/// runs (`&mut self`), so concurrent requests each take one and give it back.
struct Pool {
    options: BuildOptions,
    free: Mutex<Vec<Network<f32>>>,
}

/// The first convolution's filters, for the page.
#[derive(Serialize, Clone, Debug)]
pub struct Filters {
    /// Index of the layer among the graph's steps (in a chain, its index in the model file).
    pub layer: usize,
    /// [out_channels, in_channels / groups, kh, kw].
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// `GET /api/model`.
#[derive(Serialize, Clone, Debug)]
pub struct ModelInfo {
    pub name: String,
    /// [C, H, W].
    pub input: [usize; 3],
    pub classes: Vec<String>,
    pub params: usize,
    pub layers: Vec<SummaryRow>,
    /// The first top-level convolution's weights, when there is one.
    pub filters: Option<Filters>,
    /// Labels of the example images (`GET /api/examples/K.png`).
    pub examples: Vec<String>,
    /// The run's training curves (empty without a metrics.csv).
    pub metrics: Vec<MetricsRow>,
}

/// One epoch of the run's metrics.csv.
#[derive(Serialize, Clone, Debug)]
pub struct MetricsRow {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
}

impl From<&EpochMetrics> for MetricsRow {
    fn from(m: &EpochMetrics) -> Self {
        MetricsRow {
            epoch: m.epoch,
            train_loss: m.train_loss,
            test_loss: m.test.as_ref().map(|t| t.loss),
            test_accuracy: m.test.as_ref().map(|t| t.accuracy),
        }
    }
}

/// The top class of a prediction.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Top {
    pub index: usize,
    pub class: String,
    pub probability: f64,
}

/// One top-level layer's output in a prediction.
#[derive(Serialize, Clone, Debug)]
pub struct LayerOutput {
    /// "3: conv2d".
    pub name: String,
    pub kind: &'static str,
    pub shape: Vec<usize>,
    /// The layer's output for the image, flattened in `shape`'s order (with `?activations=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activations: Option<Vec<f32>>,
}

/// `POST /api/predict`.
#[derive(Serialize, Clone, Debug)]
pub struct Prediction {
    pub classes: Vec<String>,
    /// Softmax of the network's outputs, one per class.
    pub probabilities: Vec<f64>,
    pub top: Top,
    pub layers: Vec<LayerOutput>,
}

/// Example images shown on the page, as 8-bit pixels (C, H, W) with their labels.
pub struct Examples {
    pub shape: [usize; 3],
    pub pixels: Vec<Vec<u8>>,
    pub labels: Vec<String>,
}

impl Examples {
    /// The first `n` images of a data set (their labels named by `classes`).
    pub fn from_dataset(data: &Dataset, n: usize, classes: &[String]) -> Result<Examples> {
        let n = n.min(data.len());
        let per: usize = data.sample_shape.iter().product();
        let mut buf = vec![0.0f32; per];
        let mut pixels = Vec::with_capacity(n);
        for i in 0..n {
            data.gather(&[i], &mut buf)?;
            pixels.push(
                buf.iter()
                    .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect(),
            );
        }
        let labels = data.labels[..n]
            .iter()
            .map(|&l| class_name(classes, l as usize))
            .collect();
        Ok(Examples {
            shape: data.sample_shape,
            pixels,
            labels,
        })
    }

    /// Example `k` as a PNG file.
    pub fn png(&self, k: usize) -> Option<Vec<u8>> {
        let px = self.pixels.get(k)?;
        let [c, h, w] = self.shape;
        let (h32, w32) = (h as u32, w as u32);
        let img: image::DynamicImage = match c {
            1 => image::GrayImage::from_raw(w32, h32, px.clone())?.into(),
            3 => {
                let mut rgb = vec![0u8; 3 * h * w]; // (H, W, 3) from planar (3, H, W)
                for (i, p) in rgb.chunks_exact_mut(3).enumerate() {
                    for (ch, v) in p.iter_mut().enumerate() {
                        *v = px[ch * h * w + i];
                    }
                }
                image::RgbImage::from_raw(w32, h32, rgb)?.into()
            }
            _ => return None,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).ok()?;
        Some(out.into_inner())
    }
}

/// A class's name, or its index as text.
fn class_name(classes: &[String], i: usize) -> String {
    classes.get(i).cloned().unwrap_or_else(|| i.to_string())
}

/// The model a server answers for.
pub struct ServedModel {
    spec: ModelSpec,
    info: ModelInfo,
    state: StateDict,
    /// Fused networks for plain predictions.
    fast: Pool,
    /// Unfused networks for predictions that show every layer's output.
    traced: Pool,
    examples: Option<Examples>,
}

impl ServedModel {
    /// Serves `net` (weights loaded; its spec's class names, index text where it has none)
    /// with the run's metrics and example images.
    pub fn new(
        net: Network<f32>,
        metrics: &[EpochMetrics],
        examples: Option<Examples>,
    ) -> Result<ServedModel> {
        let spec = net.spec().clone();
        let classes = spec.class_names();
        let layers = net.summary();
        let graph = spec.graph().map_err(|e| e.into_error(&spec.name))?;
        let filters = graph
            .steps
            .iter()
            .position(|s| matches!(s.op, StepOp::Layer(LayerSpec::Conv2d(_))))
            .and_then(|i| {
                let name = tensor_name(&graph.steps[i].path, "weight");
                net.named_params()
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, t)| Filters {
                        layer: i,
                        shape: t.shape().to_vec(),
                        data: t.data().to_vec(),
                    })
            });
        if let Some(e) = &examples {
            if e.shape != spec.input {
                return Err(Error::invalid(format!(
                    "the example images are {:?} but the model takes {:?}",
                    e.shape, spec.input
                )));
            }
        }
        let info = ModelInfo {
            name: spec.name.clone(),
            input: spec.input,
            classes,
            params: net.param_count(),
            layers,
            filters,
            examples: examples.as_ref().map_or(Vec::new(), |e| e.labels.clone()),
            metrics: metrics.iter().map(MetricsRow::from).collect(),
        };
        let state = net.state();
        let fast = Pool {
            options: BuildOptions::default(),
            free: Mutex::new(vec![net]),
        };
        let traced = Pool {
            options: BuildOptions {
                fuse: false,
                ..Default::default()
            },
            free: Mutex::new(Vec::new()),
        };
        Ok(ServedModel {
            spec,
            info,
            state,
            fast,
            traced,
            examples,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Example `k` as PNG bytes.
    pub fn example_png(&self, k: usize) -> Option<Vec<u8>> {
        self.examples.as_ref()?.png(k)
    }

    /// Runs `f` on a network of `pool`, built from the weights when none is free.
    fn with_net<R>(&self, pool: &Pool, f: impl FnOnce(&mut Network<f32>) -> R) -> Result<R> {
        let free = pool.free.lock().ok().and_then(|mut v| v.pop());
        let mut net = match free {
            Some(n) => n,
            None => {
                let mut n = Network::with_options(self.spec.clone(), pool.options);
                n.take_state(&mut self.state.clone(), Path::new("the served weights"))?;
                n
            }
        };
        let out = f(&mut net);
        if let Ok(mut v) = pool.free.lock() {
            v.push(net);
        }
        Ok(out)
    }

    /// Classifies one image (PNG or JPEG bytes) of the model's input size; with
    /// `activations`, every top-level layer's output comes back too.
    pub fn predict(&self, image: &[u8], activations: bool) -> Result<Prediction, BadRequest> {
        if image.is_empty() {
            return Err(BadRequest::new(
                400,
                "the request has no body: send a PNG or JPEG image",
            ));
        }
        let [c, h, w] = self.info.input;
        // The header's size first: an upload claiming 100,000×100,000 pixels is refused
        // before a decoder allocates anything for it.
        let declared = image::ImageReader::new(std::io::Cursor::new(image))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok());
        if let Some((iw, ih)) = declared.filter(|&(iw, ih)| (ih as usize, iw as usize) != (h, w)) {
            return Err(wrong_size(iw as usize, ih as usize, w, h));
        }
        let (px, ih, iw) = decode_image(image, Path::new("the request body"), c)
            .map_err(|e| BadRequest::new(422, e.to_string()))?;
        if (ih, iw) != (h, w) {
            return Err(wrong_size(iw, ih, w, h));
        }
        let internal = |e: Error| BadRequest::new(500, e.to_string());
        let x = Tensor::from_vec(&[1, c, h, w], px).map_err(internal)?;
        let (logits, layers) = if activations {
            let outs = self
                .with_net(&self.traced, |n| n.infer_layers(&x))
                .and_then(|r| r)
                .map_err(internal)?;
            let logits = outs
                .last()
                .map(|(_, t)| t.data().to_vec())
                .unwrap_or_default();
            let layers = outs
                .into_iter()
                .map(|(path, t)| LayerOutput {
                    kind: self.step_kind(&path),
                    name: format!("{path}: {}", self.step_kind(&path)),
                    shape: t.shape()[1..].to_vec(),
                    activations: Some(t.data().to_vec()),
                })
                .collect();
            (logits, layers)
        } else {
            let y = self
                .with_net(&self.fast, |n| n.infer_rows(&x, 0..1))
                .and_then(|r| r)
                .map_err(internal)?;
            (y.data().to_vec(), self.layer_shapes())
        };
        let probabilities = softmax(&logits);
        let index = (0..probabilities.len())
            .max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]))
            .unwrap_or(0);
        Ok(Prediction {
            classes: self.info.classes.clone(),
            top: Top {
                index,
                class: self.spec.class_name(index),
                probability: probabilities.get(index).copied().unwrap_or(0.0),
            },
            probabilities,
            layers,
        })
    }

    /// The type of the layer or join at module path `path`.
    fn step_kind(&self, path: &str) -> &'static str {
        self.info
            .layers
            .iter()
            .find(|r| r.index == path)
            .map_or("layer", |r| r.kind)
    }

    /// Each top-level layer's name and output shape, without running it.
    fn layer_shapes(&self) -> Vec<LayerOutput> {
        self.info
            .layers
            .iter()
            .filter(|r| r.depth == 0)
            .map(|r| LayerOutput {
                name: format!("{}: {}", r.index, r.kind),
                kind: r.kind,
                shape: r.output_shape.clone(),
                activations: None,
            })
            .collect()
    }
}

/// An image of iw×ih pixels sent to a model taking w×h.
fn wrong_size(iw: usize, ih: usize, w: usize, h: usize) -> BadRequest {
    BadRequest::new(
        422,
        format!("the image is {iw}×{ih} pixels but the model takes {w}×{h} (width × height)"),
    )
}

/// Softmax in f64 (the largest output subtracted first, so no overflow).
fn softmax(z: &[f32]) -> Vec<f64> {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = z.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

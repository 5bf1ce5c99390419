//! Evaluation: loss, accuracy, per-class accuracy and the confusion matrix on a data set.
use crate::data::Dataset;
use crate::error::Result;
use crate::loss::{loss, LossKind};
use crate::nn::Network;
use crate::tensor::Tensor;

/// Images per inference batch: two shards of 32 side by side on the threads (`Network`'s
/// inference shards), so one copy of the network beside it. ResNet-20 on Fashion-MNIST's
/// 10,000 test images, `convnet eval`: 2.32 s at 64, 128 and 500 alike; a 3-epoch training run
/// on 6,000 of its images peaked at 232 MB (64) against 240 MB (128: 3 copies); 255 MB at 128
/// before BatchNorm released its x̂ for evaluation ([`crate::nn::layers::Layer::release`]).
const EVAL_BATCH: usize = 64;

/// What a model scores on a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    /// confusion[true][predicted] counts.
    pub confusion: Vec<Vec<usize>>,
}

impl Evaluation {
    /// Accuracy within each true class (NaN for a class with no samples).
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| row[c] as f64 / row.iter().sum::<usize>() as f64)
            .collect()
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

/// Runs the whole set through the network (no caching) and scores it.
pub fn evaluate(net: &mut Network<f32>, data: &Dataset, kind: LossKind) -> Result<Evaluation> {
    let k = net.output_len();
    let per: usize = data.sample_shape.iter().product();
    let [c, h, w] = data.sample_shape;
    let mut confusion = vec![vec![0usize; k]; k];
    let (mut total_loss, mut correct) = (0.0, 0usize);
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        let mut x = vec![0.0f32; chunk.len() * per]; // (B, C, H, W)
        data.gather(chunk, &mut x)?;
        let out = net.forward(Tensor::from_vec(&[chunk.len(), c, h, w], x)?, false)?; // (B, K)
        let labels: Vec<usize> = chunk.iter().map(|&i| data.labels[i] as usize).collect();
        total_loss += loss(kind, out.data(), &labels, k, None) * chunk.len() as f64;
        for (row, &y) in out.data().chunks(k).zip(&labels) {
            let p = argmax(row);
            correct += usize::from(p == y);
            if y < k {
                confusion[y][p] += 1;
            }
        }
    }
    let n = data.len().max(1) as f64;
    Ok(Evaluation {
        loss: total_loss / n,
        accuracy: correct as f64 / n,
        confusion,
    })
}

//! `dropout` and `dropout2d`: PyTorch's Dropout (elements) and Dropout2d (whole channels):
//! in training each is zeroed with probability p and the rest scaled by 1/(1 − p); inference
//! is the identity. A sample's mask is a function of (step key, layer salt, its row in the
//! whole batch) alone, so results do not depend on how the batch is split between threads.
use super::{chw, BuildCx, Layer, LayerDef, Pass, NO_CACHE};
use crate::error::Result;
use crate::nn::keys::{float_text, Fields};
use crate::tensor::{Float, Tensor};
use crate::onnx::graph::Scope;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutSpec {
    /// Probability of zeroing.
    pub p: f64,
    /// Whole channels of [C, H, W] samples (dropout2d) instead of elements.
    pub channels: bool,
}

impl LayerDef for DropoutSpec {
    const TYPES: &'static [&'static str] = &["dropout", "dropout2d"];

    fn parse(name: &str, f: &mut Fields) -> Result<Self> {
        let p = f.float("p", 0.5, (0.0, 1.0), "a probability in [0, 1]")?;
        Ok(DropoutSpec {
            p,
            channels: name == "dropout2d",
        })
    }

    fn type_name(&self) -> &'static str {
        if self.channels {
            "dropout2d"
        } else {
            "dropout"
        }
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        if self.channels {
            chw(input)?;
        }
        Ok(input.to_vec())
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        vec![("p", float_text(self.p))]
    }

    fn build<T: Float>(&self, _input: &[usize], cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        Box::new(Dropout {
            spec: *self,
            salt: cx.salt(),
            mask: None,
        })
    }

    /// The identity: an exported model runs in inference mode.
    fn onnx(&self, _input: &[usize], x: &str, _cx: &mut Scope) -> Result<String, String> {
        Ok(x.to_string())
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit function of its input.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random stream of one sample's mask.
pub(crate) fn sample_rng(key: u64, salt: u64, row: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(mix(key) ^ salt) ^ row as u64))
}

pub struct Dropout<T> {
    spec: DropoutSpec,
    salt: u64,
    mask: Option<Vec<T>>, // (N, units): 0 or 1/(1 − p) per element (dropout) or channel (2d)
}

impl<T: Float> Layer<T> for Dropout<T> {
    fn forward(&mut self, mut x: Tensor<T>, pass: &Pass) -> Tensor<T> {
        if !pass.train || self.spec.p == 0.0 {
            // The identity: backward passes the gradient through (a mask of ones).
            self.mask = pass.grad.then(Vec::new);
            return x;
        }
        let n = x.shape()[0];
        let per = x.len() / n.max(1);
        let units = if self.spec.channels {
            x.shape()[1]
        } else {
            per
        };
        let run = per / units.max(1);
        let keep = if self.spec.p < 1.0 {
            T::of(1.0 / (1.0 - self.spec.p))
        } else {
            T::zero()
        };
        let mut mask = Vec::with_capacity(n * units);
        for i in 0..n {
            let mut rng = sample_rng(pass.key, self.salt, pass.first_row + i);
            mask.extend((0..units).map(|_| {
                if rng.gen::<f64>() < self.spec.p {
                    T::zero()
                } else {
                    keep
                }
            }));
        }
        x.data_mut()
            .chunks_mut(run)
            .zip(&mask)
            .for_each(|(r, &m)| r.iter_mut().for_each(|v| *v *= m));
        self.mask = pass.grad.then_some(mask);
        x
    }

    fn backward(&mut self, mut dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        let mask = self.mask.take().expect(NO_CACHE);
        if !need_dx {
            return None;
        }
        if !mask.is_empty() {
            let run = dy.len() / mask.len();
            dy.data_mut()
                .chunks_mut(run)
                .zip(&mask)
                .for_each(|(r, &m)| r.iter_mut().for_each(|v| *v *= m));
        }
        Some(dy)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, layer, spec};
    use super::*;

    #[test]
    fn masks_scale_and_depend_only_on_key_and_row() {
        let (_, mut l) = layer("{ type = \"dropout\", p = 0.25 }", &[1000]);
        let x = Tensor::from_vec(&[4, 1000], vec![1.0; 4000]).unwrap();
        let y = l.forward(x.clone(), &Pass::train(7));
        let zeros = y.data().iter().filter(|&&v| v == 0.0).count();
        assert!(
            (800..1200).contains(&zeros),
            "{zeros} of 4000 zeroed at p = 0.25"
        );
        assert!(y.data().iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
        // Rows 2..4 run as their own part draw what they drew in the whole batch.
        let part = Pass {
            first_row: 2,
            ..Pass::train(7)
        };
        let y2 = l.forward(x.slice_rows(2, 4), &part);
        assert_eq!(y2.data(), &y.data()[2000..]);
        assert_ne!(l.forward(x.clone(), &Pass::train(8)).data(), y.data());
        assert_eq!(l.forward(x.clone(), &Pass::INFER), x);
    }

    #[test]
    fn dropout2d_zeroes_whole_channels() {
        let (_, mut l) = layer("{ type = \"dropout2d\" }", &[8, 2, 2]);
        let y = l.forward(
            Tensor::from_vec(&[3, 8, 2, 2], vec![1.0; 96]).unwrap(),
            &Pass::train(1),
        );
        for ch in y.data().chunks(4) {
            assert!(ch == [0.0; 4] || ch == [2.0; 4], "{ch:?}");
        }
        assert!(spec("{ type = \"dropout2d\" }")
            .unwrap()
            .output_shape(&[5])
            .is_err());
        assert!(spec("{ type = \"dropout\", p = 1.5 }").is_err());
    }

    #[test]
    fn gradients_match_finite_differences() {
        gradcheck(
            "{ type = \"dropout\", p = 0.3 }",
            &[3, 2, 2, 2],
            Pass::train(3),
        );
        gradcheck(
            "{ type = \"dropout2d\", p = 0.5 }",
            &[3, 4, 2, 2],
            Pass::train(3),
        );
        gradcheck("{ type = \"dropout\" }", &[3, 5], Pass::FROZEN);
    }
}

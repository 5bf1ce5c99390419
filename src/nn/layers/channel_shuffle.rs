//! `channel_shuffle`: ShuffleNet's channel permutation: the channels as a [groups, C/groups]
//! grid, transposed (PyTorch's `nn.ChannelShuffle`, torchvision's `channel_shuffle`).
use super::{chw, BuildCx, Layer, LayerDef, Pass};
use crate::error::Result;
use crate::nn::keys::Fields;
use crate::onnx::graph::{Attr, Scope};
use crate::tensor::{Float, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelShuffleSpec {
    pub groups: usize,
}

impl LayerDef for ChannelShuffleSpec {
    const TYPES: &'static [&'static str] = &["channel_shuffle"];

    fn parse(_name: &str, f: &mut Fields) -> Result<Self> {
        Ok(ChannelShuffleSpec {
            groups: f.required_usize("groups")?,
        })
    }

    fn type_name(&self) -> &'static str {
        "channel_shuffle"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let [c, _, _] = chw(input)?;
        if c % self.groups != 0 {
            return Err(format!(
                "{c} channels do not split into {} groups",
                self.groups
            ));
        }
        Ok(input.to_vec())
    }

    fn fields(&self, _multiline: bool) -> Vec<(&'static str, String)> {
        vec![("groups", self.groups.to_string())]
    }

    fn build<T: Float>(&self, input: &[usize], _cx: &mut BuildCx) -> Box<dyn Layer<T>> {
        Box::new(ChannelShuffle {
            groups: self.groups,
            channels: input[0],
            plane: input[1] * input[2],
        })
    }

    /// Reshape to [N, g, C/g, H·W], swap the two channel axes, reshape back.
    fn onnx(&self, input: &[usize], x: &str, cx: &mut Scope) -> Result<String, String> {
        let (g, c, plane) = (self.groups, input[0], input[1] * input[2]);
        let split = cx.ints("grid", &[0, g as i64, (c / g) as i64, plane as i64]);
        let grid = cx.node("Reshape", &[x, &split], &[], "grid");
        let perm = Attr::Ints(vec![0, 2, 1, 3]);
        let t = cx.node("Transpose", &[&grid], &[("perm", perm)], "transpose");
        let back = cx.ints(
            "shape",
            &[0, c as i64, input[1] as i64, input[2] as i64],
        );
        Ok(cx.node("Reshape", &[&t, &back], &[], "shuffled"))
    }
}

pub struct ChannelShuffle {
    groups: usize,
    channels: usize,
    plane: usize,
}

impl ChannelShuffle {
    /// Output channel j·g + i is input channel i·(C/g) + j; `inverse` undoes it.
    fn permute<T: Float>(&self, x: &[T], shape: &[usize], inverse: bool) -> Tensor<T> {
        let (g, per_group) = (self.groups, self.channels / self.groups);
        let per = self.channels * self.plane;
        let mut y = vec![T::zero(); x.len()];
        for (src, dst) in x.chunks_exact(per).zip(y.chunks_exact_mut(per)) {
            for i in 0..g {
                for j in 0..per_group {
                    let (a, b) = (i * per_group + j, j * g + i);
                    let (from, to) = if inverse { (b, a) } else { (a, b) };
                    dst[to * self.plane..(to + 1) * self.plane]
                        .copy_from_slice(&src[from * self.plane..(from + 1) * self.plane]);
                }
            }
        }
        Tensor::from_vec(shape, y).expect("the input's shape")
    }
}

impl<T: Float> Layer<T> for ChannelShuffle {
    fn forward(&mut self, x: Tensor<T>, _pass: &Pass) -> Tensor<T> {
        self.permute(x.data(), x.shape(), false)
    }
    fn infer(&mut self, x: &[T], shape: &[usize]) -> Tensor<T> {
        self.permute(x, shape, false)
    }
    fn backward(&mut self, dy: Tensor<T>, need_dx: bool) -> Option<Tensor<T>> {
        need_dx.then(|| self.permute(dy.data(), dy.shape(), true))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gradcheck, layer, spec};
    use super::*;

    #[test]
    fn shuffles_as_torchvision_does() {
        assert!(spec("{ type = \"channel_shuffle\", groups = 2 }")
            .unwrap()
            .output_shape(&[3, 2, 2])
            .is_err());
        // torchvision: x.view(n, 2, 3, h, w).transpose(1, 2): channels 0 3 1 4 2 5.
        let (_, mut l) = layer("{ type = \"channel_shuffle\", groups = 2 }", &[6, 1, 1]);
        let x = Tensor::from_vec(&[1, 6, 1, 1], (0..6).map(f64::from).collect()).unwrap();
        let y = l.forward(x, &Pass::INFER);
        assert_eq!(y.data(), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        gradcheck("{ type = \"channel_shuffle\", groups = 3 }", &[2, 6, 2, 2], Pass::train(0));
    }
}

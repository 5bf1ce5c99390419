//! Weights in safetensors, named as PyTorch's state_dict names them ("3.weight",
//! "4.body.0.bias", "1.running_mean"): float32 tensors, and int64 scalars for counters.
use super::layers::Buffer;
use super::network::Network;
use crate::error::{Error, Result};
use crate::io::write_atomic_to;
use crate::tensor::Tensor;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The tensors of a weights file: float32 ones, and int64 counters (one value each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDict {
    pub floats: BTreeMap<String, Tensor<f32>>,
    pub counts: BTreeMap<String, i64>,
}

/// Reads every tensor of a safetensors file (float32, or int64 scalars), keyed by name.
pub fn read_state(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_state(&bytes, path)
}

/// Reads a safetensors file of float32 tensors only, keyed by name.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_tensors(&bytes, path)
}

/// Parses safetensors bytes of float32 tensors only; `path` names the source in errors.
pub fn parse_tensors(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Tensor<f32>>> {
    let sd = parse_state(bytes, path)?;
    if let Some(name) = sd.counts.keys().next() {
        return Err(Error::Weights {
            path: path.into(),
            tensor: name.clone(),
            msg: "dtype I64, expected F32".into(),
        });
    }
    Ok(sd.floats)
}

/// Parses safetensors bytes of float32 tensors and int64 scalars; `path` names the source.
pub fn parse_state(bytes: &[u8], path: &Path) -> Result<StateDict> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = StateDict::default();
    for (name, view) in st.tensors() {
        let bad = |msg: String| Error::Weights {
            path: path.into(),
            tensor: name.clone(),
            msg,
        };
        match view.dtype() {
            Dtype::F32 => {
                let data: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let t = Tensor::from_vec(view.shape(), data).map_err(|e| bad(e.to_string()))?;
                out.floats.insert(name, t);
            }
            Dtype::I64 if view.data().len() == 8 => {
                let b: [u8; 8] = view.data().try_into().expect("8 bytes");
                out.counts.insert(name, i64::from_le_bytes(b));
            }
            Dtype::I64 => {
                return Err(bad(format!(
                    "an int64 tensor of shape {:?}; only int64 scalars (counters) are read",
                    view.shape()
                )))
            }
            d => {
                return Err(bad(format!(
                    "dtype {d:?}, expected F32 (or an I64 counter)"
                )))
            }
        }
    }
    Ok(out)
}

/// Writes named float32 tensors as a safetensors file, atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let sd = StateDict {
        floats: tensors.iter().cloned().collect(),
        counts: BTreeMap::new(),
    };
    write_state(path, &sd, metadata)
}

/// Writes a state dict as a safetensors file (counters as int64 scalars), atomically.
pub fn write_state(
    path: &Path,
    sd: &StateDict,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_state_to(&crate::io::Disk, path, sd, metadata)
}

/// [`write_state`] through `store`.
pub fn write_state_to(
    store: &dyn crate::io::Storage,
    path: &Path,
    sd: &StateDict,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let floats: Vec<(&String, Vec<usize>, Vec<u8>)> = sd
        .floats
        .iter()
        .map(|(n, t)| {
            let b = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
            (n, t.shape().to_vec(), b)
        })
        .collect();
    let counts: Vec<(&String, Vec<u8>)> = sd
        .counts
        .iter()
        .map(|(n, v)| (n, v.to_le_bytes().to_vec()))
        .collect();
    let mut views = Vec::new();
    let enc = |e: safetensors::SafeTensorError| {
        Error::format(path, format!("cannot encode tensors: {e}"))
    };
    for (name, shape, b) in &floats {
        views.push((
            (*name).clone(),
            TensorView::new(Dtype::F32, shape.clone(), b).map_err(enc)?,
        ));
    }
    for (name, b) in &counts {
        views.push((
            (*name).clone(),
            TensorView::new(Dtype::I64, vec![], b).map_err(enc)?,
        ));
    }
    let data = safetensors::serialize(views, &metadata).map_err(enc)?;
    write_atomic_to(store, path, |w| w.write_all(&data))
}

impl Network<f32> {
    /// Every parameter and buffer, as a weights file holds them.
    pub fn state(&self) -> StateDict {
        let mut sd = StateDict {
            floats: self.named_params().into_iter().collect(),
            counts: BTreeMap::new(),
        };
        for (name, b) in self.named_buffers() {
            match b {
                Buffer::Float(t) => {
                    sd.floats.insert(name, t);
                }
                Buffer::Count(c) => {
                    sd.counts.insert(name, c.min(i64::MAX as u64) as i64);
                }
            }
        }
        sd
    }

    /// Takes every parameter and buffer out of `sd`; missing or misshaped tensors are errors
    /// naming `path`, the tensor and both shapes. What the model does not use stays in `sd`.
    pub fn take_state(&mut self, sd: &mut StateDict, path: &Path) -> Result<()> {
        let mut err = None;
        let mut fail = |tensor: String, msg: String| {
            err.get_or_insert(Error::Weights {
                path: path.into(),
                tensor,
                msg,
            });
        };
        self.visit_params_mut(&mut |name, p| match sd.floats.remove(&name) {
            None => fail(
                name,
                format!("missing (expected shape {:?})", p.value.shape()),
            ),
            Some(t) if t.shape() != p.value.shape() => fail(
                name,
                format!(
                    "shape {:?} in the file, but the model needs {:?}",
                    t.shape(),
                    p.value.shape()
                ),
            ),
            Some(t) => p.value = t,
        });
        self.visit_buffers_mut(&mut |name, b| match b {
            Buffer::Float(t) => match sd.floats.remove(&name) {
                None => fail(name, format!("missing (expected shape {:?})", t.shape())),
                Some(v) if v.shape() != t.shape() => fail(
                    name,
                    format!(
                        "shape {:?} in the file, but the model needs {:?}",
                        v.shape(),
                        t.shape()
                    ),
                ),
                Some(v) => *t = v,
            },
            Buffer::Count(c) => match sd.counts.remove(&name) {
                Some(v) if v >= 0 => *c = v as u64,
                Some(v) => fail(name, format!("a counter cannot be negative, got {v}")),
                None => fail(name, "missing (an int64 counter)".into()),
            },
        });
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Loads parameters and buffers from a safetensors file; missing, extra or misshaped
    /// tensors are errors naming the tensor and both shapes.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let mut sd = read_state(path)?;
        self.take_state(&mut sd, path)?;
        let extra = sd
            .floats
            .iter()
            .map(|(n, t)| (n, format!("shape {:?}", t.shape())))
            .chain(
                sd.counts
                    .keys()
                    .map(|n| (n, "an int64 counter".to_string())),
            )
            .next();
        if let Some((name, what)) = extra {
            return Err(Error::Weights {
                path: path.into(),
                tensor: name.clone(),
                msg: format!("not a parameter or buffer of this model ({what})"),
            });
        }
        Ok(())
    }

    /// Saves parameters and buffers as safetensors, loadable by
    /// `model.load_state_dict(load_file(path))`.
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        write_state(path, &self.state(), None)
    }
}

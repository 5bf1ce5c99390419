//! Weights in safetensors, named as PyTorch's state_dict names them ("3.weight", "4.body.0.bias").
use super::network::Network;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::tensor::Tensor;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Reads every tensor of a safetensors file as float32, keyed by name.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_tensors(&bytes, path)
}

/// Parses safetensors bytes (float32 tensors only); `path` names the source in errors.
pub fn parse_tensors(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Tensor<f32>>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::Weights {
                path: path.into(),
                tensor: name,
                msg: format!("dtype {:?}, expected F32", view.dtype()),
            });
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let t = Tensor::from_vec(view.shape(), data).map_err(|e| Error::Weights {
            path: path.into(),
            tensor: name.clone(),
            msg: e.to_string(),
        })?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Writes named float32 tensors as a safetensors file, atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| t.data().iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            TensorView::new(Dtype::F32, t.shape().to_vec(), b).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::format(path, format!("cannot encode tensors: {e}")))?;
    let data = safetensors::serialize(views, &metadata)
        .map_err(|e| Error::format(path, format!("cannot encode tensors: {e}")))?;
    write_atomic(path, &data)
}

impl Network<f32> {
    /// Loads parameters from a safetensors file; missing, extra or misshaped tensors are
    /// errors naming the tensor and both shapes.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let mut tensors = read_tensors(path)?;
        let mut err = None;
        self.visit_params_mut(&mut |name, p| {
            if err.is_some() {
                return;
            }
            match tensors.remove(&name) {
                None => {
                    err = Some(Error::Weights {
                        path: path.into(),
                        tensor: name,
                        msg: format!("missing (expected shape {:?})", p.value.shape()),
                    })
                }
                Some(t) if t.shape() != p.value.shape() => {
                    err = Some(Error::Weights {
                        path: path.into(),
                        tensor: name,
                        msg: format!(
                            "shape {:?} in the file, but the model needs {:?}",
                            t.shape(),
                            p.value.shape()
                        ),
                    })
                }
                Some(t) => p.value = t,
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if let Some((name, t)) = tensors.into_iter().next() {
            return Err(Error::Weights {
                path: path.into(),
                tensor: name,
                msg: format!("not a parameter of this model (shape {:?})", t.shape()),
            });
        }
        Ok(())
    }

    /// Saves parameters as safetensors, loadable by `model.load_state_dict(load_file(path))`.
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        write_tensors(path, &self.named_params(), None)
    }
}

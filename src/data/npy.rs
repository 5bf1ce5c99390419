//! npy arrays (C order, little- or big-endian) read through `npyz`, sized against the file first.
use crate::error::{Error, Result};
use crate::io::write_atomic;
use npyz::{DType, Order, TypeChar, WriterBuilder};
use std::path::Path;

/// The element data of an npy file, in the widest type of its kind.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
    /// Any other integer dtype.
    Int(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// The dtype as numpy names it, for messages.
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            NpyData::F32(_) => "float32",
            NpyData::F64(_) => "float64",
            NpyData::U8(_) => "uint8",
            NpyData::Int(_) => "integer",
        }
    }
}

/// Reads an npy file; Fortran order, structured and non-numeric dtypes are errors.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes, path)
}

/// Parses npy bytes; `path` names the source in errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    let bad = |m: String| Error::format(path, m);
    let file =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(format!("not a valid npy file: {e}")))?;
    if file.order() == Order::Fortran {
        return Err(bad(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
        ));
    }
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let DType::Plain(ts) = file.dtype() else {
        return Err(bad("structured dtypes are not supported".into()));
    };
    let (kind, size) = (ts.type_char(), ts.size_field() as usize);
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    // Refuse a header that claims more than the file holds before anything is allocated.
    if n.checked_mul(size).is_none_or(|b| b > bytes.len()) {
        return Err(bad(format!("truncated: shape {shape:?} of {size}-byte elements needs more than the {} bytes in the file", bytes.len())));
    }
    let read = |e: std::io::Error| bad(format!("cannot read npy data: {e}"));
    let data = match (kind, size) {
        (TypeChar::Float, 4) => NpyData::F32(file.into_vec().map_err(read)?),
        (TypeChar::Float, 8) => NpyData::F64(file.into_vec().map_err(read)?),
        (TypeChar::Uint, 1) => NpyData::U8(file.into_vec().map_err(read)?),
        (TypeChar::Int, 1) => NpyData::Int(
            file.into_vec::<i8>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Int, 2) => NpyData::Int(
            file.into_vec::<i16>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Int, 4) => NpyData::Int(
            file.into_vec::<i32>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Int, 8) => NpyData::Int(file.into_vec::<i64>().map_err(read)?),
        (TypeChar::Uint, 2) => NpyData::Int(
            file.into_vec::<u16>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Uint, 4) => NpyData::Int(
            file.into_vec::<u32>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Uint, 8) => {
            let v = file.into_vec::<u64>().map_err(read)?;
            NpyData::Int(
                v.into_iter()
                    .map(|x| i64::try_from(x).unwrap_or(i64::MAX))
                    .collect(),
            )
        }
        _ => {
            return Err(bad(format!(
                "dtype {ts} is not supported (float32, float64 or integers)"
            )))
        }
    };
    let len = match &data {
        NpyData::F32(v) => v.len(),
        NpyData::F64(v) => v.len(),
        NpyData::U8(v) => v.len(),
        NpyData::Int(v) => v.len(),
    };
    if len != n {
        return Err(bad(format!(
            "holds {len} elements, its shape {shape:?} says {n}"
        )));
    }
    Ok(NpyArray { shape, data })
}

fn encode<T: npyz::AutoSerialize + Copy>(shape: &[usize], data: &[T]) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut buf)
        .begin_nd()?;
    w.extend(data.iter().copied())?;
    w.finish()?;
    Ok(buf)
}

/// Writes a float32 array atomically.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_atomic(path, &encode(shape, data).map_err(|e| Error::io(path, e))?)
}

/// Writes a float64 array atomically.
pub fn write_npy_f64(path: &Path, shape: &[usize], data: &[f64]) -> Result<()> {
    write_atomic(path, &encode(shape, data).map_err(|e| Error::io(path, e))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_npy_f32(&p, &[2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        let a = read_npy(&p).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data, NpyData::F32(vec![1., 2., 3., 4., 5., 6.]));
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("a.npy"), "{e}");
    }
}

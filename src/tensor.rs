//! A dense, row-major n-dimensional array and the float trait the kernels are generic over.
use crate::error::{Error, Result};

/// The element types the network math runs in: f32 for real work, f64 for gradient checks.
pub trait Float:
    num_traits::Float
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + std::fmt::Display
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + 'static
{
    /// Converts from f64 (rounding for f32).
    fn of(x: f64) -> Self;
    /// Converts to f64 exactly.
    fn f64(self) -> f64;
}

impl Float for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
}

/// A dense row-major array: `data.len()` is always the product of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T = f32> {
    shape: Vec<usize>,
    data: Vec<T>,
}

impl<T: Float> Tensor<T> {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![T::zero(); shape.iter().product()],
        }
    }

    /// Wraps `data`, checking that its length matches `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape {
                what: "tensor data".into(),
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// A copy of `data` with `shape`, which the caller guarantees to match.
    pub(crate) fn copy_of(shape: &[usize], data: &[T]) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn data(&self) -> &[T] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The same data under a new shape with the same number of elements.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        Tensor::from_vec(shape, self.data)
    }

    /// Element-wise conversion to another float type.
    pub fn cast<U: Float>(&self) -> Tensor<U> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| U::of(v.f64())).collect(),
        }
    }

    /// Rows `start..end` along the first axis.
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor<T> {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Tensor {
            shape,
            data: self.data[start * row..end * row].to_vec(),
        }
    }

    /// The row-wise concatenation of `parts` (each (n_i, ...) with the same trailing shape).
    pub fn concat_rows(parts: Vec<Tensor<T>>) -> Tensor<T> {
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            return Tensor::zeros(&[0]);
        };
        let mut shape = first.shape;
        let mut data = first.data;
        for p in parts {
            debug_assert_eq!(p.shape[1..], shape[1..]);
            shape[0] += p.shape[0];
            data.extend_from_slice(&p.data);
        }
        Tensor { shape, data }
    }

    /// Largest absolute value (0 for an empty tensor).
    pub fn max_abs(&self) -> f64 {
        self.data.iter().fold(0.0f64, |m, v| m.max(v.f64().abs()))
    }
}

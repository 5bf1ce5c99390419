//! Pure numeric kernels (no layer state): GEMM, convolution, pooling, activations.
#[macro_use]
pub(crate) mod simd;
pub mod activation;
pub mod adaptive_pool;
pub mod conv;
pub mod fft;
pub mod gemm;
pub mod kernels;
pub mod norm;
pub mod pool;
pub(crate) mod reduce;
pub mod shape;
pub mod signal;

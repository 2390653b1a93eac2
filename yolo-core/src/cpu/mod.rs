//! CPU kernels for the `flex` backend: raw loops over f32 slices, with nothing of autodiff.
//!
//! - [`gemm_kernel`]: packed GEMM micro-kernels (AVX2 + FMA, AVX-512F, picked at run time) and
//!   the dot-product kernels of the weight gradient;
//! - [`conv`]: convolution plans on those kernels (im2col packed into panels, the padded input
//!   read in place, Winograd `F(2x2)`/`F(4x4)` forward and `F(3x3, 2x2)` for `dW`), the input
//!   and weight gradients, and the fused inference conv + bias + SiLU on a plain `flex` tensor;
//! - [`pool`]: SPPF's separable max-pool, forward and backward;
//! - [`simd`]: vectorised elementwise math (`exp`, sigmoid, SiLU, the conv epilogue, `dot`)
//!   and `multiversion!`, which compiles a loop for AVX-512 / AVX2 / baseline;
//! - [`flex`]: `flex` tensors as slices and back without copies, buffers filled on all cores.
//!
//! Imports go one way: [`crate::ops`] (the backend operations) and, for inference-only fast
//! paths, [`crate::nn`] use `cpu`; `cpu` imports from neither. A new backend's kernels (a GPU
//! kernel, say) would sit beside this folder and be dispatched to from `ops`.

pub mod conv;
pub mod flex;
pub mod gemm_kernel;
pub mod pool;
pub mod simd;

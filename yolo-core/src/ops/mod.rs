//! Backend operations, one file each: forward, backward, and the dispatch between our CPU
//! kernels and Burn's own ops.
//!
//! Each op is a `#[backend_extension(Flex, Autodiff)]` trait (or, for the optimizer step, plain
//! functions over tensors) with an implementation for the `flex` CPU backend that runs our
//! kernels on all cores, and one for `Autodiff` that registers its own backward. A public
//! function in front of it (`silu`, `conv2d`, `batch_norm_silu_train`, `cat`, …) runs the op
//! on `flex` and otherwise hands the input back (`Err(x)`) or runs Burn's composition, so GPU
//! backends (wgpu, CUDA) get Burn's ops. Every op here keeps the result of the Burn
//! composition it replaces to float rounding; its tests compare value and gradients.
//!
//! - model ops: [`act`] (SiLU, sigmoid), [`conv`], [`batch_norm`] (training BatchNorm, with
//!   SiLU fused), [`cat`], [`upsample`], [`max_pool`] (SPPF's pool);
//! - loss ops: [`bce`] (BCE with logits, summed), [`dfl`] (the DFL expectation);
//! - optimizer: [`sgd`] (Nesterov SGD step, gradient norm, EMA blend).
//!
//! Imports go one way: [`crate::nn`] and the training code use `ops`; `ops` uses
//! [`crate::cpu`] for its kernels and never imports from `nn`.

pub mod act;
pub mod batch_norm;
pub mod bce;
pub mod cat;
pub mod conv;
pub mod dfl;
pub mod max_pool;
pub mod sgd;
pub mod upsample;

//! The model's modules, named as in Ultralytics (`nn/modules/{conv,block,head}.py`), smallest
//! first: [`conv`] (Conv + BatchNorm + SiLU), [`block`] (Bottleneck, C2f, SPPF), [`head`]
//! (Detect with DFL, and the pure `decode` of its output), then the [`backbone`] (`model.0` …
//! `model.9`) and the [`neck`] (`model.10` … `model.21`) built from them. The whole model,
//! [`YoloV8`](crate::YoloV8), is in [`crate::model`].
//!
//! Only modules live here: what they compute runs through [`crate::ops`] (backend operations
//! with their own backward, which pick our CPU kernels on `flex` and Burn's ops elsewhere) and,
//! for the inference-only fast paths (the fused conv, `decode`), [`crate::cpu`] directly.
//!
//! Imports go one way: `nn` → `ops` → `cpu`. Nothing in `ops` or `cpu` imports from `nn`.

pub mod backbone;
pub mod block;
pub mod conv;
pub mod head;
pub mod neck;

pub use block::{Bottleneck, BottleneckConfig, C2f, C2fConfig, Sppf, SppfConfig};
pub use conv::{Conv, ConvConfig};
pub use head::{decode, Detect, DetectConfig, HeadMeta, HeadOutput, LevelOutput};

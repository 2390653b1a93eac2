//! # yolo-core
//!
//! The YOLOv8 detection model on [Burn](https://burn.dev) for every scale and class count,
//! numerically identical to Ultralytics, with weights in the Ultralytics state_dict layout.
//!
//! ```no_run
//! use yolo_core::{backend, weights};
//! let device = backend::default_device();
//! let (model, meta) = weights::load_model("yolov8n.safetensors", &device).unwrap();
//! ```
//!
//! Layers, each importing only those below it (`docs/architecture.md`):
//! - [`model`] ([`YoloV8`], [`ModelConfig`]) is built from the modules of [`nn`] (conv, blocks,
//!   head, backbone, neck);
//! - [`ops`]: backend operations with their own backward, which run our kernels on the CPU
//!   backend and Burn's ops elsewhere;
//! - [`cpu`]: the CPU kernels (GEMM micro-kernels, conv plans, Winograd, pooling, SIMD math).
//!
//! Beside them: [`data`] (datasets, labels, letterbox), [`boxes`], [`nms`], [`metrics`],
//! [`confusion`], [`plots`], [`val`] (the validation loop), [`weights`] (checkpoints),
//! [`backend`] (devices), [`files`] and [`runs`].

pub mod amp;
pub mod backend;
pub mod boxes;
pub mod confusion;
pub mod cpu;
pub mod data;
pub mod error;
pub mod files;
pub mod metrics;
pub mod model;
pub mod nms;
pub mod nn;
pub mod ops;
pub mod plots;
pub mod runs;
pub mod scale;
pub mod val;
pub mod weights;

pub use burn;
pub use error::{CoreError, Result, WeightProblem};
pub use model::{ModelConfig, YoloV8};
pub use nn::{decode, HeadMeta, HeadOutput};
pub use scale::{Multiples, Scale};

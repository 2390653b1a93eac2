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

pub mod backbone;
pub mod backend;
pub mod boxes;
pub mod confusion;
pub mod data;
pub mod error;
pub mod metrics;
pub mod model;
pub mod neck;
pub mod nms;
pub mod nn;
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

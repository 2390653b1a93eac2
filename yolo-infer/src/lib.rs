//! yolo-infer: check data, predict, validate (mAP quality gate) and serve YOLOv8 detectors.
//!
//! Stands on `yolo-core` only. [`detector::Detector`] is the inference API: a checkpoint loaded
//! once, images in, detections in original-image pixels out.
//!
//! ```no_run
//! use yolo_infer::detector::{DetectOptions, Detector};
//! let device = yolo_infer::yolo_core::backend::default_device();
//! let det = Detector::load("best.safetensors".as_ref(), 640, &device).unwrap();
//! let img = yolo_infer::yolo_core::data::image::read_rgb8("bus.jpg").unwrap();
//! for d in det.detect(&img, &DetectOptions::default()).unwrap() {
//!     println!("{} {:.2} {:?}", d.class_name, d.score, d.xyxy);
//! }
//! ```

pub mod check_data;
pub mod detector;
pub mod error;
pub mod gate;
pub mod predict;
pub mod serve;
pub mod val;

pub use yolo_core;

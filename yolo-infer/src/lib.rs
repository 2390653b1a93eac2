//! yolo-infer: predict, validate (mAP quality gate) and serve YOLOv8 detectors.
//!
//! Stands on `yolo-core` only.

pub mod check_data;
pub mod gate;
pub mod val;

pub use yolo_core;

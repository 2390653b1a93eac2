//! yolo-infer: Predict, validate (mAP quality gate) and serve YOLOv8 detectors. Not implemented yet: see issue 4.
//!
//! Stands on `yolo-core` only.

pub use yolo_core;

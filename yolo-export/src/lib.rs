//! yolo-export: Export YOLOv8 checkpoints to ONNX. Not implemented yet: see the export issue.
//!
//! Stands on `yolo-core` only.

pub use yolo_core;

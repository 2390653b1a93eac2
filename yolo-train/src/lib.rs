//! yolo-train: Train YOLOv8 detectors (loss, optimizer, EMA, checkpoints). Not implemented yet: see issue 5.
//!
//! Stands on `yolo-core` only.

pub use yolo_core;

//! yolo-train: Train YOLOv8 detectors (loss, optimizer, EMA, checkpoints).
//!
//! Stands on `yolo-core` only. So far: the training loss, numerically matching Ultralytics
//! 8.4.190 `v8DetectionLoss` (value and gradient):
//! - [`iou`]: CIoU on tensors (`bbox_iou(.., CIoU=True)`),
//! - [`assigner`]: the task-aligned assigner (`TaskAlignedAssigner`),
//! - [`loss`]: box (CIoU), class (BCE) and DFL losses (`v8DetectionLoss`).

pub mod assigner;
pub mod iou;
pub mod loss;

pub use assigner::{Assignment, TaskAlignedAssigner};
pub use loss::{v8_detection_loss, LossConfig, LossOutput, Target, Targets};
pub use yolo_core;

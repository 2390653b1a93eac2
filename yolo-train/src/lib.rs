//! yolo-train: Train YOLOv8 detectors (loss, optimizer, EMA, checkpoints).
//!
//! Stands on `yolo-core` only. The training loss, numerically matching Ultralytics 8.4.190
//! `v8DetectionLoss` (value and gradient):
//! - [`iou`]: CIoU on tensors (`bbox_iou(.., CIoU=True)`),
//! - [`assigner`]: the task-aligned assigner (`TaskAlignedAssigner`),
//! - [`loss`]: box (CIoU), class (BCE) and DFL losses (`v8DetectionLoss`).
//!
//! and the training loop of 8.4.190's `BaseTrainer`:
//! - [`config`]: `TrainConfig` with Ultralytics' defaults, saved as `args.yaml`,
//! - [`schedule`]: LR lambda, warmup, accumulation (pure functions),
//! - [`optim`]: the three parameter groups, SGD (Nesterov) / AdamW, `optimizer=auto`,
//! - [`ema`]: `ModelEMA`,
//! - [`augment`]: `v8_transforms` (Mosaic, RandomPerspective, MixUp, HSV, flips),
//! - [`loader`]: batches (letterboxed for validation, augmented for training), loaded ahead on
//!   a background thread, with an optional RAM cache,
//! - [`trainer`]: the explicit loop, run folder, `results.csv`, checkpoints,
//! - [`resume`]: the per-epoch training state behind exact `--resume`,
//! - [`amp`]: loss scaling for mixed precision (`GradScaler`).
//!
//! Whole training steps match Ultralytics + PyTorch (`tests/train_step.rs`).

pub mod amp;
pub mod assigner;
pub mod augment;
pub mod config;
pub mod ema;
pub mod error;
pub mod iou;
pub mod loader;
pub mod loss;
pub mod optim;
pub mod push;
pub mod resume;
pub mod schedule;
pub mod trainer;

pub use assigner::{Assignment, TaskAlignedAssigner};
pub use config::{OptimizerKind, TrainConfig};
pub use error::{Result, TrainError};
pub use loss::{v8_detection_loss, LossConfig, LossOutput, Target, Targets};
pub use trainer::{resume, resume_with, train, train_traced, train_with, EpochStats, Report, StepTrace, TrainSummary};
pub use yolo_core;

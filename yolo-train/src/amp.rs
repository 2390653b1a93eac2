//! Loss scaling for mixed precision training: PyTorch's `torch.amp.GradScaler`, which
//! Ultralytics' trainer uses with its defaults when `amp=True`.
//!
//! With [`yolo_core::amp::autocast`] the convs' backward runs in f16, whose smallest normal
//! value is 6e-5: gradients below it lose precision or flush to zero. The loop multiplies the
//! loss by [`GradScaler::scale`] before backward, divides the gradients by it before clipping
//! and the optimizer step, and skips the step when a gradient overflowed (inf/NaN), halving the
//! scale; after `growth_interval` clean steps in a row the scale doubles.

use serde::{Deserialize, Serialize};
use yolo_core::burn::tensor::Tensor;

/// The scaler's settings (PyTorch's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradScalerConfig {
    pub init_scale: f32,
    pub growth_factor: f32,
    pub backoff_factor: f32,
    pub growth_interval: u32,
}

impl Default for GradScalerConfig {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// The scale and the count of clean steps since it last changed (saved in the training state
/// for an exact resume).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    pub config: GradScalerConfig,
    /// What the loss is multiplied by (f32, as PyTorch keeps it).
    pub scale: f32,
    /// Clean steps in a row since the scale last changed.
    pub growth_tracker: u32,
}

impl GradScaler {
    pub fn new(config: GradScalerConfig) -> Self {
        Self {
            config,
            scale: config.init_scale,
            growth_tracker: 0,
        }
    }

    /// After an optimizer step (taken, or skipped because `found_inf`), as
    /// `torch._amp_update_scale_`: an overflow multiplies the scale by `backoff_factor` and
    /// resets the count; the `growth_interval`-th clean step in a row multiplies it by
    /// `growth_factor` (unless that overflows f32) and resets the count.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.config.backoff_factor;
            self.growth_tracker = 0;
            return;
        }
        let clean = self.growth_tracker + 1;
        if clean == self.config.growth_interval {
            let grown = self.scale * self.config.growth_factor;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        } else {
            self.growth_tracker = clean;
        }
    }
}

/// The loss backward runs on: multiplied by the scale with a scaler (`scaler.scale(loss)`),
/// as it is without one.
pub fn scale_loss(scaler: Option<&GradScaler>, loss: Tensor<1>) -> Tensor<1> {
    match scaler {
        Some(s) => loss.mul_scalar(s.scale),
        None => loss,
    }
}

impl Default for GradScaler {
    fn default() -> Self {
        Self::new(GradScalerConfig::default())
    }
}

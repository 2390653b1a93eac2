//! `Conv`: Conv2d (no bias) + BatchNorm (eps 1e-3, momentum 0.03) + SiLU.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

/// BatchNorm epsilon Ultralytics sets in `initialize_weights`.
pub const BN_EPS: f64 = 1e-3;
/// BatchNorm momentum (PyTorch meaning) Ultralytics sets in `initialize_weights`.
pub const BN_MOMENTUM: f64 = 0.03;

/// Configuration of [`Conv`], as Ultralytics' `Conv(c1, c2, k, s)` with `autopad` padding.
#[derive(Config, Debug)]
pub struct ConvConfig {
    /// Input channels.
    pub c1: usize,
    /// Output channels.
    pub c2: usize,
    /// Square kernel size.
    #[config(default = 1)]
    pub k: usize,
    /// Stride.
    #[config(default = 1)]
    pub s: usize,
    /// Groups.
    #[config(default = 1)]
    pub g: usize,
}

impl ConvConfig {
    /// Builds the module with PyTorch's default initialisation of conv weights
    /// (Kaiming uniform, a = sqrt(5)), BatchNorm gamma 1 and beta 0.
    pub fn init(&self, device: &Device) -> Conv {
        let pad = self.k / 2;
        Conv {
            conv: Conv2dConfig::new([self.c1, self.c2], [self.k, self.k])
                .with_stride([self.s, self.s])
                .with_groups(self.g)
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(self.c2)
                .with_epsilon(BN_EPS)
                .with_momentum(BN_MOMENTUM)
                .init(device),
        }
    }
}

/// Standard convolution block: `silu(bn(conv(x)))`.
#[derive(Module, Debug)]
pub struct Conv {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl Conv {
    /// # Shapes
    /// - `x`: `[B, c1, H, W]`
    /// - output: `[B, c2, H / s, W / s]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        silu(self.bn.forward(self.conv.forward(x)))
    }
}

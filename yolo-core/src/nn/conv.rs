//! `Conv`: Conv2d (no bias) + BatchNorm (eps 1e-3, momentum 0.03) + SiLU.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use crate::cpu::conv::{self as cpu_conv, Activation, PackCache};
use crate::ops::act::silu;
use crate::ops::{batch_norm, conv as conv_op};
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
            packed: PackCache::default(),
        }
    }
}

/// Standard convolution block: `silu(bn(conv(x)))`.
///
/// The conv has no bias; one that has a bias is a [fused](Conv::fuse) block whose BatchNorm is
/// already folded into the conv, and `bn` is skipped.
#[derive(Module, Debug)]
pub struct Conv {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    /// The fused conv's weights packed for the CPU micro-kernels, kept between forwards
    /// (not a parameter, not saved; checked against the weights on every use).
    #[module(skip)]
    pub packed: PackCache,
}

impl Conv {
    /// # Shapes
    /// - `x`: `[B, c1, H, W]`
    /// - output: `[B, c2, H / s, W / s]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.is_fused() {
            // One pass per tile on the CPU backend; Burn's conv elsewhere.
            match cpu_conv::conv2d_cached(x, &self.conv, Activation::Silu, &self.packed) {
                Ok(y) => y,
                Err(x) => silu(conv_op::conv2d_any(x, &self.conv)),
            }
        } else {
            // Training: the conv as one op with its own backward on the CPU backend.
            let y = conv_op::conv2d(x, &self.conv).unwrap_or_else(|x| conv_op::conv2d_any(x, &self.conv));
            // BatchNorm + SiLU as one op there too.
            batch_norm::batch_norm_silu_train(&self.bn, y).unwrap_or_else(|y| batch_norm::burn_batch_norm_silu(&self.bn, y))
        }
    }

    /// [`forward`](Self::forward) of `xs` concatenated along channels. A fused 1x1 block on
    /// the CPU backend reads the parts in place ([`cpu_conv::conv2d_cat_cached`]); otherwise
    /// they are concatenated first.
    ///
    /// # Shapes
    /// - `xs`: `[B, c_i, H, W]` with `Σ c_i = c1`
    /// - output: `[B, c2, H / s, W / s]`
    pub fn forward_cat(&self, xs: Vec<Tensor<4>>) -> Tensor<4> {
        let xs = if self.is_fused() {
            match cpu_conv::conv2d_cat_cached(xs, &self.conv, Activation::Silu, &self.packed) {
                Ok(y) => return y,
                Err(xs) => xs,
            }
        } else {
            xs
        };
        self.forward(crate::ops::cat::cat(xs, 1))
    }

    /// Whether the BatchNorm is folded into the conv.
    pub fn is_fused(&self) -> bool {
        self.conv.bias.is_some()
    }

    /// Folds the BatchNorm's inference statistics into the conv (Ultralytics'
    /// `fuse_conv_and_bn`): `w' = w * s`, `b' = beta - mean * s` with
    /// `s = gamma / sqrt(running_var + eps)` per output channel. One op less per block at
    /// inference, same output up to float rounding. Only for inference: a fused block does
    /// not train its BatchNorm and is not saved (checkpoints hold the unfused layout).
    pub fn fuse(mut self) -> Self {
        if self.is_fused() {
            return self;
        }
        let bn = &self.bn;
        let scale = bn.gamma.val()
            / (bn.running_var.value().add_scalar(bn.epsilon)).sqrt(); // [c2]
        let bias = bn.beta.val() - bn.running_mean.value() * scale.clone(); // [c2]
        let [c2, _, _, _] = self.conv.weight.dims();
        let weight = self.conv.weight.val() * scale.reshape([c2, 1, 1, 1]);
        self.conv.weight = Param::from_tensor(weight);
        self.conv.bias = Some(Param::from_tensor(bias));
        self
    }
}

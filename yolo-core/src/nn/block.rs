//! CSP blocks: `Bottleneck`, `C2f` and `SPPF`, as Ultralytics `nn/modules/block.py`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Tensor};

use super::conv::{Conv, ConvConfig};
use crate::ops::max_pool;

/// Configuration of [`Bottleneck`] with Ultralytics' C2f arguments (`k = (3, 3)`, `e = 1.0`).
#[derive(Config, Debug)]
pub struct BottleneckConfig {
    pub c1: usize,
    pub c2: usize,
    /// Residual connection (used only when `c1 == c2`).
    #[config(default = true)]
    pub shortcut: bool,
    /// Hidden-channel expansion.
    #[config(default = 1.0)]
    pub e: f64,
}

impl BottleneckConfig {
    pub fn init(&self, device: &Device) -> Bottleneck {
        let c_ = (self.c2 as f64 * self.e) as usize;
        Bottleneck {
            cv1: ConvConfig::new(self.c1, c_).with_k(3).init(device),
            cv2: ConvConfig::new(c_, self.c2).with_k(3).init(device),
            add: self.shortcut && self.c1 == self.c2,
        }
    }
}

/// Two 3x3 convolutions with an optional residual.
#[derive(Module, Debug)]
pub struct Bottleneck {
    pub cv1: Conv,
    pub cv2: Conv,
    pub add: bool,
}

impl Bottleneck {
    /// Folds every BatchNorm into its conv (see [`Conv::fuse`]).
    pub fn fuse(self) -> Self {
        Self {
            cv1: self.cv1.fuse(),
            cv2: self.cv2.fuse(),
            ..self
        }
    }

    /// # Shapes
    /// - `x`: `[B, c1, H, W]`
    /// - output: `[B, c2, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.cv2.forward(self.cv1.forward(x.clone()));
        if self.add {
            x + y
        } else {
            y
        }
    }
}

/// Configuration of [`C2f`]: `C2f(c1, c2, n, shortcut, e = 0.5)`.
#[derive(Config, Debug)]
pub struct C2fConfig {
    pub c1: usize,
    pub c2: usize,
    /// Number of bottlenecks.
    #[config(default = 1)]
    pub n: usize,
    #[config(default = false)]
    pub shortcut: bool,
    #[config(default = 0.5)]
    pub e: f64,
}

impl C2fConfig {
    pub fn init(&self, device: &Device) -> C2f {
        let c = (self.c2 as f64 * self.e) as usize;
        C2f {
            cv1: ConvConfig::new(self.c1, 2 * c).init(device),
            cv2: ConvConfig::new((2 + self.n) * c, self.c2).init(device),
            m: (0..self.n)
                .map(|_| {
                    BottleneckConfig::new(c, c)
                        .with_shortcut(self.shortcut)
                        .init(device)
                })
                .collect(),
            c,
        }
    }
}

/// CSP bottleneck with two convolutions ("C2f"): split, a chain of bottlenecks whose every
/// output is kept, concat, 1x1 fuse.
#[derive(Module, Debug)]
pub struct C2f {
    pub cv1: Conv,
    pub cv2: Conv,
    pub m: Vec<Bottleneck>,
    /// Hidden channels (half of `cv1`'s output).
    pub c: usize,
}

impl C2f {
    /// Folds every BatchNorm into its conv (see [`Conv::fuse`]).
    pub fn fuse(self) -> Self {
        Self {
            cv1: self.cv1.fuse(),
            cv2: self.cv2.fuse(),
            m: self.m.into_iter().map(Bottleneck::fuse).collect(),
            ..self
        }
    }

    /// # Shapes
    /// - `x`: `[B, c1, H, W]`
    /// - output: `[B, c2, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // Ultralytics splits cv1's output in two halves and concatenates them back with the
        // bottlenecks' outputs; the two halves side by side are cv1's output itself, so it
        // goes into the concat whole. Same values, and in training one slice (and its
        // zero-filled gradient and sum) fewer per block.
        self.tail(self.cv1.forward(x))
    }

    /// The block after `cv1`: bottlenecks on the second half of `y`, then `cv2` over `y` and
    /// every bottleneck's output.
    fn tail(&self, y: Tensor<4>) -> Tensor<4> {
        let half = y.dims()[1] / 2;
        let mut last = y.clone().narrow(1, half, half);
        let mut ys = Vec::with_capacity(1 + self.m.len());
        ys.push(y);
        for m in &self.m {
            last = m.forward(last);
            ys.push(last.clone());
        }
        self.cv2.forward_cat(ys)
    }

    /// [`forward`](Self::forward) of `xs` concatenated along channels (the neck's inputs),
    /// without building the concatenation where [`Conv::forward_cat`] can.
    ///
    /// # Shapes
    /// - `xs`: `[B, c_i, H, W]` with `Σ c_i = c1`
    /// - output: `[B, c2, H, W]`
    pub fn forward_cat(&self, xs: Vec<Tensor<4>>) -> Tensor<4> {
        self.tail(self.cv1.forward_cat(xs))
    }
}

/// Configuration of [`Sppf`]: `SPPF(c1, c2, k = 5)`.
#[derive(Config, Debug)]
pub struct SppfConfig {
    pub c1: usize,
    pub c2: usize,
    #[config(default = 5)]
    pub k: usize,
}

impl SppfConfig {
    pub fn init(&self, device: &Device) -> Sppf {
        let c_ = self.c1 / 2;
        let p = self.k / 2;
        Sppf {
            cv1: ConvConfig::new(self.c1, c_).init(device),
            cv2: ConvConfig::new(c_ * 4, self.c2).init(device),
            // Stride 1 (Burn defaults strides to the kernel size); the padding of Burn's
            // max-pool acts as -inf like PyTorch's, so borders are never raised to zero.
            m: MaxPool2dConfig::new([self.k, self.k])
                .with_strides([1, 1])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init(),
        }
    }
}

/// Spatial pyramid pooling, fast: three chained k x k max-pools, concatenated.
#[derive(Module, Debug)]
pub struct Sppf {
    pub cv1: Conv,
    pub cv2: Conv,
    pub m: MaxPool2d,
}

impl Sppf {
    /// Folds every BatchNorm into its conv (see [`Conv::fuse`]).
    pub fn fuse(self) -> Self {
        Self {
            cv1: self.cv1.fuse(),
            cv2: self.cv2.fuse(),
            ..self
        }
    }

    /// The k x k max-pool (stride 1, same size): separable and vectorised on the CPU backend
    /// (inference and training, [`max_pool`]), Burn's op elsewhere.
    fn pool(&self, x: Tensor<4>) -> Tensor<4> {
        let m = &self.m;
        let [k, kw] = m.kernel_size;
        let p = k / 2;
        let same = k == kw
            && m.stride == [1, 1]
            && m.dilation == [1, 1]
            && matches!(m.padding, PaddingConfig2d::Explicit(t, l, b, r) if [t, l, b, r] == [p; 4]);
        if !same {
            return m.forward(x);
        }
        max_pool::max_pool_same(x, k).unwrap_or_else(|x| m.forward(x))
    }

    /// # Shapes
    /// - `x`: `[B, c1, H, W]`
    /// - output: `[B, c2, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y0 = self.cv1.forward(x);
        let y1 = self.pool(y0.clone());
        let y2 = self.pool(y1.clone());
        let y3 = self.pool(y2.clone());
        self.cv2.forward_cat(vec![y0, y1, y2, y3])
    }
}

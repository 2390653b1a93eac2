//! CSPDarknet backbone of YOLOv8: `model.0` … `model.9`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::nn::{C2f, C2fConfig, Conv, ConvConfig, Sppf, SppfConfig};
use crate::scale::Multiples;

/// Backbone: stem, four stride-2 stages of `Conv` + `C2f` (with shortcuts), then SPPF.
#[derive(Module, Debug)]
pub struct Backbone {
    pub stem: Conv,
    pub down1: Conv,
    pub c2f1: C2f,
    pub down2: Conv,
    pub c2f2: C2f,
    pub down3: Conv,
    pub c2f3: C2f,
    pub down4: Conv,
    pub c2f4: C2f,
    pub sppf: Sppf,
}

/// Backbone features at strides 8, 16 and 32.
#[derive(Debug, Clone)]
pub struct Features {
    pub p3: Tensor<4>,
    pub p4: Tensor<4>,
    pub p5: Tensor<4>,
}

impl Backbone {
    /// Folds every BatchNorm into its conv (see [`Conv::fuse`](crate::nn::Conv::fuse)).
    pub fn fuse(self) -> Self {
        Self {
            stem: self.stem.fuse(),
            down1: self.down1.fuse(),
            c2f1: self.c2f1.fuse(),
            down2: self.down2.fuse(),
            c2f2: self.c2f2.fuse(),
            down3: self.down3.fuse(),
            c2f3: self.c2f3.fuse(),
            down4: self.down4.fuse(),
            c2f4: self.c2f4.fuse(),
            sppf: self.sppf.fuse(),
        }
    }

    /// Builds the backbone for `m`; returns it with the channels of P3, P4 and P5.
    pub fn new(m: &Multiples, device: &Device) -> (Self, [usize; 3]) {
        let ch = |c| m.channels(c);
        let n = |r| m.repeats(r);
        let c2f = |c1, c2, r| C2fConfig::new(c1, c2).with_n(n(r)).with_shortcut(true).init(device);
        let down = |c1, c2| ConvConfig::new(c1, c2).with_k(3).with_s(2).init(device);
        let backbone = Self {
            stem: down(3, ch(64)),
            down1: down(ch(64), ch(128)),
            c2f1: c2f(ch(128), ch(128), 3),
            down2: down(ch(128), ch(256)),
            c2f2: c2f(ch(256), ch(256), 6),
            down3: down(ch(256), ch(512)),
            c2f3: c2f(ch(512), ch(512), 6),
            down4: down(ch(512), ch(1024)),
            c2f4: c2f(ch(1024), ch(1024), 3),
            sppf: SppfConfig::new(ch(1024), ch(1024)).init(device),
        };
        (backbone, [ch(256), ch(512), ch(1024)])
    }

    /// # Shapes
    /// - `x`: `[B, 3, H, W]`, `H` and `W` multiples of 32
    /// - output: P3 `[B, c3, H/8, W/8]`, P4 `[B, c4, H/16, W/16]`, P5 `[B, c5, H/32, W/32]`
    pub fn forward(&self, x: Tensor<4>) -> Features {
        let x = self.c2f1.forward(self.down1.forward(self.stem.forward(x)));
        let p3 = self.c2f2.forward(self.down2.forward(x));
        let p4 = self.c2f3.forward(self.down3.forward(p3.clone()));
        let p5 = self
            .sppf
            .forward(self.c2f4.forward(self.down4.forward(p4.clone())));
        Features { p3, p4, p5 }
    }
}

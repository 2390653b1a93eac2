//! PANet neck of YOLOv8: `model.10` … `model.21` (top-down then bottom-up path).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::nn::backbone::Features;
use crate::nn::{C2f, C2fConfig, Conv, ConvConfig};
use crate::scale::Multiples;

/// Neck: upsample + concat + C2f twice (top-down), then stride-2 Conv + concat + C2f twice.
/// The C2f blocks here have no shortcut.
#[derive(Module, Debug)]
pub struct Neck {
    pub top_p4: C2f,
    pub top_p3: C2f,
    pub down_p3: Conv,
    pub out_p4: C2f,
    pub down_p4: Conv,
    pub out_p5: C2f,
}

/// Nearest-neighbour 2x upsampling (`nn.Upsample(None, 2, "nearest")`): every pixel becomes
/// a 2x2 block. Written as a broadcast so it is exact on every backend, whatever coordinate
/// convention a backend's `interpolate` uses.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`
/// - output: `[B, C, 2H, 2W]`
pub fn upsample2x(x: Tensor<4>) -> Tensor<4> {
    // One pass each way on the CPU backend (`ops::upsample`).
    let x = match crate::ops::upsample::upsample2x(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

impl Neck {
    /// Folds every BatchNorm into its conv (see [`Conv::fuse`](crate::nn::Conv::fuse)).
    pub fn fuse(self) -> Self {
        Self {
            top_p4: self.top_p4.fuse(),
            top_p3: self.top_p3.fuse(),
            down_p3: self.down_p3.fuse(),
            out_p4: self.out_p4.fuse(),
            down_p4: self.down_p4.fuse(),
            out_p5: self.out_p5.fuse(),
        }
    }

    /// Builds the neck for backbone channels `ch`; returns it with the channels of its outputs.
    pub fn new(m: &Multiples, ch: [usize; 3], device: &Device) -> (Self, [usize; 3]) {
        let c = |c| m.channels(c);
        let n = m.repeats(3);
        let c2f = |c1, c2| C2fConfig::new(c1, c2).with_n(n).init(device);
        let down = |c1, c2| ConvConfig::new(c1, c2).with_k(3).with_s(2).init(device);
        let [c3, c4, c5] = ch;
        let (t4, t3) = (c(512), c(256));
        let neck = Self {
            top_p4: c2f(c5 + c4, t4),
            top_p3: c2f(t4 + c3, t3),
            down_p3: down(t3, t3),
            out_p4: c2f(t3 + t4, c(512)),
            down_p4: down(c(512), c(512)),
            out_p5: c2f(c(512) + c5, c(1024)),
        };
        (neck, [t3, c(512), c(1024)])
    }

    /// # Shapes
    /// - `f`: backbone features at strides 8, 16, 32
    /// - output: three maps with the same spatial sizes as `f`, channels as `new` returned
    pub fn forward(&self, f: Features) -> Vec<Tensor<4>> {
        let (o3, t4, p5) = self.top_down(f);
        let [o4, o5] = self.bottom_up(o3.clone(), t4, p5);
        vec![o3, o4, o5]
    }

    /// The top-down path: the stride-8 output, with what [`bottom_up`](Self::bottom_up) goes
    /// on from (the stride-16 top-down map and the backbone's stride-32 map).
    ///
    /// # Shapes
    /// - output: `o3` `[B, t3, H/8, W/8]`, `t4` `[B, t4, H/16, W/16]`, `p5` as in `f`
    pub fn top_down(&self, f: Features) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let t4 = self.top_p4.forward_cat(vec![upsample2x(f.p5.clone()), f.p4]);
        let o3 = self.top_p3.forward_cat(vec![upsample2x(t4.clone()), f.p3]);
        (o3, t4, f.p5)
    }

    /// The bottom-up path from [`top_down`](Self::top_down)'s maps: the stride-16 and
    /// stride-32 outputs.
    pub fn bottom_up(&self, o3: Tensor<4>, t4: Tensor<4>, p5: Tensor<4>) -> [Tensor<4>; 2] {
        let o4 = self.out_p4.forward_cat(vec![self.down_p3.forward(o3), t4]);
        let o5 = self.out_p5.forward_cat(vec![self.down_p4.forward(o4.clone()), p5]);
        [o4, o5]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn upsample_repeats_each_pixel_as_a_2x2_block() {
        let device = crate::backend::cpu_device();
        let (b, c, h, w) = (2, 3, 4, 5);
        let x = Tensor::<4>::random([b, c, h, w], Distribution::Default, &device);
        let v: Vec<f32> = x.clone().into_data().try_to_vec().unwrap();
        let mut want = vec![0f32; b * c * 4 * h * w];
        for p in 0..b * c {
            for y in 0..2 * h {
                for xx in 0..2 * w {
                    want[(p * 2 * h + y) * 2 * w + xx] = v[(p * h + y / 2) * w + xx / 2];
                }
            }
        }
        let want = TensorData::new(want, [b, c, 2 * h, 2 * w]);
        // The CPU fast path, and Burn's broadcast on an autodiff tensor (which the fast path
        // refuses), give the same result.
        upsample2x(x.clone()).into_data().assert_eq(&want, true);
        let ad = Tensor::<4>::from_data(x.into_data(), &device.autodiff());
        upsample2x(ad).into_data().assert_eq(&want, true);
    }
}

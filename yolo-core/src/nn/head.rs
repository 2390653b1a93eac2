//! The anchor-free `Detect` head with DFL, and the pure `decode` of its raw output.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, FloatDType, Tensor, TensorData};

use super::conv::{Conv, ConvConfig};
use crate::cpu::conv::{self as cpu_conv, Activation};
use crate::cpu::flex;
use crate::ops::dfl::dfl_expectation;

/// Strides of the three detection levels (P3, P4, P5).
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// What the loss, `decode` and the exporter need to know about the head.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadMeta {
    /// Stride of each level, in input pixels.
    pub strides: Vec<usize>,
    /// DFL bins per box side.
    pub reg_max: usize,
    /// Number of classes.
    pub nc: usize,
}

impl HeadMeta {
    /// Channels of the raw output per anchor: `4 * reg_max + nc`.
    pub fn no(&self) -> usize {
        4 * self.reg_max + self.nc
    }
}

/// Raw output of one level.
#[derive(Debug, Clone)]
pub struct LevelOutput {
    /// Box distributions (DFL logits), `[B, 4 * reg_max, H, W]`.
    pub boxes: Tensor<4>,
    /// Class logits, `[B, nc, H, W]`.
    pub scores: Tensor<4>,
}

/// Raw output of the head: one entry per level, finest first.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    pub levels: Vec<LevelOutput>,
}

impl HeadOutput {
    /// Every tensor cast to `dtype` (Burn's `cast` leaves those already in it untouched).
    pub fn cast(self, dtype: FloatDType) -> Self {
        let levels = self
            .levels
            .into_iter()
            .map(|l| LevelOutput { boxes: l.boxes.cast(dtype), scores: l.scores.cast(dtype) })
            .collect();
        Self { levels }
    }

    /// Grid size `(h, w)` of each level.
    pub fn grid_sizes(&self) -> Vec<(usize, usize)> {
        self.levels
            .iter()
            .map(|l| {
                let [_, _, h, w] = l.scores.dims();
                (h, w)
            })
            .collect()
    }

    /// All levels flattened and concatenated along the anchor axis.
    ///
    /// # Shapes
    /// - returns `(boxes, scores)`: `[B, 4 * reg_max, A]` and `[B, nc, A]`,
    ///   anchors ordered level by level, row-major within a level.
    pub fn flatten(&self) -> (Tensor<3>, Tensor<3>) {
        let (boxes, scores): (Vec<_>, Vec<_>) = self
            .levels
            .iter()
            .map(|l| {
                let [b, cb, h, w] = l.boxes.dims();
                let [_, nc, _, _] = l.scores.dims();
                (
                    l.boxes.clone().reshape([b, cb, h * w]),
                    l.scores.clone().reshape([b, nc, h * w]),
                )
            })
            .unzip();
        (crate::ops::cat::cat(boxes, 2), crate::ops::cat::cat(scores, 2))
    }
}

/// Anchor points at cell centres and the stride of each anchor, as Ultralytics `make_anchors`
/// with offset 0.5, in grid units.
///
/// Returns `(points, strides)`: `points` holds `A` pairs `(x, y)` flattened, `strides` `A` values.
pub fn make_anchors(grid_sizes: &[(usize, usize)], strides: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let total: usize = grid_sizes.iter().map(|(h, w)| h * w).sum();
    let mut points = Vec::with_capacity(total * 2);
    let mut stride_of = Vec::with_capacity(total);
    for (&(h, w), &s) in grid_sizes.iter().zip(strides) {
        for y in 0..h {
            for x in 0..w {
                points.push(x as f32 + 0.5);
                points.push(y as f32 + 0.5);
                stride_of.push(s as f32);
            }
        }
    }
    (points, stride_of)
}

/// Turns the raw head output into Ultralytics' eval-mode prediction.
///
/// # Shapes
/// - output: `[B, 4 + nc, A]`: `cx, cy, w, h` in input pixels, then sigmoid class scores.
pub fn decode(out: &HeadOutput, meta: &HeadMeta) -> Tensor<3> {
    if let Some(pred) = decode_cpu(out, meta) {
        return pred;
    }
    let (boxes, scores) = out.flatten();
    let [_, _, a] = boxes.dims();
    let device = boxes.device();
    let dist = dfl_expectation(boxes, meta.reg_max);
    let (points, strides) = make_anchors(&out.grid_sizes(), &meta.strides);
    let anchors = Tensor::<3>::from_data(TensorData::new(points, [1, a, 2]), &device)
        .swap_dims(1, 2);
    let strides = Tensor::<3>::from_data(TensorData::new(strides, [1, 1, a]), &device);
    let lt = dist.clone().narrow(1, 0, 2);
    let rb = dist.narrow(1, 2, 2);
    let x1y1 = anchors.clone() - lt;
    let x2y2 = anchors + rb;
    let cxy = (x1y1.clone() + x2y2.clone()) / 2.0;
    let wh = x2y2 - x1y1;
    let xywh = Tensor::cat(vec![cxy, wh], 1) * strides;
    Tensor::cat(vec![xywh, sigmoid(scores)], 1)
}

/// [`decode`] in one pass over the head's buffers, for plain f32 tensors on the CPU backend
/// (`None` elsewhere): Burn's version is a dozen tensor ops with scalar `exp` (9% of yolov8n's
/// inference at 640). Same arithmetic in the same order, with the vectorised exp of
/// [`crate::cpu::simd`].
fn decode_cpu(out: &HeadOutput, meta: &HeadMeta) -> Option<Tensor<3>> {
    use crate::cpu::simd::{exp_slice, sigmoid_slice};
    use rayon::prelude::*;

    let first = out.levels.first()?;
    if !cpu_conv::supported_device(&first.boxes.device()) {
        return None;
    }
    let r = meta.reg_max;
    let [b, _, _, _] = first.boxes.dims();
    let mut levels = Vec::with_capacity(out.levels.len());
    for l in &out.levels {
        let [lb, cb, h, w] = l.boxes.dims();
        let [_, nc, _, _] = l.scores.dims();
        if lb != b || cb != 4 * r || nc != meta.nc {
            return None;
        }
        let boxes = flex::flex_f32(l.boxes.clone())?;
        let scores = flex::flex_f32(l.scores.clone())?;
        levels.push((boxes, scores, h * w));
    }
    let a: usize = levels.iter().map(|l| l.2).sum();
    let (points, strides) = make_anchors(&out.grid_sizes(), &meta.strides);
    let rows = 4 + meta.nc;

    // DFL expectation of every side: dist[(img * 4 + side) * a + anchor].
    let mut dist = vec![0f32; b * 4 * a];
    let mut tasks = Vec::new(); // (img, side, level, anchor offset)
    for img in 0..b {
        for side in 0..4 {
            let mut a0 = 0;
            for (li, l) in levels.iter().enumerate() {
                tasks.push((img, side, li, a0));
                a0 += l.2;
            }
        }
    }
    let dist_ptr = flex::OutPtr(dist.as_mut_ptr());
    tasks.par_iter().for_each(|&(img, side, li, a0)| {
        let dist_ptr = dist_ptr;
        let (boxes, _, hw) = &levels[li];
        let hw = *hw;
        let x = boxes.as_slice::<f32>().expect("contiguous f32");
        let bin = |j: usize| &x[((img * 4 + side) * r + j) * hw..][..hw];
        // SAFETY: each task writes its own (img, side, level) range of `dist`.
        let d = unsafe { std::slice::from_raw_parts_mut(dist_ptr.0.add((img * 4 + side) * a + a0), hw) };
        // Softmax over the bins with the max subtracted (as torch), then Σ j·p_j.
        let mut max = bin(0).to_vec();
        for j in 1..r {
            max.iter_mut().zip(bin(j)).for_each(|(m, v)| *m = m.max(*v));
        }
        // e[j] = exp(x_j - max), then Σ_j j · (e[j] / Σ e): the probabilities first, as the
        // reference's softmax followed by the 1x1 conv with weights 0..reg_max.
        let mut e = vec![0f32; r * hw];
        for (j, ej) in e.chunks_exact_mut(hw).enumerate() {
            ej.iter_mut().zip(bin(j)).zip(&max).for_each(|((e, v), m)| *e = v - m);
            exp_slice(ej);
        }
        let mut den = vec![0f32; hw];
        for ej in e.chunks_exact(hw) {
            den.iter_mut().zip(ej).for_each(|(s, e)| *s += e);
        }
        d.fill(0.0);
        for (j, ej) in e.chunks_exact(hw).enumerate() {
            let jf = j as f32;
            d.iter_mut().zip(ej.iter().zip(&den)).for_each(|(d, (e, s))| *d += jf * (e / s));
        }
    });

    let mut pred = vec![0f32; b * rows * a];
    pred.par_chunks_mut(a).enumerate().for_each(|(row, dst)| {
        let (img, c) = (row / rows, row % rows);
        if c >= 4 {
            let mut a0 = 0;
            for (_, scores, hw) in &levels {
                let s = scores.as_slice::<f32>().expect("contiguous f32");
                dst[a0..a0 + hw].copy_from_slice(&s[(img * meta.nc + c - 4) * hw..][..*hw]);
                a0 += hw;
            }
            sigmoid_slice(dst);
            return;
        }
        // As `dist2bbox` (xywh) then `* strides`: x1y1 = anchor - lt, x2y2 = anchor + rb.
        let axis = c % 2; // x for cx and w, y for cy and h
        let lt = &dist[(img * 4 + axis) * a..][..a];
        let rb = &dist[(img * 4 + 2 + axis) * a..][..a];
        for (i, v) in dst.iter_mut().enumerate() {
            let p = points[2 * i + axis];
            let (lo, hi) = (p - lt[i], p + rb[i]);
            *v = if c < 2 { (lo + hi) / 2.0 } else { hi - lo } * strides[i];
        }
    });
    Some(flex::flex_tensor(pred, [b, rows, a]))
}

/// One layer of a branch (`nn.Sequential(Conv, Conv, Conv2d)` in Ultralytics). An enum so the
/// stored keys stay `cv2.{i}.{0,1}.conv.*` and `cv2.{i}.2.{weight,bias}`.
#[derive(Module, Debug)]
pub enum BranchLayer {
    Conv(Conv),
    Out(Conv2d),
}

impl BranchLayer {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Conv(m) => m.forward(x),
            Self::Out(m) => cpu_conv::conv2d(x, m, Activation::Identity)
                .or_else(|x| crate::ops::conv::conv2d(x, m))
                .unwrap_or_else(|x| crate::ops::conv::conv2d_any(x, m)),
        }
    }
}

fn branch(c_in: usize, c_hidden: usize, c_out: usize, bias: f32, device: &Device) -> Vec<BranchLayer> {
    let mut out = Conv2dConfig::new([c_hidden, c_out], [1, 1]).init(device);
    out.bias = Some(Param::from_tensor(Tensor::full([c_out], bias, device)));
    vec![
        BranchLayer::Conv(ConvConfig::new(c_in, c_hidden).with_k(3).init(device)),
        BranchLayer::Conv(ConvConfig::new(c_hidden, c_hidden).with_k(3).init(device)),
        BranchLayer::Out(out),
    ]
}

/// The fixed DFL projection, kept as a module so checkpoints hold `dfl.conv.weight`
/// (`arange(reg_max)`, never trained) exactly like Ultralytics'.
#[derive(Module, Debug)]
pub struct Dfl {
    pub conv: Conv2d,
}

impl Dfl {
    fn new(reg_max: usize, device: &Device) -> Self {
        let mut conv = Conv2dConfig::new([reg_max, 1], [1, 1])
            .with_bias(false)
            .init(device);
        let w: Vec<f32> = (0..reg_max).map(|i| i as f32).collect();
        conv.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(w, [1, reg_max, 1, 1]),
            device,
        ))
        .set_require_grad(false);
        Self { conv }
    }
}

/// Configuration of [`Detect`]: `Detect(nc, ch)` of Ultralytics with `reg_max = 16`.
#[derive(Config, Debug)]
pub struct DetectConfig {
    pub nc: usize,
    /// Input channels of each level.
    pub ch: Vec<usize>,
    #[config(default = 16)]
    pub reg_max: usize,
}

impl DetectConfig {
    /// Builds the head with Ultralytics' bias initialisation: box bias 1.0, class bias
    /// `log(5 / nc / (640 / s)^2)`.
    pub fn init(&self, device: &Device) -> Detect {
        let c2 = 16.max(self.ch[0] / 4).max(self.reg_max * 4);
        let c3 = self.ch[0].max(self.nc.min(100));
        let cv2 = self
            .ch
            .iter()
            .map(|&c| branch(c, c2, 4 * self.reg_max, 1.0, device))
            .collect();
        let cv3 = self
            .ch
            .iter()
            .zip(STRIDES)
            .map(|(&c, s)| {
                let b = (5.0 / self.nc as f64 / (640.0 / s as f64).powi(2)).ln() as f32;
                branch(c, c3, self.nc, b, device)
            })
            .collect();
        Detect {
            cv2,
            cv3,
            dfl: Dfl::new(self.reg_max, device),
            nc: self.nc,
            reg_max: self.reg_max,
        }
    }
}

/// Decoupled detection head: a box branch (`cv2`) and a class branch (`cv3`) per level.
#[derive(Module, Debug)]
pub struct Detect {
    pub cv2: Vec<Vec<BranchLayer>>,
    pub cv3: Vec<Vec<BranchLayer>>,
    pub dfl: Dfl,
    pub nc: usize,
    pub reg_max: usize,
}

impl Detect {
    /// What `decode` and the loss need to know.
    pub fn meta(&self) -> HeadMeta {
        HeadMeta {
            strides: STRIDES[..self.cv2.len()].to_vec(),
            reg_max: self.reg_max,
            nc: self.nc,
        }
    }

    /// # Shapes
    /// - `xs`: one `[B, ch[i], H_i, W_i]` per level
    /// - output: per level, boxes `[B, 4 * reg_max, H_i, W_i]` and scores `[B, nc, H_i, W_i]`
    pub fn forward(&self, xs: Vec<Tensor<4>>) -> HeadOutput {
        if concurrent(&xs) {
            use rayon::prelude::*;
            let levels = xs.into_par_iter().enumerate().map(|(i, x)| self.level(i, x)).collect();
            return HeadOutput { levels };
        }
        HeadOutput { levels: xs.into_iter().enumerate().map(|(i, x)| self.level(i, x)).collect() }
    }

    /// Level `i`'s two branches on its input: box distributions and class logits, side by
    /// side where [`concurrent`] says so.
    ///
    /// # Shapes
    /// - `x`: `[B, ch[i], H, W]`; output boxes `[B, 4 * reg_max, H, W]`, scores `[B, nc, H, W]`
    pub fn level(&self, i: usize, x: Tensor<4>) -> LevelOutput {
        let run = |seq: &[BranchLayer], x: Tensor<4>| seq.iter().fold(x, |x, l| l.forward(x));
        let (b, c) = (&self.cv2[i], &self.cv3[i]);
        if concurrent(std::slice::from_ref(&x)) {
            let x2 = x.clone();
            let (boxes, scores) = rayon::join(|| run(b, x2), || run(c, x));
            return LevelOutput { boxes, scores };
        }
        LevelOutput { boxes: run(b, x.clone()), scores: run(c, x) }
    }
}

/// Whether independent parts of an inference pass (the head's branches and levels, the
/// neck's bottom-up path beside the stride-8 head) run side by side: with several threads,
/// on plain `flex` tensors. Each conv's own tasks then fill the threads that one small
/// map's conv alone leaves idle (yolov8n, two threads: 0.93-0.95x the time at 320 and 640).
/// Not under autodiff, whose graph would be recorded in a varying order; the outputs are
/// the same either way (every conv writes its output alone).
pub(crate) fn concurrent(xs: &[Tensor<4>]) -> bool {
    rayon::current_num_threads() > 1 && xs.iter().all(flex::is_plain_flex)
}

impl Detect {
    /// Folds every BatchNorm of the branches into its conv (see [`Conv::fuse`]).
    pub fn fuse(self) -> Self {
        let fuse_branch = |b: Vec<BranchLayer>| {
            b.into_iter()
                .map(|l| match l {
                    BranchLayer::Conv(c) => BranchLayer::Conv(c.fuse()),
                    out => out,
                })
                .collect()
        };
        Self {
            cv2: self.cv2.into_iter().map(fuse_branch).collect(),
            cv3: self.cv3.into_iter().map(fuse_branch).collect(),
            ..self
        }
    }

    /// Keeps the DFL projection out of training, as Ultralytics' `requires_grad_(False)`.
    pub fn freeze_dfl(&mut self) {
        let w = self.dfl.conv.weight.clone();
        self.dfl.conv.weight = w.set_require_grad(false);
    }
}

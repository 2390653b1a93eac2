//! The YOLOv8 detection loss, as Ultralytics 8.4.190 `utils/loss.py v8DetectionLoss` (with
//! `BboxLoss` and `DFLoss`): task-aligned assignment, BCE class loss, CIoU box loss and DFL.
//!
//! As Ultralytics, the box and DFL terms are computed on the foreground anchors only
//! (`pred[fg_mask]`, here a `select` with the foreground indices read back from the
//! assignment), a few hundred rows instead of every anchor of the batch.

use yolo_core::burn::tensor::activation::log_softmax;
use yolo_core::burn::tensor::{Bool, Int, Tensor, TensorData};
use yolo_core::nn::head::make_anchors;
use yolo_core::ops::act::sigmoid;
use yolo_core::ops::bce::bce_with_logits_sum;
use yolo_core::ops::dfl::dfl_expectation;
use yolo_core::{HeadMeta, HeadOutput};

use crate::assigner::{Assignment, TaskAlignedAssigner};
use crate::iou::bbox_ciou;

/// Loss gains and assigner setting (Ultralytics `hyp.box`, `hyp.cls`, `hyp.dfl`, `tal_topk`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    pub box_gain: f32,
    pub cls_gain: f32,
    pub dfl_gain: f32,
    /// DFL bins per side; must equal the head's `reg_max`.
    pub reg_max: usize,
    pub tal_topk: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            box_gain: 7.5,
            cls_gain: 0.5,
            dfl_gain: 1.5,
            reg_max: 16,
            tal_topk: 10,
        }
    }
}

/// One ground-truth box, as a row of Ultralytics' `batch["batch_idx"], batch["cls"],
/// batch["bboxes"]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Image of the batch this box belongs to.
    pub batch_idx: usize,
    /// Class index.
    pub cls: usize,
    /// Centre x, centre y, width, height, normalised to the image size (0..1).
    pub xywh: [f32; 4],
}

/// The ground truth of a batch: every box of every image, in any order (boxes of one image keep
/// their relative order, which fixes their GT index).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Targets {
    pub boxes: Vec<Target>,
}

/// Ground truth padded to the largest per-image count, as `v8DetectionLoss.preprocess`.
#[derive(Debug, Clone)]
pub struct PaddedTargets {
    /// `[B, M, 1]`.
    pub labels: Tensor<3, Int>,
    /// xyxy pixels, `[B, M, 4]`; padding rows are zero.
    pub bboxes: Tensor<3>,
    /// Real rows (box coordinates summing to more than 0, Ultralytics' test), `[B, M, 1]`.
    pub mask: Tensor<3, Bool>,
}

impl Targets {
    /// Pads the targets into per-image rows and scales the normalised xywh by the image size
    /// (`width`, `height` in pixels), then converts to xyxy, in Ultralytics' order of f32
    /// operations.
    ///
    /// # Shapes
    /// - output: `[B, M, 1]`, `[B, M, 4]`, `[B, M, 1]` with `M` the largest count per image
    ///   (0 when there is no box)
    ///
    /// # Panics
    /// If a box's `batch_idx` is not below `batch_size` (the batch was built wrongly).
    pub fn preprocess(
        &self,
        batch_size: usize,
        width: f32,
        height: f32,
        device: &yolo_core::burn::tensor::Device,
    ) -> PaddedTargets {
        let mut per_image: Vec<Vec<&Target>> = vec![Vec::new(); batch_size];
        for t in &self.boxes {
            assert!(
                t.batch_idx < batch_size,
                "target batch_idx {} >= batch size {batch_size}",
                t.batch_idx
            );
            per_image[t.batch_idx].push(t);
        }
        let m = per_image.iter().map(Vec::len).max().unwrap_or(0);
        let mut labels = vec![0i64; batch_size * m];
        let mut bboxes = vec![0f32; batch_size * m * 4];
        let mut mask = vec![false; batch_size * m];
        for (i, rows) in per_image.iter().enumerate() {
            for (j, t) in rows.iter().enumerate() {
                let r = i * m + j;
                let [x, y, w, h] = t.xywh;
                let (cx, cy, w, h) = (x * width, y * height, w * width, h * height);
                let (hw, hh) = (w / 2.0, h / 2.0);
                let b = [cx - hw, cy - hh, cx + hw, cy + hh];
                labels[r] = t.cls as i64;
                bboxes[r * 4..r * 4 + 4].copy_from_slice(&b);
                mask[r] = b[0] + b[1] + b[2] + b[3] > 0.0;
            }
        }
        PaddedTargets {
            labels: Tensor::from_data(TensorData::new(labels, [batch_size, m, 1]), device),
            bboxes: Tensor::from_data(TensorData::new(bboxes, [batch_size, m, 4]), device),
            mask: Tensor::from_data(TensorData::new(mask, [batch_size, m, 1]), device),
        }
    }
}

/// The loss of a batch.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// What backward uses: `(box + cls + dfl) * B` with gains applied, `[1]` (Ultralytics
    /// returns the vector times the batch size and the trainer sums it).
    pub total: Tensor<1>,
    /// `[box, cls, dfl]` with gains applied, before the batch scaling, detached, `[3]`: the
    /// values Ultralytics logs (`train/box_loss`, ...).
    pub components: Tensor<1>,
    /// The assignment the loss used (detached).
    pub assignment: Assignment,
}

/// Decodes DFL distributions into xyxy boxes around the anchors, as `bbox_decode`.
///
/// # Shapes
/// - `pred_distri`: `[B, 4 * reg_max, A]` raw logits
/// - `anchor_points`: `[A, 2]` grid units
/// - output: `[B, A, 4]` xyxy, grid units
pub fn bbox_decode(pred_distri: Tensor<3>, anchor_points: Tensor<2>, reg_max: usize) -> Tensor<3> {
    let [_, _, a] = pred_distri.dims();
    let dist = dfl_expectation(pred_distri, reg_max).swap_dims(1, 2); // [B, A, 4]
    let anchors = anchor_points.reshape([1, a, 2]);
    let x1y1 = anchors.clone() - dist.clone().narrow(2, 0, 2);
    let x2y2 = anchors + dist.narrow(2, 2, 2);
    Tensor::cat(vec![x1y1, x2y2], 2)
}

/// Distances from the anchors to the box sides, clamped to `[0, max_dist]`, as `bbox2dist`.
///
/// # Shapes
/// - `anchor_points`: `[A, 2]`, `bbox`: `[B, A, 4]` xyxy, same units
/// - output: `[B, A, 4]` (left, top, right, bottom)
pub fn bbox2dist(anchor_points: Tensor<2>, bbox: Tensor<3>, max_dist: f32) -> Tensor<3> {
    let [_, a, _] = bbox.dims();
    let anchors = anchor_points.reshape([1, a, 2]);
    let lt = anchors.clone() - bbox.clone().narrow(2, 0, 2);
    let rb = bbox.narrow(2, 2, 2) - anchors;
    Tensor::cat(vec![lt, rb], 2).clamp(0.0, max_dist)
}

/// Distribution focal loss per anchor, as `DFLoss`: cross-entropy of the two bins around the
/// target distance (clamped to `reg_max - 1 - 0.01`), weighted by the distance to each, mean
/// over the four sides.
///
/// # Shapes
/// - `pred_dist`: `[B, A, 4, reg_max]` logits
/// - `target`: `[B, A, 4]` distances in grid units
/// - output: `[B, A, 1]`
pub fn df_loss(pred_dist: Tensor<4>, target: Tensor<3>) -> Tensor<3> {
    let [b, a, _, reg_max] = pred_dist.dims();
    let target = target.clamp(0.0, reg_max as f32 - 1.0 - 0.01); // [B, A, 4]
    let tl = target.clone().floor().int(); // [B, A, 4]
    let tr = tl.clone() + 1;
    let wl = tr.clone().float() - target; // [B, A, 4]
    let wr = wl.clone().neg() + 1.0;
    let logp = log_softmax(pred_dist, 3); // [B, A, 4, reg_max]
    let lp_l = logp
        .clone()
        .gather(3, tl.reshape([b, a, 4, 1]))
        .reshape([b, a, 4]);
    let lp_r = logp.gather(3, tr.reshape([b, a, 4, 1])).reshape([b, a, 4]);
    (lp_l * wl + lp_r * wr).neg().mean_dim(2) // [B, A, 1]
}

/// The YOLOv8 detection loss of one batch, as 8.4.190 `v8DetectionLoss.loss`.
///
/// The image size is level 0's grid size times `strides[0]`, as Ultralytics computes `imgsz`.
/// Works on any device; on an autodiff device `total.backward()` gives the gradients of the
/// head outputs.
///
/// # Shapes
/// - `out`: per level boxes `[B, 4 * reg_max, H_i, W_i]`, scores `[B, nc, H_i, W_i]`
/// - output: `total` `[1]`, `components` `[3]`, assignment over `A = sum H_i * W_i` anchors
pub fn v8_detection_loss(
    out: &HeadOutput,
    meta: &HeadMeta,
    targets: &Targets,
    cfg: &LossConfig,
) -> LossOutput {
    assert_eq!(
        cfg.reg_max, meta.reg_max,
        "LossConfig.reg_max differs from the head's"
    );
    let (pred_distri, pred_scores) = out.flatten(); // [B, 4R, A], [B, nc, A]
    let [b, _, a] = pred_distri.dims();
    let nc = meta.nc;
    let reg_max = meta.reg_max;
    let device = pred_distri.device();
    // The class logits stay in the head's [B, nc, A] layout: the assigner gets a [B, A, nc]
    // view of their sigmoid, and the class loss pairs them with a [B, nc, A] view of the
    // target scores (which the assigner lays out that way), so neither is copied.

    let grids = out.grid_sizes();
    let (points, strides) = make_anchors(&grids, &meta.strides);
    let anchor_points = Tensor::<2>::from_data(TensorData::new(points, [a, 2]), &device); // [A, 2]
    let stride_tensor = Tensor::<2>::from_data(TensorData::new(strides, [a, 1]), &device); // [A, 1]
    let (h0, w0) = grids[0];
    let s0 = meta.strides[0] as f32;
    let gt = targets.preprocess(b, w0 as f32 * s0, h0 as f32 * s0, &device);

    let pred_bboxes = bbox_decode(pred_distri.clone(), anchor_points.clone(), reg_max); // [B, A, 4] grid units

    let assigner = TaskAlignedAssigner::new(nc, &meta.strides).with_topk(cfg.tal_topk);
    let asg = assigner.assign(
        sigmoid(pred_scores.clone().detach()).swap_dims(1, 2),
        pred_bboxes.clone().detach() * stride_tensor.clone().reshape([1, a, 1]),
        anchor_points.clone() * stride_tensor.clone(),
        gt.labels,
        gt.bboxes,
        gt.mask,
    );
    let target_scores = asg.target_scores.clone().swap_dims(1, 2); // [B, nc, A]
    let target_scores_sum = target_scores.clone().sum().clamp_min(1.0); // [1]

    // Class loss: BCE with logits, `(1 - y) x - log_sigmoid(x)` as PyTorch computes it.
    let loss_cls = bce_with_logits_sum(pred_scores, target_scores.clone()) / target_scores_sum.clone();

    // Box and DFL losses over the foreground anchors.
    let fg: Vec<i64> = asg
        .fg_mask
        .clone()
        .into_data()
        .iter::<bool>()
        .enumerate()
        .filter_map(|(i, on)| on.then_some(i as i64))
        .collect();
    let (loss_box, loss_dfl) = if fg.is_empty() {
        // No foreground: both terms are 0, and the box logits still get their (zero) gradient.
        let zero = pred_distri.sum() * 0.0;
        (zero.clone(), zero)
    } else {
        let n = fg.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(fg.clone(), [n]), &device); // [N] over B * A
        let anchor_idx: Vec<i64> = fg.iter().map(|i| i % a as i64).collect();
        let anchor_idx = Tensor::<1, Int>::from_data(TensorData::new(anchor_idx, [n]), &device); // [N] over A
        let rows = |t: Tensor<3>, w: usize| t.reshape([b * a, w]).select(0, idx.clone()); // [N, w]
        // Weight of each foreground anchor: the sum of its target scores.
        let weight = rows(target_scores.sum_dim(1), 1).reshape([1, n, 1]); // [1, N, 1]
        let strides_fg = stride_tensor.select(0, anchor_idx.clone()).reshape([1, n, 1]); // [1, N, 1]
        let target_bboxes = rows(asg.target_bboxes.clone(), 4).reshape([1, n, 4]) / strides_fg; // grid units
        let pred_bboxes = rows(pred_bboxes, 4).reshape([1, n, 4]);
        let iou = bbox_ciou(pred_bboxes, target_bboxes.clone()); // [1, N, 1]
        let loss_box = ((iou.neg() + 1.0) * weight.clone()).sum() / target_scores_sum.clone();
        let anchors_fg = anchor_points.select(0, anchor_idx); // [N, 2]
        let target_ltrb = bbox2dist(anchors_fg, target_bboxes, reg_max as f32 - 1.0 - 0.01); // [1, N, 4]
        let pred_dist = rows(pred_distri.swap_dims(1, 2), 4 * reg_max).reshape([1, n, 4, reg_max]); // [1, N, 4, R]
        let loss_dfl = (df_loss(pred_dist, target_ltrb) * weight).sum() / target_scores_sum;
        (loss_box, loss_dfl)
    };

    let loss = Tensor::cat(
        vec![
            loss_box * cfg.box_gain,
            loss_cls * cfg.cls_gain,
            loss_dfl * cfg.dfl_gain,
        ],
        0,
    ); // [3]
    let components = loss.clone().detach();
    let total = (loss * b as f32).sum();
    LossOutput {
        total,
        components,
        assignment: asg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yolo_core::backend::cpu_device;

    #[test]
    fn preprocess_pads_and_scales() {
        let d = cpu_device();
        let t = Targets {
            boxes: vec![
                Target {
                    batch_idx: 1,
                    cls: 2,
                    xywh: [0.5, 0.5, 0.25, 0.5],
                },
                Target {
                    batch_idx: 1,
                    cls: 0,
                    xywh: [0.25, 0.25, 0.5, 0.5],
                },
            ],
        };
        let p = t.preprocess(3, 64.0, 32.0, &d);
        assert_eq!(p.bboxes.dims(), [3, 2, 4]);
        let bb = p.bboxes.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(&bb[8..16], &[24.0, 8.0, 40.0, 24.0, 0.0, 0.0, 32.0, 16.0]);
        assert!(bb[..8].iter().all(|&v| v == 0.0));
        let mask = p.mask.into_data().try_to_vec::<bool>().unwrap();
        assert_eq!(mask, vec![false, false, true, true, false, false]);
        let labels = p.labels.float().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(labels, vec![0.0, 0.0, 2.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn dfl_of_exact_bin_is_cross_entropy() {
        let d = cpu_device();
        // Uniform logits over 16 bins: loss = ln 16 whatever the target.
        let pred = Tensor::<4>::zeros([1, 1, 4, 16], &d);
        let target = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 3.5, 7.25, 20.0], [1, 1, 4]),
            &d,
        );
        let v = df_loss(pred, target)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0];
        assert!((v - 16f32.ln()).abs() < 1e-5, "{v}");
    }
}

//! The task-aligned assigner of YOLOv8, as Ultralytics 8.4.190 `utils/tal.py
//! TaskAlignedAssigner` (with `topk2 == topk`).
//!
//! Ultralytics gathers the candidate (image, GT, anchor) triples with `nonzero` and computes the
//! metric on those only; here it is computed densely over `[B, M, A]` and zeroed outside the
//! candidates, which gives the same values without a host round trip. The assigner sees no
//! gradient: every input is detached first (Ultralytics runs it under `no_grad`).
//!
//! Ties: `torch.topk` orders equal metrics in an unspecified way. Results can only differ from
//! Ultralytics' when a GT's top-k reaches zero-metric anchors that lie inside that GT (every
//! candidate of a GT has CIoU <= 0 or it has fewer positive candidates than `topk`); such anchors
//! become foreground with a zero target score, so the loss value is unaffected either way.
//! `max` along the GT axis takes the first maximum, as PyTorch documents.

use yolo_core::burn::tensor::{Bool, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::iou::bbox_ciou;
use yolo_core::cpu::flex::is_flex;

/// Hyper-parameters of the assigner; `Default` is what `v8DetectionLoss` builds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskAlignedAssigner {
    /// Candidates kept per GT (`tal_topk`, 10 in `v8DetectionLoss`).
    pub topk: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Exponent of the class score in the alignment metric.
    pub alpha: f32,
    /// Exponent of the IoU in the alignment metric.
    pub beta: f32,
    /// GT sides smaller than this (pixels) are enlarged to it about the box centre when
    /// selecting candidate anchors: 8.4.190 uses `stride[1]` (16 for strides 8, 16, 32).
    pub stride_val: f32,
    /// Guards the normalisation `pos_overlaps / (pos_align + eps)` and the inside-box test.
    pub eps: f32,
}

impl TaskAlignedAssigner {
    /// The assigner `v8DetectionLoss` builds: topk 10, alpha 0.5, beta 6, eps 1e-9, and
    /// `stride_val = strides[1]` (or `strides[0]` with a single level).
    ///
    /// # Panics
    /// If `strides` is empty.
    pub fn new(num_classes: usize, strides: &[usize]) -> Self {
        let stride_val = *strides
            .get(1)
            .or(strides.first())
            .expect("TaskAlignedAssigner::new needs at least one stride")
            as f32;
        Self {
            topk: 10,
            num_classes,
            alpha: 0.5,
            beta: 6.0,
            stride_val,
            eps: 1e-9,
        }
    }

    /// Sets `topk`.
    pub fn with_topk(mut self, topk: usize) -> Self {
        self.topk = topk;
        self
    }
}

/// What the assigner gives every anchor.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// Class of the assigned GT (`num_classes` everywhere when the batch has no GT), `[B, A]`.
    pub target_labels: Tensor<2, Int>,
    /// Box of the assigned GT, xyxy pixels, `[B, A, 4]` (also filled for background anchors,
    /// from GT `target_gt_idx`; only foreground rows are meaningful).
    pub target_bboxes: Tensor<3>,
    /// One-hot class times the normalised alignment metric, zero on background, `[B, A, nc]`.
    pub target_scores: Tensor<3>,
    /// Foreground anchors, `[B, A]`.
    pub fg_mask: Tensor<2, Bool>,
    /// Index of the assigned GT within its image (0 on background), `[B, A]`.
    pub target_gt_idx: Tensor<2, Int>,
}

/// Index of the first maximum along `dim` (PyTorch's documented `max(dim)` tie rule).
///
/// # Shapes
/// - `t`: `[B, M, A]`, `dim` 1
/// - output: `[B, 1, A]`
fn argmax_first(t: Tensor<3>, dim: usize) -> Tensor<3, Int> {
    let dims = t.dims();
    let n = dims[dim];
    let device = t.device();
    let max = t.clone().max_dim(dim); // [B, 1, A]
    let is_max = t.equal(max.expand(dims)); // [B, M, A]
    let mut shape = [1usize; 3];
    shape[dim] = n;
    let idx = Tensor::<1, Int>::arange(0..n as i64, &device)
        .reshape(shape)
        .expand(dims); // [B, M, A]
    idx.mask_fill(is_max.bool_not(), n as i64).min_dim(dim)
}

impl TaskAlignedAssigner {
    /// Assigns GTs to anchors.
    ///
    /// # Shapes
    /// - `pd_scores`: `[B, A, nc]` class probabilities (sigmoid of the logits)
    /// - `pd_bboxes`: `[B, A, 4]` predicted xyxy boxes, pixels
    /// - `anc_points`: `[A, 2]` anchor centres, pixels
    /// - `gt_labels`: `[B, M, 1]` classes (padding rows: anything in `0..nc`)
    /// - `gt_bboxes`: `[B, M, 4]` xyxy pixels
    /// - `mask_gt`: `[B, M, 1]` true for real GT rows
    /// - output: see [`Assignment`]
    pub fn assign(
        &self,
        pd_scores: Tensor<3>,
        pd_bboxes: Tensor<3>,
        anc_points: Tensor<2>,
        gt_labels: Tensor<3, Int>,
        gt_bboxes: Tensor<3>,
        mask_gt: Tensor<3, Bool>,
    ) -> Assignment {
        let [b, a, nc] = pd_scores.dims();
        let [_, m, _] = gt_bboxes.dims();
        assert_eq!(
            nc, self.num_classes,
            "pd_scores has {nc} classes, assigner {}",
            self.num_classes
        );
        let device = pd_scores.device();
        if m == 0 {
            return Assignment {
                target_labels: Tensor::full([b, a], self.num_classes as i64, &device),
                target_bboxes: Tensor::zeros([b, a, 4], &device),
                target_scores: Tensor::zeros([b, a, nc], &device),
                fg_mask: Tensor::<2>::zeros([b, a], &device).greater_elem(0.0),
                target_gt_idx: Tensor::zeros([b, a], &device),
            };
        }
        let pd_scores = pd_scores.detach();
        let pd_bboxes = pd_bboxes.detach();
        let anc_points = anc_points.detach();
        let gt_bboxes = gt_bboxes.detach();

        // get_pos_mask
        let mask_gt_a = mask_gt.clone().expand([b, m, a]); // [B, M, A]
        let in_gts = self.select_candidates_in_gts(anc_points, gt_bboxes.clone(), mask_gt.clone()); // [B, M, A]
        let cand = in_gts.clone().bool_and(mask_gt_a.clone()); // [B, M, A]
        let (align_metric, overlaps) = self.box_metrics(
            pd_scores,
            pd_bboxes,
            gt_labels.clone(),
            gt_bboxes.clone(),
            cand,
        ); // [B, M, A] x2
        let mask_topk = self.select_topk_candidates(align_metric.clone()); // [B, M, A]
        let mask_pos = mask_topk * in_gts.float() * mask_gt_a.float(); // [B, M, A]

        // select_highest_overlaps
        let fg = mask_pos.clone().sum_dim(1); // [B, 1, A]
        let multi = fg.greater_elem(1.0).expand([b, m, a]); // [B, M, A]
        let max_idx = argmax_first(overlaps.clone(), 1); // [B, 1, A]
        let gt_ids = Tensor::<1, Int>::arange(0..m as i64, &device)
            .reshape([1, m, 1])
            .expand([b, m, a]);
        let is_max = gt_ids.equal(max_idx.expand([b, m, a])).float(); // [B, M, A]
        let mask_pos = is_max.mask_where(multi.bool_not(), mask_pos); // [B, M, A]
        let fg_mask = mask_pos
            .clone()
            .max_dim(1)
            .reshape([b, a])
            .greater_elem(0.0); // [B, A]
        let target_gt_idx = argmax_first(mask_pos.clone(), 1).reshape([b, a]); // [B, A]

        // get_targets
        let target_labels = gt_labels
            .reshape([b, m])
            .gather(1, target_gt_idx.clone())
            .clamp_min(0); // [B, A]
        let target_bboxes = gt_bboxes.gather(
            1,
            target_gt_idx.clone().reshape([b, a, 1]).expand([b, a, 4]),
        ); // [B, A, 4]
        // Normalise by the best alignment and IoU of each GT.
        let align_metric = align_metric * mask_pos.clone(); // [B, M, A]
        let pos_align = align_metric.clone().max_dim(2); // [B, M, 1]
        let overlaps = overlaps * mask_pos; // [B, M, A]
        let pos_overlaps = overlaps.max_dim(2); // [B, M, 1]
        let norm = (align_metric * pos_overlaps / (pos_align + self.eps)).max_dim(1); // [B, 1, A]

        let target_scores = if is_flex(&device) {
            // one_hot(labels) · fg · norm, built from the [B, A] values: one nonzero per
            // foreground anchor, where the dense product takes four passes over [B, A, nc].
            // Stored [B, nc, A] (the head's layout, which the class loss reads) and returned
            // as a [B, A, nc] view.
            let labels: Vec<i64> = target_labels.clone().into_data().iter::<i64>().collect();
            let fg: Vec<bool> = fg_mask.clone().into_data().iter::<bool>().collect();
            let norm: Vec<f32> = norm.into_data().iter::<f32>().collect();
            let mut scores = vec![0f32; b * nc * a];
            for (i, ((&label, &on), &v)) in labels.iter().zip(&fg).zip(&norm).enumerate() {
                if on && (label as usize) < nc {
                    let (img, anchor) = (i / a, i % a);
                    scores[(img * nc + label as usize) * a + anchor] = v;
                }
            }
            Tensor::<3>::from_data(TensorData::new(scores, [b, nc, a]), &device).swap_dims(1, 2)
        } else {
            // On a GPU, the same product on the device (no read-back).
            let one_hot: Tensor<3> = target_labels.clone().one_hot::<3>(nc).float(); // [B, A, nc]
            one_hot * fg_mask.clone().float().reshape([b, a, 1]) * norm.reshape([b, a, 1])
        }; // [B, A, nc]

        Assignment {
            target_labels,
            target_bboxes,
            target_scores,
            fg_mask,
            target_gt_idx,
        }
    }

    /// Anchor centres strictly inside each GT (by more than `eps`), after enlarging GT sides
    /// below `stride_val` to `stride_val` about the centre, as 8.4.190
    /// `select_candidates_in_gts` (including its xyxy -> xywh -> xyxy round trip).
    ///
    /// # Shapes
    /// - `anc_points`: `[A, 2]`, `gt_bboxes`: `[B, M, 4]`, `mask_gt`: `[B, M, 1]`
    /// - output: `[B, M, A]`
    pub fn select_candidates_in_gts(
        &self,
        anc_points: Tensor<2>,
        gt_bboxes: Tensor<3>,
        mask_gt: Tensor<3, Bool>,
    ) -> Tensor<3, Bool> {
        let [b, m, _] = gt_bboxes.dims();
        let [a, _] = anc_points.dims();
        let x1y1 = gt_bboxes.clone().narrow(2, 0, 2); // [B, M, 2]
        let x2y2 = gt_bboxes.narrow(2, 2, 2); // [B, M, 2]
        let xy = (x1y1.clone() + x2y2.clone()) / 2.0;
        let wh = x2y2 - x1y1;
        let small = wh
            .clone()
            .lower_elem(self.stride_val)
            .bool_and(mask_gt.expand([b, m, 2])); // [B, M, 2]
        let wh = wh.mask_fill(small, self.stride_val) / 2.0;
        let lt = xy.clone() - wh.clone(); // [B, M, 2]
        let rb = xy + wh; // [B, M, 2]
        let ax = anc_points.clone().narrow(1, 0, 1).reshape([1, 1, a]);
        let ay = anc_points.narrow(1, 1, 1).reshape([1, 1, a]);
        let side = |t: Tensor<3>, i: usize| t.narrow(2, i, 1); // [B, M, 1]
        let eps = self.eps;
        let l = (ax.clone() - side(lt.clone(), 0)).greater_elem(eps);
        let t = (ay.clone() - side(lt, 1)).greater_elem(eps);
        let r = (side(rb.clone(), 0) - ax).greater_elem(eps);
        let btm = (side(rb, 1) - ay).greater_elem(eps);
        l.bool_and(t).bool_and(r).bool_and(btm) // [B, M, A]
    }

    /// Alignment metric `score^alpha * CIoU^beta` (CIoU clamped at 0) and the CIoU, both zero
    /// outside the candidates.
    ///
    /// # Shapes
    /// - `pd_scores`: `[B, A, nc]`, `pd_bboxes`: `[B, A, 4]`, `gt_labels`: `[B, M, 1]`,
    ///   `gt_bboxes`: `[B, M, 4]`, `cand`: `[B, M, A]`
    /// - output: `(align_metric, overlaps)`, each `[B, M, A]`
    fn box_metrics(
        &self,
        pd_scores: Tensor<3>,
        pd_bboxes: Tensor<3>,
        gt_labels: Tensor<3, Int>,
        gt_bboxes: Tensor<3>,
        cand: Tensor<3, Bool>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [b, a, nc] = pd_scores.dims();
        let [_, m, _] = gt_bboxes.dims();
        let gt = gt_bboxes.reshape([b, m, 1, 4]).expand([b, m, a, 4]); // [B, M, A, 4]
        let pd = pd_bboxes.reshape([b, 1, a, 4]).expand([b, m, a, 4]); // [B, M, A, 4]
        let overlaps = bbox_ciou(gt, pd).reshape([b, m, a]).clamp_min(0.0); // [B, M, A]
        let labels = gt_labels.clamp(0, nc as i64 - 1).expand([b, m, a]); // [B, M, A]
        let scores = pd_scores.swap_dims(1, 2).gather(1, labels); // [B, M, A]
        let align = scores.powf_scalar(self.alpha) * overlaps.clone().powf_scalar(self.beta);
        let outside = cand.bool_not();
        (
            align.mask_fill(outside.clone(), 0.0),
            overlaps.mask_fill(outside, 0.0),
        )
    }

    /// One at the `topk` anchors of largest metric of each GT row.
    ///
    /// Ultralytics also zeroes anchors picked more than once, which only happens for padding
    /// rows (their indices are all set to 0); those rows are removed by `mask_gt` afterwards.
    ///
    /// # Shapes
    /// - `metrics`: `[B, M, A]`
    /// - output: `[B, M, A]` (0 or 1)
    fn select_topk_candidates(&self, metrics: Tensor<3>) -> Tensor<3> {
        let [b, m, a] = metrics.dims();
        let k = self.topk.min(a);
        let device = metrics.device();
        let (_, idx) = metrics.topk_with_indices(k, 2); // [B, M, k]
        Tensor::<3>::zeros([b, m, a], &device).scatter(
            2,
            idx,
            Tensor::ones([b, m, k], &device),
            IndexingUpdateOp::Add,
        )
    }
}

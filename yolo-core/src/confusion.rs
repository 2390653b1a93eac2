//! The detection confusion matrix with Ultralytics 8.4.190 semantics
//! (`utils/metrics.py` `ConfusionMatrix.process_batch`, task `detect`).
//!
//! The matrix is `(nc + 1) x (nc + 1)`, indexed `[predicted][true]`; the last row and column
//! are background: `[nc][t]` counts truth boxes of class `t` that no detection claimed (FN),
//! `[p][nc]` detections of class `p` that claimed no truth box (FP).
//!
//! Matching (class-agnostic, so cross-class confusions are counted): detections with
//! `conf > conf` whose IoU with some truth box is `> iou`, taken by decreasing confidence (a
//! stable order, as Ultralytics' `argsort(kind="stable")`), each claim the still-unclaimed
//! truth box with the highest IoU (the first on ties); a claimed truth box is then unavailable.
//! A claim adds one at `[detection class][truth class]`.

use serde::{Deserialize, Serialize};

use crate::boxes::box_iou;
use crate::metrics::{PredBox, TruthBox};

/// Accumulates a detection confusion matrix over images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    nc: usize,
    /// Detections at or below this confidence are ignored.
    conf: f32,
    /// A detection claims a truth box only with IoU strictly above this.
    iou: f32,
    /// `[nc + 1][nc + 1]`, `[predicted][true]`.
    matrix: Vec<Vec<f64>>,
}

impl ConfusionMatrix {
    /// A zero matrix for `nc` classes with Ultralytics' `process_batch` defaults: conf 0.25,
    /// IoU 0.45. (`DetectionValidator` passes its own `conf`, 0.001 for `yolo val`; use
    /// [`ConfusionMatrix::with_conf`] to reproduce that.)
    pub fn new(nc: usize) -> Self {
        Self {
            nc,
            conf: 0.25,
            iou: 0.45,
            matrix: vec![vec![0.0; nc + 1]; nc + 1],
        }
    }

    pub fn with_conf(mut self, conf: f32) -> Self {
        self.conf = conf;
        self
    }

    pub fn with_iou(mut self, iou: f32) -> Self {
        self.iou = iou;
        self
    }

    pub fn nc(&self) -> usize {
        self.nc
    }

    /// Adds one image: its detections (any order) and its truth boxes.
    ///
    /// Panics if a class is `>= nc` (a programmer error: classes come from the model/dataset).
    pub fn process_batch(&mut self, preds: &[PredBox], truth: &[TruthBox]) {
        let nc = self.nc;
        let check = |c: usize| {
            assert!(
                c < nc,
                "class {c} out of range for a {nc}-class confusion matrix"
            )
        };
        truth.iter().for_each(|t| check(t.class));
        let dets: Vec<&PredBox> = preds.iter().filter(|p| p.conf > self.conf).collect();
        dets.iter().for_each(|d| check(d.class));
        // [L, D] IoU (float32, eps 1e-7 as `box_iou`).
        let t_boxes: Vec<[f32; 4]> = truth.iter().map(|t| t.xyxy).collect();
        let d_boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.xyxy).collect();
        let mut ious = box_iou(&t_boxes, &d_boxes);
        let mut candidates: Vec<usize> = (0..dets.len())
            .filter(|&j| ious.iter().any(|row| row[j] > self.iou))
            .collect();
        candidates.sort_by(|&a, &b| dets[b].conf.total_cmp(&dets[a].conf));
        let mut gt_match: Vec<Option<usize>> = vec![None; truth.len()];
        for j in candidates {
            // argmax over truth, first index on ties.
            let mut k = 0;
            for l in 1..ious.len() {
                if ious[l][j] > ious[k][j] {
                    k = l;
                }
            }
            if ious[k][j] > self.iou {
                gt_match[k] = Some(j);
                ious[k].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        let mut det_matched = vec![false; dets.len()];
        for (t, m) in truth.iter().zip(&gt_match) {
            match m {
                Some(j) => {
                    det_matched[*j] = true;
                    self.matrix[dets[*j].class][t.class] += 1.0;
                }
                None => self.matrix[nc][t.class] += 1.0,
            }
        }
        for (d, matched) in dets.iter().zip(det_matched) {
            if !matched {
                self.matrix[d.class][nc] += 1.0;
            }
        }
    }

    /// The `(nc + 1) x (nc + 1)` counts, `[predicted][true]`, background last.
    pub fn matrix(&self) -> &[Vec<f64>] {
        &self.matrix
    }

    /// Ultralytics' `tp_fp()`: per class, the diagonal (TP) and the rest of its prediction row
    /// (FP, including background), background excluded.
    pub fn tp_fp(&self) -> (Vec<f64>, Vec<f64>) {
        (0..self.nc)
            .map(|c| {
                let tp = self.matrix[c][c];
                (tp, self.matrix[c].iter().sum::<f64>() - tp)
            })
            .unzip()
    }

    /// Each column divided by its sum (+1e-9), as Ultralytics' normalised plot: the share of
    /// each true class (column) that went to each predicted class (row).
    pub fn normalized(&self) -> Vec<Vec<f64>> {
        let n = self.nc + 1;
        let col: Vec<f64> = (0..n)
            .map(|t| self.matrix.iter().map(|row| row[t]).sum::<f64>() + 1e-9)
            .collect();
        self.matrix
            .iter()
            .map(|row| row.iter().zip(&col).map(|(v, s)| v / s).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{p, t};

    #[test]
    fn counts_tp_confusion_fp_fn() {
        let mut cm = ConfusionMatrix::new(2);
        cm.process_batch(
            &[
                p(0.0, 0.9, 0),  // TP on truth 0
                p(0.0, 0.8, 0),  // duplicate: FP
                p(20.0, 0.7, 0), // claims truth 1 (class 1): confusion 0 -> 1
                p(50.0, 0.6, 1), // nothing there: FP
                p(80.0, 0.1, 1), // below conf: ignored
            ],
            &[t(0.0, 0), t(20.0, 1), t(80.0, 1)],
        );
        let m = cm.matrix();
        assert_eq!(m[0], vec![1.0, 1.0, 1.0]);
        assert_eq!(m[1], vec![0.0, 0.0, 1.0]);
        assert_eq!(m[2], vec![0.0, 1.0, 0.0], "truth 2 missed");
        let (tp, fp) = cm.tp_fp();
        assert_eq!(tp, vec![1.0, 0.0]);
        assert_eq!(fp, vec![2.0, 1.0]);
        // Image without labels: every detection above conf is background FP.
        cm.process_batch(&[p(0.0, 0.5, 1)], &[]);
        assert_eq!(cm.matrix()[1][2], 2.0);
        let n = cm.normalized();
        assert!((n[2][1] - 0.5).abs() < 1e-6);
    }
}

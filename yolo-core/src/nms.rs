//! Non-maximum suppression with Ultralytics 8.4.190 semantics (`utils/nms.py`,
//! `non_max_suppression` with torchvision's greedy `nms`).

use crate::boxes::{iou, xywh_to_xyxy};

/// Settings of [`non_max_suppression`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NmsConfig {
    /// Keep scores strictly above this.
    pub conf: f32,
    /// Suppress boxes whose IoU with a kept box is strictly above this.
    pub iou: f32,
    /// At most this many detections per image.
    pub max_det: usize,
    /// At most this many candidates enter the suppression (highest scores first).
    pub max_nms: usize,
    /// Class offset that keeps classes apart (class-aware NMS).
    pub max_wh: f32,
    /// One candidate per (box, class) whose score passes `conf`, instead of the best class only.
    pub multi_label: bool,
    /// Suppress across classes.
    pub agnostic: bool,
}

impl NmsConfig {
    /// `predict` defaults: conf 0.25, IoU 0.7, best class per box.
    pub fn predict() -> Self {
        Self {
            conf: 0.25,
            iou: 0.7,
            max_det: 300,
            max_nms: 30000,
            max_wh: 7680.0,
            multi_label: false,
            agnostic: false,
        }
    }

    /// Validation defaults (`DetectionValidator.postprocess`): conf 0.001, IoU 0.7, multi-label.
    pub fn val() -> Self {
        Self {
            conf: 0.001,
            multi_label: true,
            ..Self::predict()
        }
    }
}

/// One kept detection.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    /// `[x1, y1, x2, y2]` in input pixels.
    pub xyxy: [f32; 4],
    pub conf: f32,
    pub class: usize,
}

/// NMS over one image's decoded prediction.
///
/// # Shapes
/// - `pred`: `[4 + nc, A]` row-major (the model's `[B, 4 + nc, A]` output for one image):
///   `cx, cy, w, h` then class scores.
/// - returns at most `max_det` detections, highest score first.
///
/// Candidates are anchors whose best score passes `conf`, in anchor order; with
/// `multi_label` each passing (anchor, class) pair in that order (torch.where's order). The
/// sort by score is stable, so exact ties keep that order (torchvision does not promise an
/// order for ties; with real-valued scores ties are rare).
pub fn non_max_suppression(pred: &[f32], nc: usize, cfg: &NmsConfig) -> Vec<Detection> {
    let rows = 4 + nc;
    assert!(
        nc > 0 && pred.len() % rows == 0,
        "prediction of {} values is not [4 + {nc}, A]",
        pred.len()
    );
    let a = pred.len() / rows;
    let at = |r: usize, i: usize| pred[r * a + i];
    let multi_label = cfg.multi_label && nc > 1;
    let mut cand: Vec<Detection> = Vec::new();
    for i in 0..a {
        let (mut best, mut best_c) = (f32::NEG_INFINITY, 0);
        for c in 0..nc {
            let s = at(4 + c, i);
            if s > best {
                best = s;
                best_c = c;
            }
        }
        if !(best > cfg.conf) {
            continue;
        }
        let xyxy = xywh_to_xyxy([at(0, i), at(1, i), at(2, i), at(3, i)]);
        if multi_label {
            for c in 0..nc {
                let s = at(4 + c, i);
                if s > cfg.conf {
                    cand.push(Detection {
                        xyxy,
                        conf: s,
                        class: c,
                    });
                }
            }
        } else {
            cand.push(Detection {
                xyxy,
                conf: best,
                class: best_c,
            });
        }
    }
    cand.sort_by(|x, y| y.conf.total_cmp(&x.conf));
    cand.truncate(cfg.max_nms);
    let offset = |d: &Detection| {
        let o = if cfg.agnostic {
            0.0
        } else {
            d.class as f32 * cfg.max_wh
        };
        d.xyxy.map(|v| v + o)
    };
    let boxes: Vec<[f32; 4]> = cand.iter().map(offset).collect();
    let mut suppressed = vec![false; cand.len()];
    let mut keep = Vec::new();
    for i in 0..cand.len() {
        if suppressed[i] {
            continue;
        }
        keep.push(cand[i]);
        if keep.len() == cfg.max_det {
            break;
        }
        for j in i + 1..cand.len() {
            if !suppressed[j] && iou(&boxes[i], &boxes[j], 0.0) > cfg.iou {
                suppressed[j] = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a `[4 + nc, A]` prediction from per-anchor `(xywh, scores)`.
    fn pred(anchors: &[([f32; 4], Vec<f32>)]) -> Vec<f32> {
        let nc = anchors[0].1.len();
        let a = anchors.len();
        let mut p = vec![0.0; (4 + nc) * a];
        for (i, (b, s)) in anchors.iter().enumerate() {
            for r in 0..4 {
                p[r * a + i] = b[r];
            }
            for c in 0..nc {
                p[(4 + c) * a + i] = s[c];
            }
        }
        p
    }

    #[test]
    fn suppresses_per_class_and_keeps_order() {
        let p = pred(&[
            ([50.0, 50.0, 20.0, 20.0], vec![0.9, 0.0]),
            ([51.0, 50.0, 20.0, 20.0], vec![0.8, 0.0]), // overlaps the first: suppressed
            ([51.0, 50.0, 20.0, 20.0], vec![0.0, 0.7]), // same place, other class: kept
            ([150.0, 50.0, 20.0, 20.0], vec![0.3, 0.0]),
            ([10.0, 10.0, 4.0, 4.0], vec![0.2, 0.1]), // below conf 0.25
        ]);
        let d = non_max_suppression(&p, 2, &NmsConfig::predict());
        let got: Vec<(usize, f32)> = d.iter().map(|d| (d.class, d.conf)).collect();
        assert_eq!(got, vec![(0, 0.9), (1, 0.7), (0, 0.3)]);
        assert_eq!(d[0].xyxy, [40.0, 40.0, 60.0, 60.0]);
        let mut agnostic = NmsConfig::predict();
        agnostic.agnostic = true;
        assert_eq!(non_max_suppression(&p, 2, &agnostic).len(), 2);
    }

    #[test]
    fn multi_label_and_max_det() {
        let p = pred(&[([50.0, 50.0, 20.0, 20.0], vec![0.6, 0.5]), ([0.0; 4], vec![0.0, 0.0])]);
        let d = non_max_suppression(&p, 2, &NmsConfig::val());
        assert_eq!(d.len(), 2, "one box, two labels");
        let mut one = NmsConfig::val();
        one.max_det = 1;
        assert_eq!(non_max_suppression(&p, 2, &one).len(), 1);
        assert!(non_max_suppression(&pred(&[([0.0; 4], vec![0.0])]), 1, &NmsConfig::val()).is_empty());
    }
}

//! Non-maximum suppression with Ultralytics 8.4.190 semantics (`utils/nms.py`,
//! `non_max_suppression` with torchvision's greedy `nms`, the path `yolo val` and `predict`
//! take: both import torchvision first, which makes `nms.py` use it).
//!
//! Exact-value rules, checked against the package (`yolo-core/tests/metrics.rs`):
//! - scores pass `conf` when strictly above it, compared in f32 (torch casts the Python
//!   threshold to the tensor's dtype);
//! - a box is suppressed when its f32 IoU with a kept box, widened to f64, is strictly above
//!   the IoU threshold as a double (torchvision takes `iou_threshold` as a C++ `double`). We
//!   hold the threshold as f32 and widen it through its shortest decimal (`0.6f32` → `0.6`),
//!   so `iou: 0.6` behaves as Python's `0.6`, not as `0.6000000238`;
//! - ties in score keep candidate order (anchor order; anchor then class with
//!   `multi_label`): torchvision's CPU kernel sorts stably. Where more than `max_nms`
//!   candidates pass, Ultralytics first truncates with `torch.argsort(descending=True)`, which
//!   is not stable on CPU beyond 16 elements; there, tied scores at the cut (and the order among
//!   tied kept boxes) may differ from Ultralytics. With real-valued scores ties are rare.

use crate::boxes::{iou, xywh_to_xyxy};

pub use crate::boxes::{box_iou, xyxy_to_xywh};

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
/// `multi_label` (ignored when `nc == 1`, as Ultralytics does) each passing (anchor, class)
/// pair in that order (torch.where's order). Ties: see the module docs.
///
/// Panics if `nc == 0` or `pred.len()` is not a multiple of `4 + nc` (programmer errors).
pub fn non_max_suppression(pred: &[f32], nc: usize, cfg: &NmsConfig) -> Vec<Detection> {
    nms_impl(pred, nc, cfg, None)
}

/// [`non_max_suppression`] keeping only the listed classes (Ultralytics' `classes=[..]`): the
/// filter applies to candidates before the `max_nms` cut and the suppression, so boxes of
/// other classes never suppress anything.
///
/// # Shapes
/// - as [`non_max_suppression`]; `classes`: any order, duplicates allowed.
pub fn non_max_suppression_classes(
    pred: &[f32],
    nc: usize,
    cfg: &NmsConfig,
    classes: &[usize],
) -> Vec<Detection> {
    nms_impl(pred, nc, cfg, Some(classes))
}

/// The IoU threshold as the double Python would pass: the shortest decimal of the f32.
fn iou_threshold_f64(iou: f32) -> f64 {
    iou.to_string().parse().unwrap_or(iou as f64)
}

fn nms_impl(pred: &[f32], nc: usize, cfg: &NmsConfig, classes: Option<&[usize]>) -> Vec<Detection> {
    let rows = 4 + nc;
    assert!(
        nc > 0 && pred.len() % rows == 0,
        "prediction of {} values is not [4 + {nc}, A]",
        pred.len()
    );
    if cfg.max_det == 0 {
        return Vec::new();
    }
    let a = pred.len() / rows;
    let at = |r: usize, i: usize| pred[r * a + i];
    let multi_label = cfg.multi_label && nc > 1;
    let wanted = |c: usize| classes.map_or(true, |cs| cs.contains(&c));
    // Each anchor's best score, one class row at a time over tiles of anchors: the rows are
    // contiguous (a sweep per anchor would stride `a` floats per class), the running maxima of
    // a tile stay in L1, and `max` vectorises. NaN never wins (`f32::max` takes the other).
    // The class of the maximum is looked up afterwards, for the few anchors that pass `conf`.
    const TILE: usize = 2048;
    let mut best = vec![f32::NEG_INFINITY; a];
    for t0 in (0..a).step_by(TILE) {
        let t1 = (t0 + TILE).min(a);
        for c in 0..nc {
            let row = &pred[(4 + c) * a + t0..(4 + c) * a + t1];
            for (b, &s) in best[t0..t1].iter_mut().zip(row) {
                *b = b.max(s);
            }
        }
    }
    let mut cand: Vec<Detection> = Vec::new();
    for (i, &best) in best.iter().enumerate() {
        if !(best > cfg.conf) {
            continue;
        }
        let xyxy = xywh_to_xyxy([at(0, i), at(1, i), at(2, i), at(3, i)]);
        if multi_label {
            for c in 0..nc {
                let s = at(4 + c, i);
                if s > cfg.conf && wanted(c) {
                    cand.push(Detection {
                        xyxy,
                        conf: s,
                        class: c,
                    });
                }
            }
            continue;
        }
        // First maximum on ties, as torch's `max(1)`.
        let best_c = (0..nc).find(|&c| at(4 + c, i) == best).unwrap_or(0);
        if wanted(best_c) {
            cand.push(Detection {
                xyxy,
                // The score itself: `max` may have kept the other zero of a 0.0 / -0.0 tie.
                conf: at(4 + best_c, i),
                class: best_c,
            });
        }
    }
    // Stable: ties keep candidate order (torchvision's CPU sort).
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
    // IoU on the offset boxes in f32, as torchvision (the offset costs precision far from the
    // origin there too).
    let boxes: Vec<[f32; 4]> = cand.iter().map(offset).collect();
    let thr = iou_threshold_f64(cfg.iou);
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
            if !suppressed[j] && iou(&boxes[i], &boxes[j], 0.0) as f64 > thr {
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

    /// The best class per anchor over more anchors than one tile of the sweep: the first
    /// maximum on ties (torch's `max(1)`), a NaN score never chosen, anchors on both sides of
    /// a tile boundary.
    #[test]
    fn best_class_ties_nan_and_tiles() {
        let far = |i: usize| [i as f32 * 50.0, 0.0, 10.0, 10.0]; // no two boxes overlap
        let mut anchors: Vec<([f32; 4], Vec<f32>)> = (0..4100).map(|i| (far(i), vec![0.0; 3])).collect();
        anchors[5].1 = vec![0.6, 0.6, 0.1]; // tie: class 0
        anchors[2047].1 = vec![f32::NAN, 0.4, 0.3]; // NaN in class 0: class 1
        anchors[2048].1 = vec![0.1, 0.5, 0.5]; // tie after the first tile: class 1
        anchors[4099].1 = vec![0.2, 0.1, 0.9]; // last anchor, in the tail tile
        anchors[3000].1 = vec![f32::NAN; 3]; // no score at all: no candidate
        let mut d = non_max_suppression(&pred(&anchors), 3, &NmsConfig::predict());
        d.sort_by(|a, b| a.xyxy[0].total_cmp(&b.xyxy[0]));
        let got: Vec<(f32, usize, f32)> = d.iter().map(|d| (d.xyxy[0] + 5.0, d.class, d.conf)).collect();
        assert_eq!(got, vec![(250.0, 0, 0.6), (102350.0, 1, 0.4), (102400.0, 1, 0.5), (204950.0, 2, 0.9)]);
    }

    #[test]
    fn multi_label_and_max_det() {
        let p = pred(&[
            ([50.0, 50.0, 20.0, 20.0], vec![0.6, 0.5]),
            ([0.0; 4], vec![0.0, 0.0]),
        ]);
        let d = non_max_suppression(&p, 2, &NmsConfig::val());
        assert_eq!(d.len(), 2, "one box, two labels");
        let mut one = NmsConfig::val();
        one.max_det = 1;
        assert_eq!(non_max_suppression(&p, 2, &one).len(), 1);
        assert!(
            non_max_suppression(&pred(&[([0.0; 4], vec![0.0])]), 1, &NmsConfig::val()).is_empty()
        );
    }

    #[test]
    fn iou_threshold_is_compared_as_python_double() {
        // IoU of these boxes is 60/100 = 0.6000000238 in f32, above the double 0.6:
        // torchvision suppresses the second box.
        let p = pred(&[
            ([5.0, 5.0, 10.0, 10.0], vec![0.9]),
            ([5.0, 3.0, 10.0, 6.0], vec![0.8]),
        ]);
        let cfg = NmsConfig {
            iou: 0.6,
            ..NmsConfig::predict()
        };
        assert_eq!(non_max_suppression(&p, 1, &cfg).len(), 1);
        assert_eq!(iou_threshold_f64(0.7), 0.7);
    }

    #[test]
    fn classes_filter_and_empty_inputs() {
        let p = pred(&[
            ([50.0, 50.0, 20.0, 20.0], vec![0.9, 0.0]),
            ([51.0, 50.0, 20.0, 20.0], vec![0.0, 0.8]),
        ]);
        let mut agnostic = NmsConfig::predict();
        agnostic.agnostic = true;
        // Class 0 is filtered out, so it does not suppress the class-1 box.
        let d = non_max_suppression_classes(&p, 2, &agnostic, &[1]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class, 1);
        assert!(non_max_suppression_classes(&p, 2, &agnostic, &[]).is_empty());
        assert!(
            non_max_suppression(&[], 2, &NmsConfig::val()).is_empty(),
            "A = 0"
        );
        let zero = NmsConfig {
            max_det: 0,
            ..NmsConfig::val()
        };
        assert!(non_max_suppression(&p, 2, &zero).is_empty());
    }

    #[test]
    fn box_helpers() {
        let b = [10.0, 20.0, 4.0, 6.0];
        assert_eq!(xyxy_to_xywh(xywh_to_xyxy(b)), b);
        let m = box_iou(
            &[[0.0, 0.0, 10.0, 10.0]],
            &[[5.0, 0.0, 15.0, 10.0], [20.0; 4]],
        );
        assert_eq!(m.len(), 1);
        assert!((m[0][0] - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(m[0][1], 0.0);
    }
}

//! Detection metrics with Ultralytics 8.4.190 semantics (`utils/metrics.py` `ap_per_class`,
//! `compute_ap`, `DetMetrics`; `BaseValidator.match_predictions`).
//!
//! Matching happens at the ten IoU thresholds 0.50:0.05:0.95; AP is the area under the
//! precision envelope with 101-point interpolation; P and R are taken at the confidence that
//! maximises the class-mean F1 curve (smoothed with a box filter as Ultralytics does).

use serde::{Deserialize, Serialize};

use crate::boxes::box_iou;

/// Number of IoU thresholds.
pub const N_IOU: usize = 10;

/// IoU thresholds 0.50, 0.55, …, 0.95: the float32 values of `torch.linspace(0.5, 0.95, 10)`,
/// which are the nearest float32 to each decimal. (Computing `0.5 + 0.05 * i` in f32 instead
/// gives 0.95000005 for the last one, one ulp above torch's 0.94999999, and a detection with
/// IoU exactly 0.95 in f32 would then not count at 0.95.)
pub fn iou_thresholds() -> [f32; N_IOU] {
    [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
}

/// A predicted box for matching (letterboxed or original pixels, the same space as the truth).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PredBox {
    pub xyxy: [f32; 4],
    pub conf: f32,
    pub class: usize,
}

/// A ground-truth box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TruthBox {
    pub xyxy: [f32; 4],
    pub class: usize,
}

/// Which predictions are true positives at each IoU threshold (`match_predictions`, the
/// greedy branch 8.4.190 uses by default): detections in the given order (highest confidence
/// first, as NMS returns them) each claim, per threshold, the unclaimed same-class truth box
/// with the highest IoU; a claim counts when that IoU reaches the threshold.
///
/// # Shapes
/// - returns one `[bool; 10]` per prediction
pub fn match_predictions(preds: &[PredBox], truth: &[TruthBox]) -> Vec<[bool; N_IOU]> {
    let thr = iou_thresholds();
    let mut correct = vec![[false; N_IOU]; preds.len()];
    if preds.is_empty() || truth.is_empty() {
        return correct;
    }
    // [L, D] IoU with other classes zeroed.
    let t_boxes: Vec<[f32; 4]> = truth.iter().map(|t| t.xyxy).collect();
    let p_boxes: Vec<[f32; 4]> = preds.iter().map(|p| p.xyxy).collect();
    let mut ious = box_iou(&t_boxes, &p_boxes);
    for (row, t) in ious.iter_mut().zip(truth) {
        for (v, p) in row.iter_mut().zip(preds) {
            if p.class != t.class {
                *v = 0.0;
            }
        }
    }
    let mut matched = vec![[false; N_IOU]; truth.len()];
    for j in 0..preds.len() {
        if !ious.iter().any(|row| row[j] >= thr[0]) {
            continue;
        }
        for (t, &th) in thr.iter().enumerate() {
            // argmax over truth of the still-available IoU; first index on ties.
            let (mut k, mut best) = (0, f32::NEG_INFINITY);
            for (l, row) in ious.iter().enumerate() {
                let v = if matched[l][t] { 0.0 } else { row[j] };
                if v > best {
                    best = v;
                    k = l;
                }
            }
            correct[j][t] = best >= th;
            matched[k][t] |= correct[j][t];
        }
    }
    correct
}

/// Statistics gathered over a dataset, one entry per prediction and per truth box.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetStats {
    pub tp: Vec<[bool; N_IOU]>,
    pub conf: Vec<f32>,
    pub pred_cls: Vec<usize>,
    pub target_cls: Vec<usize>,
    /// For each image, the distinct classes it contains (for per-class image counts).
    pub target_img: Vec<usize>,
    pub images: usize,
}

impl DetStats {
    /// Adds one image: its predictions (highest confidence first) and its truth.
    pub fn add_image(&mut self, preds: &[PredBox], truth: &[TruthBox]) {
        self.images += 1;
        self.tp.extend(match_predictions(preds, truth));
        self.conf.extend(preds.iter().map(|p| p.conf));
        self.pred_cls.extend(preds.iter().map(|p| p.class));
        self.target_cls.extend(truth.iter().map(|t| t.class));
        let mut classes: Vec<usize> = truth.iter().map(|t| t.class).collect();
        classes.sort_unstable();
        classes.dedup();
        self.target_img.extend(classes);
    }
}

/// Metrics of one class that has ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAp {
    pub class: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// AP at each IoU threshold; `ap[0]` is AP50.
    pub ap: [f64; N_IOU],
}

impl ClassAp {
    pub fn ap50(&self) -> f64 {
        self.ap[0]
    }
    /// Mean AP over the ten thresholds.
    pub fn ap50_95(&self) -> f64 {
        self.ap.iter().sum::<f64>() / N_IOU as f64
    }
}

/// `np.interp(x, xp, fp, left, right)` for increasing `xp` (ties allowed).
pub fn interp(x: f64, xp: &[f64], fp: &[f64], left: f64, right: f64) -> f64 {
    let n = xp.len();
    if n == 0 {
        return f64::NAN;
    }
    if x < xp[0] {
        return left;
    }
    if x > xp[n - 1] {
        return right;
    }
    // j: the last index with xp[j] <= x.
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j == n - 1 || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let mut y = slope * (x - xp[j]) + fp[j];
    if y.is_nan() {
        y = slope * (x - xp[j + 1]) + fp[j + 1];
        if y.is_nan() && fp[j] == fp[j + 1] {
            y = fp[j];
        }
    }
    y
}

/// `np.linspace(0, 1, n)`.
pub fn linspace01(n: usize) -> Vec<f64> {
    let step = 1.0 / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
    v[n - 1] = 1.0;
    v
}

/// The sentinel-padded recall and the precision envelope of one recall/precision curve, the
/// `(mrec, mpre)` that `compute_ap` returns: recall `[0, r.., r_last (or 1), 1]`, precision
/// `[1, p.., 0, 0]` made non-increasing from the right.
pub fn precision_envelope(recall: &[f64], precision: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut mrec = Vec::with_capacity(recall.len() + 3);
    mrec.push(0.0);
    mrec.extend_from_slice(recall);
    mrec.push(recall.last().copied().unwrap_or(1.0));
    mrec.push(1.0);
    let mut mpre = Vec::with_capacity(precision.len() + 3);
    mpre.push(1.0);
    mpre.extend_from_slice(precision);
    mpre.extend([0.0, 0.0]);
    for i in (0..mpre.len() - 1).rev() {
        mpre[i] = mpre[i].max(mpre[i + 1]);
    }
    (mrec, mpre)
}

/// AP of one recall/precision curve (`compute_ap`): precision envelope, 101-point
/// interpolation, trapezoidal integration.
pub fn compute_ap(recall: &[f64], precision: &[f64]) -> f64 {
    let (mrec, mpre) = precision_envelope(recall, precision);
    let x = linspace01(101);
    let y: Vec<f64> = x
        .iter()
        .map(|&v| interp(v, &mrec, &mpre, mpre[0], *mpre.last().unwrap()))
        .collect();
    x.windows(2)
        .zip(y.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0)
        .sum()
}

/// Box filter smoothing of Ultralytics' `smooth(y, f)`.
fn smooth(y: &[f64], f: f64) -> Vec<f64> {
    let nf = ((y.len() as f64 * f * 2.0).round_ties_even() as usize) / 2 + 1;
    let p = nf / 2;
    let mut yp = Vec::with_capacity(y.len() + 2 * p);
    yp.extend(std::iter::repeat(y[0]).take(p));
    yp.extend_from_slice(y);
    yp.extend(std::iter::repeat(y[y.len() - 1]).take(p));
    let w = 1.0 / nf as f64;
    yp.windows(nf).map(|win| win.iter().map(|v| v * w).sum()).collect()
}

/// Per-class AP, P, R and F1 (`ap_per_class`), for every class that has ground truth,
/// in increasing class order.
///
/// Predictions are ordered by decreasing confidence with a stable sort (numpy's default
/// quicksort may order exact ties differently).
pub fn ap_per_class(stats: &DetStats) -> Vec<ClassAp> {
    const EPS: f64 = 1e-16;
    let mut order: Vec<usize> = (0..stats.conf.len()).collect();
    order.sort_by(|&a, &b| stats.conf[b].total_cmp(&stats.conf[a]));
    let mut classes: Vec<usize> = stats.target_cls.clone();
    classes.sort_unstable();
    classes.dedup();
    let x = linspace01(1000);
    let ncls = classes.len();
    let mut p_curve = vec![vec![0.0; 1000]; ncls];
    let mut r_curve = vec![vec![0.0; 1000]; ncls];
    let mut aps = vec![[0.0; N_IOU]; ncls];
    for (ci, &c) in classes.iter().enumerate() {
        let n_l = stats.target_cls.iter().filter(|&&t| t == c).count() as f64;
        let idx: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| stats.pred_cls[i] == c)
            .collect();
        if idx.is_empty() {
            continue;
        }
        let neg_conf: Vec<f64> = idx.iter().map(|&i| -(stats.conf[i] as f64)).collect();
        for t in 0..N_IOU {
            let (mut tpc, mut fpc) = (0.0f64, 0.0f64);
            let mut recall = Vec::with_capacity(idx.len());
            let mut precision = Vec::with_capacity(idx.len());
            for &i in &idx {
                if stats.tp[i][t] {
                    tpc += 1.0;
                } else {
                    fpc += 1.0;
                }
                recall.push(tpc / (n_l + EPS));
                precision.push(tpc / (tpc + fpc));
            }
            if t == 0 {
                for (k, &xv) in x.iter().enumerate() {
                    r_curve[ci][k] = interp(-xv, &neg_conf, &recall, 0.0, *recall.last().unwrap());
                    p_curve[ci][k] =
                        interp(-xv, &neg_conf, &precision, 1.0, *precision.last().unwrap());
                }
            }
            aps[ci][t] = compute_ap(&recall, &precision);
        }
    }
    let f1: Vec<Vec<f64>> = p_curve
        .iter()
        .zip(&r_curve)
        .map(|(p, r)| {
            p.iter()
                .zip(r)
                .map(|(p, r)| 2.0 * p * r / (p + r + EPS))
                .collect()
        })
        .collect();
    let best = if ncls == 0 {
        0
    } else {
        let mean: Vec<f64> = (0..1000)
            .map(|k| f1.iter().map(|row| row[k]).sum::<f64>() / ncls as f64)
            .collect();
        let s = smooth(&mean, 0.1);
        // argmax, first index on ties.
        let mut bi = 0;
        for (k, v) in s.iter().enumerate() {
            if *v > s[bi] {
                bi = k;
            }
        }
        bi
    };
    classes
        .iter()
        .enumerate()
        .map(|(ci, &c)| ClassAp {
            class: c,
            precision: p_curve[ci][best],
            recall: r_curve[ci][best],
            f1: f1[ci][best],
            ap: aps[ci],
        })
        .collect()
}

/// How [`DetMetrics::fitness`] ranks results, as written in checkpoints and run summaries.
pub const FITNESS_RULE: &str = "mAP50-95";

/// Dataset-level detection metrics (Ultralytics' `DetMetrics.box` means: `mp`, `mr`, `map50`,
/// `map`), the one type the validation loop, `yolo-infer val` and the trainer report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetMetrics {
    /// Mean precision over classes with truth (`mp`).
    pub precision: f64,
    /// Mean recall over classes with truth (`mr`).
    pub recall: f64,
    pub map50: f64,
    /// mAP50-95 (`map`).
    pub map50_95: f64,
}

impl DetMetrics {
    pub fn from_classes(c: &[ClassAp]) -> Self {
        let mean = |f: &dyn Fn(&ClassAp) -> f64| {
            if c.is_empty() {
                0.0
            } else {
                c.iter().map(f).sum::<f64>() / c.len() as f64
            }
        };
        Self {
            precision: mean(&|c| c.precision),
            recall: mean(&|c| c.recall),
            map50: mean(&|c| c.ap50()),
            map50_95: mean(&|c| c.ap50_95()),
        }
    }

    /// Fitness as Ultralytics 8.4.190's `DetMetrics.fitness`: mAP50-95 alone. What the
    /// trainer's `best` checkpoint, early stopping and `yolo-infer val` use ([`FITNESS_RULE`]).
    pub fn fitness(&self) -> f64 {
        self.map50_95
    }

    /// Fitness of the v8-era releases: `0.1 * mAP50 + 0.9 * mAP50-95` (for comparing with
    /// runs of those releases; nothing here selects by it).
    pub fn fitness_v8(&self) -> f64 {
        0.1 * self.map50 + 0.9 * self.map50_95
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 10x10 prediction at `(x, 0)` (the confusion matrix's tests use these too).
    pub(crate) fn p(x: f32, conf: f32, class: usize) -> PredBox {
        PredBox {
            xyxy: [x, 0.0, x + 10.0, 10.0],
            conf,
            class,
        }
    }
    /// A 10x10 truth box at `(x, 0)`.
    pub(crate) fn t(x: f32, class: usize) -> TruthBox {
        TruthBox {
            xyxy: [x, 0.0, x + 10.0, 10.0],
            class,
        }
    }

    #[test]
    fn matching_claims_each_truth_once() {
        // Two detections on one truth box: only the first (higher confidence) is a TP.
        let m = match_predictions(&[p(0.0, 0.9, 0), p(0.0, 0.8, 0), p(1.0, 0.7, 1)], &[t(0.0, 0)]);
        assert_eq!(m[0], [true; 10]);
        assert_eq!(m[1], [false; 10]);
        assert_eq!(m[2], [false; 10], "wrong class");
        // IoU 0.6 (x shifted by 2.5): TP at 0.50 and 0.55 and 0.60 only.
        let m = match_predictions(&[p(2.5, 0.9, 0)], &[t(0.0, 0)]);
        assert_eq!(m[0].iter().filter(|b| **b).count(), 3);
    }

    #[test]
    fn iou_exactly_at_095_counts() {
        // IoU 9500 / 10000 is the float32 nearest 0.95, torch.linspace's last threshold.
        let pred = PredBox {
            xyxy: [0.0, 0.0, 100.0, 95.0],
            conf: 0.5,
            class: 0,
        };
        let truth = TruthBox {
            xyxy: [0.0, 0.0, 100.0, 100.0],
            class: 0,
        };
        assert_eq!(match_predictions(&[pred], &[truth])[0], [true; N_IOU]);
        assert!(match_predictions(&[], &[truth]).is_empty());
        assert_eq!(match_predictions(&[pred], &[]), vec![[false; N_IOU]]);
    }

    #[test]
    fn interp_matches_numpy() {
        let xp = [0.0, 1.0, 1.0, 2.0];
        let fp = [0.0, 1.0, 3.0, 4.0];
        assert_eq!(interp(-1.0, &xp, &fp, 7.0, 9.0), 7.0);
        assert_eq!(interp(3.0, &xp, &fp, 7.0, 9.0), 9.0);
        assert_eq!(interp(0.5, &xp, &fp, 7.0, 9.0), 0.5);
        assert_eq!(interp(1.0, &xp, &fp, 7.0, 9.0), 3.0, "ties: the last equal xp");
        assert_eq!(interp(1.5, &xp, &fp, 7.0, 9.0), 3.5);
        assert_eq!(interp(2.0, &xp, &fp, 7.0, 9.0), 4.0);
    }

    #[test]
    fn perfect_detector_has_ap_one() {
        let mut s = DetStats::default();
        s.add_image(&[p(0.0, 0.9, 0), p(20.0, 0.8, 1)], &[t(0.0, 0), t(20.0, 1)]);
        s.add_image(&[], &[]);
        let c = ap_per_class(&s);
        assert_eq!(c.len(), 2);
        // Ultralytics' 101-point trapezoid gives 0.995 for a perfect detector: the
        // envelope drops to 0 at recall 1.0, so the last interval counts half.
        for c in &c {
            assert!((c.ap50_95() - 0.995).abs() < 1e-9, "{c:?}");
        }
        let sum = DetMetrics::from_classes(&c);
        assert!((sum.map50 - 0.995).abs() < 1e-9 && (sum.precision - 1.0).abs() < 1e-9);
        // A class with truth but no predictions counts with AP 0.
        s.add_image(&[], &[t(0.0, 2)]);
        let sum = DetMetrics::from_classes(&ap_per_class(&s));
        assert!((sum.map50 - 0.995 * 2.0 / 3.0).abs() < 1e-9);
    }
}

//! Helpers shared by the metric parity tests (`metric_parity.rs`, `metrics.rs`): their fixture
//! files, JSON arrays, the prediction / truth sets the fixtures hold, and the checks both make
//! (TP matrices, counts per class, NMS results).

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;
use yolo_core::metrics::{match_predictions, DetStats, PredBox, TruthBox};
use yolo_core::nms::{Detection, NmsConfig};

/// `tests/fixtures/{dir}/{name}`, parsed.
pub fn fixture(dir: &str, name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn f64ss(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(f64s).collect()
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// `[x1, y1, x2, y2]` rows.
pub fn boxes(v: &Value) -> Vec<[f32; 4]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let b = f64s(b);
            [b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32]
        })
        .collect()
}

/// One image of a metrics set: predictions in NMS order and truth.
pub struct Image {
    pub preds: Vec<PredBox>,
    pub truth: Vec<TruthBox>,
}

/// The images of a metrics set (`pred_xyxy`, `pred_conf`, `pred_cls`, `gt_xyxy`, `gt_cls`).
pub fn images(set: &Value) -> Vec<Image> {
    set["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| {
            let conf = f64s(&im["pred_conf"]);
            let preds = boxes(&im["pred_xyxy"])
                .into_iter()
                .zip(conf)
                .zip(usizes(&im["pred_cls"]))
                .map(|((xyxy, conf), class)| PredBox {
                    xyxy,
                    conf: conf as f32,
                    class,
                })
                .collect();
            let truth = boxes(&im["gt_xyxy"])
                .into_iter()
                .zip(usizes(&im["gt_cls"]))
                .map(|(xyxy, class)| TruthBox { xyxy, class })
                .collect();
            Image { preds, truth }
        })
        .collect()
}

/// The statistics of all images, in order.
pub fn stats_of(ims: &[Image]) -> DetStats {
    let mut s = DetStats::default();
    for im in ims {
        s.add_image(&im.preds, &im.truth);
    }
    s
}

/// Asserts each image's TP matrix ([`match_predictions`]) equals Ultralytics' `u["tp"][k]`.
pub fn assert_tp_matrices(u: &Value, ims: &[Image], what: &str) {
    for (k, im) in ims.iter().enumerate() {
        let ours: Vec<Vec<u64>> = match_predictions(&im.preds, &im.truth)
            .iter()
            .map(|row| row.iter().map(|&b| b as u64).collect())
            .collect();
        let theirs: Vec<Vec<u64>> = u["tp"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| usizes(row).into_iter().map(|x| x as u64).collect())
            .collect();
        assert_eq!(ours, theirs, "{what}: TP matrix of image {k}");
    }
}

/// Asserts the instances and the images per class equal Ultralytics' `nt_per_class` and
/// `nt_per_image`.
pub fn assert_class_counts(u: &Value, stats: &DetStats, nc: usize, what: &str) {
    let count = |v: &[usize], c: usize| v.iter().filter(|&&x| x == c).count();
    let nt: Vec<usize> = (0..nc).map(|c| count(&stats.target_cls, c)).collect();
    let ni: Vec<usize> = (0..nc).map(|c| count(&stats.target_img, c)).collect();
    assert_eq!(nt, usizes(&u["nt_per_class"]), "{what}: instances per class");
    assert_eq!(ni, usizes(&u["nt_per_image"]), "{what}: images per class");
}

/// The [`NmsConfig`] of a fixture case's `config` (Ultralytics' `max_wh`, 7680).
pub fn nms_config(c: &Value) -> NmsConfig {
    NmsConfig {
        conf: c["conf"].as_f64().unwrap() as f32,
        iou: c["iou"].as_f64().unwrap() as f32,
        max_det: c["max_det"].as_u64().unwrap() as usize,
        max_nms: c["max_nms"].as_u64().unwrap() as usize,
        max_wh: 7680.0,
        multi_label: c["multi_label"].as_bool().unwrap(),
        agnostic: c["agnostic"].as_bool().unwrap(),
    }
}

/// Asserts `ours` keeps Ultralytics' detections (`kept`: `[x1, y1, x2, y2, score, class]`
/// rows) in the same order: coordinates within 1e-4, scores and classes exactly. Returns the
/// largest coordinate difference.
pub fn assert_same_kept(name: &str, ours: &[Detection], kept: &Value) -> f32 {
    let theirs = f64ss(kept);
    assert_eq!(ours.len(), theirs.len(), "{name}: number kept");
    let mut worst = 0.0f32;
    for (k, (d, t)) in ours.iter().zip(&theirs).enumerate() {
        for i in 0..4 {
            let diff = (d.xyxy[i] - t[i] as f32).abs();
            worst = worst.max(diff);
            assert!(diff < 1e-4, "{name} #{k}: {:?} vs {t:?}", d.xyxy);
        }
        assert_eq!(d.conf, t[4] as f32, "{name} #{k}: score");
        assert_eq!(d.class, t[5] as usize, "{name} #{k}: class");
    }
    worst
}

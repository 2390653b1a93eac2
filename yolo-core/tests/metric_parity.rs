//! Unit-level parity with Ultralytics 8.4.190 for matching, AP/mAP, P/R, the PR curves, the
//! confusion matrix and NMS, on fixtures written by
//! `tools/fixtures/make_metric_parity_fixtures.py` (Ultralytics' own code run on seeded
//! prediction / truth sets), plus the PNG plots.
//!
//! Ties: the `ties` set quantises confidences to 0.05 steps. Ultralytics orders predictions
//! with `np.argsort(-conf)`, which is not stable (and its tie order depends on numpy's sort
//! kernel, so on the machine); we sort stably. On that set the two orders give different
//! numbers (measured: mAP50 differs by 0.0043, mAP50-95 by 0.0024, mean recall by 0.034,
//! per-class PR curves by up to 0.19), so there we assert exact parity with Ultralytics' code
//! run with a stable argsort, and against its default run only what no order can change: the
//! TP matrices, instance counts, class list and confusion matrices. On the `main` set (no
//! ties) default and stable runs are identical and we match them.

mod common;

use std::path::PathBuf;

use common::{
    assert_class_counts, assert_same_kept, assert_tp_matrices, f64s, f64ss, images, nms_config,
    stats_of, usizes, Image,
};
use serde_json::Value;
use yolo_core::confusion::ConfusionMatrix;
use yolo_core::metrics::{ap_per_class, DetMetrics, DetStats};
use yolo_core::nms::non_max_suppression;
use yolo_core::plots::{confusion_size, plot_confusion_matrix, plot_pr_curve, pr_curves, PR_SIZE};

const TOL: f64 = 1e-6;

fn fixture(name: &str) -> Value {
    common::fixture("metric_parity", name)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Asserts the order-independent parts: TP matrices, counts, classes, confusion matrices.
fn check_order_independent(set: &Value, ims: &[Image], stats: &DetStats) {
    let u = &set["ultralytics"];
    let nc = set["nc"].as_u64().unwrap() as usize;
    assert_tp_matrices(u, ims, "order-independent");
    assert_class_counts(u, stats, nc, "order-independent");
    let classes: Vec<usize> = ap_per_class(stats).iter().map(|c| c.class).collect();
    assert_eq!(classes, usizes(&u["classes"]));
    for (key, conf) in [("confusion_conf025", 0.25), ("confusion_conf0001", 0.001)] {
        let mut cm = ConfusionMatrix::new(nc).with_conf(conf);
        for im in ims {
            cm.process_batch(&im.preds, &im.truth);
        }
        assert_eq!(cm.matrix(), f64ss(&u[key]).as_slice(), "{key}");
        if key == "confusion_conf025" {
            let (tp, fp) = cm.tp_fp();
            let theirs = &u["confusion_tp_fp_conf025"];
            assert_eq!((tp, fp), (f64s(&theirs[0]), f64s(&theirs[1])));
        }
    }
}

/// Asserts metrics, per-class results and PR curves within [`TOL`]; returns the max difference.
fn check_metrics(stats: &DetStats, u: &Value) -> f64 {
    let classes = ap_per_class(stats);
    let sum = DetMetrics::from_classes(&classes);
    let mut worst = 0.0f64;
    for (ours, key) in [
        (sum.precision, "mp"),
        (sum.recall, "mr"),
        (sum.map50, "map50"),
        (sum.map50_95, "map"),
        (sum.fitness(), "fitness"),
    ] {
        let d = (ours - u[key].as_f64().unwrap()).abs();
        assert!(d < TOL, "{key}: ours {ours} vs {}", u[key]);
        worst = worst.max(d);
    }
    let per =
        |f: &dyn Fn(&yolo_core::metrics::ClassAp) -> f64| classes.iter().map(f).collect::<Vec<_>>();
    for (ours, key) in [
        (per(&|c| c.precision), "p"),
        (per(&|c| c.recall), "r"),
        (per(&|c| c.f1), "f1"),
    ] {
        let d = max_diff(&ours, &f64s(&u[key]));
        assert!(d < TOL, "{key}: {d}");
        worst = worst.max(d);
    }
    for (c, theirs) in classes.iter().zip(f64ss(&u["ap"])) {
        let d = max_diff(&c.ap, &theirs);
        assert!(d < TOL, "ap of class {}: {d}", c.class);
        worst = worst.max(d);
    }
    if let Some(pv) = u.get("prec_values") {
        let curves = pr_curves(stats);
        assert_eq!(curves.len(), classes.len());
        for ((curve, theirs), c) in curves.iter().zip(f64ss(pv)).zip(&classes) {
            let d = max_diff(&curve.precision, &theirs);
            assert!(d < TOL, "PR curve of class {}: {d}", curve.class);
            assert!((curve.ap50 - c.ap50()).abs() < 1e-12);
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn metrics_match_ultralytics_without_ties() {
    let set = fixture("metrics_main.json");
    let ims = images(&set);
    let stats = stats_of(&ims);
    check_order_independent(&set, &ims, &stats);
    let worst = check_metrics(&stats, &set["ultralytics"]);
    eprintln!("main set: max |ours - ultralytics| = {worst:e}");
}

#[test]
fn metrics_with_confidence_ties() {
    let set = fixture("metrics_ties.json");
    let ims = images(&set);
    let stats = stats_of(&ims);
    // What no order of ties can change, against Ultralytics as it runs.
    check_order_independent(&set, &ims, &stats);
    // Everything else against Ultralytics' code with a stable argsort (our order).
    let worst = check_metrics(&stats, &set["ultralytics_stable_sort"]);
    eprintln!("ties set (stable order): max |ours - ultralytics| = {worst:e}");
    // The fixture records that ties do matter here, which is why the default run is not compared.
    assert!(set["default_vs_stable_max_diff"]["map50"].as_f64().unwrap() > 0.0);
}

/// COCO's mAP (pycocotools 2.0.11) on the `main` set differs from Ultralytics' (which we
/// match): COCOeval matches per category by score with its own tie rules, caps 100 detections
/// per image (44 here, so no cap), interpolates precision at 101 recall thresholds by taking the
/// envelope value at the first recall >= each threshold (a step function, summed and divided
/// by 101), where Ultralytics interpolates the envelope linearly (`np.interp`) and integrates
/// with the trapezoid rule, and uses IoU >= threshold with its own IoU (no eps). Measured on
/// this set: COCO mAP50-95 0.14138 vs ours 0.13964 (diff 0.0017), mAP50 0.24762 vs 0.24632
/// (diff 0.0013). We assert that relationship stays within 0.005.
#[test]
fn coco_map_is_close_to_ours() {
    let set = fixture("metrics_main.json");
    let Some(coco) = set.get("coco").filter(|c| !c.is_null()) else {
        eprintln!("fixture has no pycocotools result; skipped");
        return;
    };
    let sum = DetMetrics::from_classes(&ap_per_class(&stats_of(&images(&set))));
    let d50 = (sum.map50 - coco["map50"].as_f64().unwrap()).abs();
    let d = (sum.map50_95 - coco["map50_95"].as_f64().unwrap()).abs();
    eprintln!("COCO vs ours: mAP50 diff {d50:.5}, mAP50-95 diff {d:.5}");
    assert!(
        d50 < 0.005 && d < 0.005,
        "mAP50 diff {d50}, mAP50-95 diff {d}"
    );
}

#[test]
fn nms_matches_ultralytics() {
    let fx = fixture("nms.json");
    let mut worst = 0.0f32;
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let nc = case["nc"].as_u64().unwrap() as usize;
        let cfg = nms_config(&case["config"]);
        let pred: Vec<f32> = f64s(&case["pred"]).iter().map(|&v| v as f32).collect();
        let ours = non_max_suppression(&pred, nc, &cfg);
        worst = worst.max(assert_same_kept(name, &ours, &case["kept"]));
    }
    eprintln!("NMS: max coordinate difference {worst:e}");
}

#[test]
fn plots_decode_with_expected_size_and_content() {
    let set = fixture("metrics_main.json");
    let ims = images(&set);
    let stats = stats_of(&ims);
    let nc = set["nc"].as_u64().unwrap() as usize;
    let names: Vec<String> = ["circle", "square", "triangle", "star", "hexagon", "cross"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut cm = ConfusionMatrix::new(nc);
    for im in &ims {
        cm.process_batch(&im.preds, &im.truth);
    }
    let dir = tempfile::tempdir().unwrap();
    // YOLO_PLOTS_DIR keeps copies to look at by eye.
    let keep = std::env::var_os("YOLO_PLOTS_DIR").map(PathBuf::from);
    let outs = [
        ("PR_curve.png", PR_SIZE),
        ("confusion_matrix.png", confusion_size(nc + 1)),
        ("confusion_matrix_normalized.png", confusion_size(nc + 1)),
    ];
    for (name, size) in outs {
        let path = dir.path().join(name);
        match name {
            "PR_curve.png" => plot_pr_curve(&path, &pr_curves(&stats), &names).unwrap(),
            "confusion_matrix.png" => plot_confusion_matrix(&path, cm.matrix(), &names).unwrap(),
            _ => plot_confusion_matrix(&path, &cm.normalized(), &names).unwrap(),
        }
        if let Some(k) = &keep {
            std::fs::create_dir_all(k).unwrap();
            std::fs::copy(&path, k.join(name)).unwrap();
        }
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), size, "{name}");
        let white = img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        let total = (size.0 * size.1) as usize;
        assert!(white < total * 98 / 100, "{name} is blank");
        let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(
            distinct.len() >= 4,
            "{name} has only {} colours",
            distinct.len()
        );
    }
    // No temporary files left behind by the atomic writes.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), outs.len());
}

//! `yolo-infer val` as the pipeline runs it: exit codes of the quality gate, metrics.json and
//! Tekton result files. Uses the model trained by Ultralytics on the shapes data
//! (yolo-core/tests/fixtures/val) on a freshly generated shapes val split.

use std::path::Path;
use std::process::Command;

use yolo_core::data::shapes::{generate, ShapesConfig};

mod common;
use common::weights;

/// `yolo-infer val` at 160 px unless `extra` sets `--imgsz`.
fn val(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let imgsz: &[&str] = if extra.contains(&"--imgsz") { &[] } else { &["--imgsz", "160"] };
    Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .arg("val")
        .args(imgsz)
        .arg("--weights")
        .arg(weights())
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn gate_exit_codes_and_result_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ShapesConfig {
        train: 1,
        val: 24,
        imgsz: 160,
        seed: 0,
        clutter: 0,
    };
    let s = generate(&cfg, &tmp.path().join("shapes")).unwrap();
    let out = tmp.path().join("val");
    let results = tmp.path().join("results");

    let ok = val(&s.data_yaml, &out, &["--min-map50", "0.05"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("mAP50-95)") && stdout.contains("rectangle"), "{stdout}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let map50 = m["map50"].as_f64().unwrap();
    for png in ["PR_curve.png", "confusion_matrix.png"] {
        let img = image::open(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() > 100 && img.height() > 100, "{png}");
    }
    assert!(map50 > 0.05 && map50 < 1.0, "{map50}");

    let rs = results.to_str().unwrap();
    let fail = val(&s.data_yaml, &out, &["--min-map50-95", "0.99", "--results-dir", rs]);
    assert_eq!(fail.status.code(), Some(3), "gate failure has its own exit code");
    assert!(String::from_utf8_lossy(&fail.stderr).contains("quality gate FAILED"));
    let read = |n: &str| std::fs::read_to_string(results.join(n)).unwrap();
    assert_eq!(read("passed"), "false");
    assert_eq!(read("map50"), format!("{map50:.4}"));
    assert!(read("map50-95").parse::<f64>().unwrap() < 0.99);

    let bad = Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .args(["val", "--weights", "/nonexistent.safetensors", "--data"])
        .arg(&s.data_yaml)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("/nonexistent.safetensors"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "the cause once: {err}");

    // Square batches at a size that is not a multiple of 32: rounded up, as Ultralytics does
    // (the neck's concatenations failed on 150 before).
    let odd = val(&s.data_yaml, &out, &["--no-rect", "--imgsz", "150"]);
    let err = String::from_utf8_lossy(&odd.stderr);
    assert_eq!(odd.status.code(), Some(0), "{err}");
    assert!(err.contains("imgsz 150 is not a multiple of the largest stride (32): using 160"), "{err}");
    let zero = val(&s.data_yaml, &out, &["--imgsz", "0"]);
    let err = String::from_utf8_lossy(&zero.stderr);
    assert_eq!(zero.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid config `imgsz`"), "{err}");
    for flags in [["--conf", "NaN"], ["--iou", "5"], ["--max-det", "0"]] {
        let usage = val(&s.data_yaml, &out, &flags);
        assert_eq!(usage.status.code(), Some(2), "{flags:?} is a usage error");
    }
}

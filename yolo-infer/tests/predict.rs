//! `yolo-infer predict` and the `Detector` on the shapes data with the model Ultralytics
//! trained on it (yolo-core/tests/fixtures/val, mAP50 0.43 at 160 px): it finds the labelled
//! objects, writes JSON, txt, COCO and annotated images, skips unreadable files, and batches
//! give the same detections as single images.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use yolo_core::boxes::iou;
use yolo_core::data::dataset::img2label_path;
use yolo_core::data::image::read_rgb8;
use yolo_core::data::shapes::{generate, ShapesConfig};
use yolo_infer::detector::{DetectOptions, Detector};

mod common;
use common::weights;

fn shapes(root: &Path, val: usize) -> PathBuf {
    let cfg = ShapesConfig {
        train: 1,
        val,
        imgsz: 160,
        seed: 0,
        clutter: 0,
    };
    generate(&cfg, root).unwrap();
    root.join("images/val")
}

/// Labelled boxes of an image in pixels: (class, xyxy).
fn labels(img: &Path, w: f32, h: f32) -> Vec<(usize, [f32; 4])> {
    fs::read_to_string(img2label_path(img))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: Vec<f32> = l.split_whitespace().map(|t| t.parse().unwrap()).collect();
            (v.len() == 5).then(|| {
                let (cx, cy, bw, bh) = (v[1] * w, v[2] * h, v[3] * w, v[4] * h);
                (v[0] as usize, [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0])
            })
        })
        .collect()
}

#[test]
fn predict_finds_the_objects_and_writes_every_output() {
    let tmp = tempfile::tempdir().unwrap();
    let val = shapes(&tmp.path().join("shapes"), 24);
    // An unreadable file among the images: reported and skipped, the rest goes on.
    fs::write(val.join("zz_broken.png"), b"not a png").unwrap();
    let project = tmp.path().join("runs");
    let out = Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .args(["predict", "--imgsz", "160", "--batch", "4", "--save", "--save-txt", "--save-coco"])
        .arg("--weights")
        .arg(weights())
        .arg("--source")
        .arg(&val)
        .arg("--project")
        .arg(&project)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("zz_broken.png") && stderr.contains("1 skipped"), "{stderr}");
    assert!(stderr.contains("ms preprocess") && stderr.contains("ms inference"), "{stderr}");
    let run = project.join("predict");
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 24, "one JSON line per readable image");

    let (mut found, mut total, mut dets) = (0usize, 0usize, 0usize);
    for r in &lines {
        let img = PathBuf::from(r["image"].as_str().unwrap());
        let stem = img.file_stem().unwrap().to_string_lossy().into_owned();
        let (w, h) = (r["width"].as_f64().unwrap() as f32, r["height"].as_f64().unwrap() as f32);
        let d = r["detections"].as_array().unwrap();
        dets += d.len();
        let boxes: Vec<(usize, [f32; 4], f32)> = d
            .iter()
            .map(|x| {
                let b: Vec<f32> =
                    x["xyxy"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
                assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= w && b[3] <= h, "clipped: {b:?}");
                let score = x["score"].as_f64().unwrap() as f32;
                assert!(score > 0.25, "conf filter");
                (x["class_id"].as_u64().unwrap() as usize, [b[0], b[1], b[2], b[3]], score)
            })
            .collect();
        for (c, gt) in labels(&img, w, h) {
            total += 1;
            if boxes.iter().any(|(bc, b, _)| *bc == c && iou(b, &gt, 1e-7) >= 0.5) {
                found += 1;
            }
        }
        // The per-image JSON equals the printed line.
        let saved: serde_json::Value =
            serde_json::from_slice(&fs::read(run.join("json").join(format!("{stem}.json"))).unwrap())
                .unwrap();
        assert_eq!(&saved, r);
        // txt rows: one per detection, class and confidence as in the JSON.
        let txt = fs::read_to_string(run.join("labels").join(format!("{stem}.txt"))).unwrap();
        let rows: Vec<Vec<f32>> = txt
            .lines()
            .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
            .collect();
        assert_eq!(rows.len(), boxes.len());
        for (row, (c, b, s)) in rows.iter().zip(&boxes) {
            assert_eq!(row.len(), 6);
            assert_eq!(row[0] as usize, *c);
            assert!((row[1] - (b[0] + b[2]) / 2.0 / w).abs() < 1e-5);
            assert!((row[5] - s).abs() < 1e-5);
        }
        let annotated = image::open(run.join(format!("{stem}.png"))).unwrap();
        assert_eq!((annotated.width() as f32, annotated.height() as f32), (w, h));
    }
    // The fixture model is weak (mAP50 0.43, recall 0.73 at conf 0.001 on this data); at conf
    // 0.25 it finds 23 of the 56 labelled objects here (IoU >= 0.5, same class). A broken
    // letterbox, box mapping or class order finds few or none.
    assert!(total > 40, "{total} labelled objects");
    assert!(found * 10 >= total * 3, "found {found} of {total} labelled objects");

    let coco: Vec<serde_json::Value> =
        serde_json::from_slice(&fs::read(run.join("predictions.json")).unwrap()).unwrap();
    assert_eq!(coco.len(), dets);
    assert!(coco.iter().all(|c| c["image_id"].is_u64() && c["bbox"].as_array().unwrap().len() == 4));
    assert!(!run.join("zz_broken.png").exists() && !run.join("json/zz_broken.json").exists());

    // A second run gets its own folder.
    let again = Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .args(["predict", "--imgsz", "160", "--format", "none"])
        .arg("--weights")
        .arg(weights())
        .arg("--source")
        .arg(val.join("000000.png"))
        .arg("--project")
        .arg(&project)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert!(again.stdout.is_empty(), "--format none prints nothing");
    assert!(project.join("predict2/json/000000.json").is_file());
}

#[test]
fn bad_sources_and_options_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
            .arg("predict")
            .arg("--weights")
            .arg(weights())
            .args(["--project", tmp.path().join("runs").to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let missing = run(&["--source", "/nonexistent/folder"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/folder"));
    let no_match = run(&["--source", &format!("{}/*.jpg", tmp.path().display())]);
    assert_eq!(no_match.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_match.stderr).contains("no images match"));
    fs::write(tmp.path().join("a.png"), b"x").unwrap();
    let bad_class = run(&["--source", tmp.path().join("a.png").to_str().unwrap(), "--classes", "7"]);
    assert_eq!(bad_class.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_class.stderr).contains("classes"));
    assert_eq!(run(&["--source", "x", "--conf", "1.5"]).status.code(), Some(2));
    let huge = run(&["--source", tmp.path().join("a.png").to_str().unwrap(), "--imgsz", "20000"]);
    assert_eq!(huge.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&huge.stderr).contains("20000 is not between 1 and 16384"));
}

#[test]
fn batches_match_single_images_and_classes_filter() {
    let tmp = tempfile::tempdir().unwrap();
    let val = shapes(&tmp.path().join("shapes"), 6);
    let device = yolo_core::backend::default_device();
    let det = Detector::load(&weights(), 150, &device).unwrap();
    assert_eq!(det.imgsz(), 160, "rounded up to the stride");
    let mut imgs: Vec<_> = fs::read_dir(&val).unwrap().map(|e| e.unwrap().path()).collect();
    imgs.sort();
    let images: Vec<image::RgbImage> = imgs.iter().map(|p| read_rgb8(p).unwrap()).collect();
    let opts = DetectOptions::default();
    // Images of different sizes: the batch is padded to 160 x 160, the single ones to the
    // least multiple of 32; the detections agree within float rounding of the resize.
    let refs: Vec<&image::RgbImage> = images.iter().collect();
    let (batch, _) = det.detect_batch(&refs, &vec![&opts; refs.len()]).unwrap();
    let mut any = 0;
    for (img, b) in images.iter().zip(&batch) {
        let single = det.detect(img, &opts).unwrap();
        any += single.len();
        for s in &single {
            assert!(
                b.iter().any(|x| x.class_id == s.class_id && iou(&x.xyxy, &s.xyxy, 1e-7) > 0.9),
                "{s:?} not in the batch's {b:?}"
            );
        }
    }
    assert!(any > 0);
    // Same-size copies in one batch give the single-image result exactly.
    let same = vec![&images[0]; 3];
    let (b3, _) = det.detect_batch(&same, &vec![&opts; 3]).unwrap();
    let one = det.detect(&images[0], &opts).unwrap();
    assert!(b3.iter().all(|d| *d == one));
    // A class filter keeps only that class; an out-of-range class is an error.
    let only = DetectOptions {
        classes: Some(vec![1]),
        conf: 0.05,
        ..DetectOptions::default()
    };
    let d = det.detect(&images[0], &only).unwrap();
    assert!(d.iter().all(|x| x.class_id == 1 && x.class_name == det.names()[1]));
    let bad = DetectOptions {
        classes: Some(vec![3]),
        ..DetectOptions::default()
    };
    assert!(det.detect(&images[0], &bad).is_err());
}

/// A half-precision detector (`Detector::half`, run here on the default device: flex in CI,
/// where f16 is emulated) finds what the f32 one finds: every f32 detection above 0.25 has a
/// half one of the same class with IoU > 0.95 and a score within 0.01, and the counts match
/// but for detections whose score is within 0.01 of the threshold.
#[test]
fn half_detector_matches_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let val = shapes(&tmp.path().join("shapes"), 6);
    let device = yolo_core::backend::default_device();
    if !yolo_core::amp::supported(&device) {
        return println!("{device:?} has no f16 arithmetic: skipped");
    }
    let f32_det = Detector::load(&weights(), 160, &device).unwrap();
    let half_det = Detector::load(&weights(), 160, &device).unwrap().half();
    assert_eq!((f32_det.precision(), half_det.precision()), ("f32", "f16"));
    let opts = DetectOptions::default();
    let mut imgs: Vec<_> = fs::read_dir(&val).unwrap().map(|e| e.unwrap().path()).collect();
    imgs.sort();
    let (mut compared, mut exact) = (0, 0);
    for p in &imgs {
        let img = read_rgb8(p).unwrap();
        let full = f32_det.detect(&img, &opts).unwrap();
        let half = half_det.detect(&img, &opts).unwrap();
        exact += usize::from(full == half);
        let near = |d: &yolo_infer::detector::Detection| (d.score - opts.conf).abs() < 0.01;
        assert_eq!(
            full.iter().filter(|d| !near(d)).count(),
            half.iter().filter(|d| !near(d)).count(),
            "{}: {full:?} vs {half:?}",
            p.display()
        );
        for d in full.iter().filter(|d| !near(d)) {
            compared += 1;
            assert!(
                half.iter().any(|h| h.class_id == d.class_id
                    && iou(&h.xyxy, &d.xyxy, 1e-7) > 0.95
                    && (h.score - d.score).abs() < 0.01),
                "{}: {d:?} not in the half detector's {half:?}",
                p.display()
            );
        }
    }
    assert!(compared > 0);
    // f16 rounding moves the boxes: identical lists everywhere would mean it ran in f32.
    assert!(exact < imgs.len(), "the half detector gave the f32 output on every image");
}

/// `--half` on the CPU backend: a warning, and the f32 run's output (Ultralytics runs f32 on
/// the CPU too).
#[test]
fn half_flag_on_flex_warns_and_runs_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let val = shapes(&tmp.path().join("shapes"), 2);
    let run = |extra: &[&str], name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
            .args(["predict", "--imgsz", "160", "--device", "flex", "--name", name])
            .args(extra)
            .arg("--weights")
            .arg(weights())
            .arg("--source")
            .arg(&val)
            .arg("--project")
            .arg(tmp.path().join("runs"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let dir = tmp.path().join("runs").join(name).join("json");
        let mut files: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let json: Vec<String> = files.iter().map(|f| fs::read_to_string(f).unwrap()).collect();
        (String::from_utf8_lossy(&out.stderr).into_owned(), json)
    };
    let (err_half, half) = run(&["--half"], "half");
    let (err_f32, full) = run(&[], "f32");
    assert!(err_half.contains("--half ignored") && err_half.contains("flex"), "{err_half}");
    assert!(!err_f32.contains("--half"), "{err_f32}");
    assert!(!half.is_empty());
    assert_eq!(half, full);
}

/// An image whose name is not UTF-8: its results are written, the name in the JSON with
/// U+FFFD in place of its bytes (serialising the path panicked before).
#[cfg(unix)]
#[test]
fn non_utf8_image_names_are_predicted() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let val = shapes(&tmp.path().join("shapes"), 1);
    let src = fs::read_dir(&val).unwrap().next().unwrap().unwrap().path();
    let dir = tmp.path().join("odd");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(&src, dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .args(["predict", "--imgsz", "160", "--format", "jsonl", "--save-txt", "--weights"])
        .arg(weights())
        .arg("--source")
        .arg(&dir)
        .arg("--project")
        .arg(tmp.path().join("runs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("caf\u{fffd}.png"), "{line}");
    let json = fs::read_dir(tmp.path().join("runs/predict/json")).unwrap().count();
    assert_eq!(json, 1);
}

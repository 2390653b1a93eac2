//! `yolo-bench --smoke` end to end: every section runs (serving too when a yolo-infer binary
//! sits next to yolo-bench), the JSON report has the fields a reader and `--compare` need with
//! sane values, the Markdown and the plot are written, `--compare` reports the change between
//! two reports, and bad reports are errors that name the file and the field.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_yolo-bench"))
        .args(args)
        .env_remove("BURN_DEVICE")
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yolo-bench-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn figure<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no figure {id} in {}", r["figures"]))
}

#[test]
fn smoke_report_has_every_section_and_compare_works() {
    let dir = tmp("smoke");
    let out = dir.join("a");
    let t = std::time::Instant::now();
    let o = bench(&["--smoke", "--out", s(&out), "--work", s(&dir.join("work"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "yolo-bench --smoke failed:\n{err}");
    println!("smoke run: {:.1} s", t.elapsed().as_secs_f64());

    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["schema"], "yolo-bench/1");
    assert_eq!(r["mode"], "smoke");
    assert!(r["covers"].as_str().unwrap().contains("64"));
    assert!(!r["machine"]["cpu_model"].as_str().unwrap().is_empty());
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
    for flag in ["avx2", "fma", "avx512f", "neon"] {
        assert!(
            r["machine"]["cpu_flags"].get(flag).is_some(),
            "no cpu flag {flag}"
        );
    }
    assert_eq!(r["backend"]["name"], "flex");
    assert!(!r["git_revision"].as_str().unwrap().is_empty());
    assert!(r["versions"]["burn"].as_str().unwrap().starts_with("0."));
    assert!(r["gpu_memory"].as_str().unwrap().starts_with("n/a"));

    for id in [
        "inference.latency/n/64/b1",
        "inference.latency/n/64/b2",
        "inference.throughput/n/64/b2",
        "postprocess.decode/n/64",
        "postprocess.nms/predict",
        "postprocess.nms/val",
        "preprocess.letterbox/640",
        "preprocess.transform/64/one-thread",
        "preprocess.transform/64/batch",
        "training.step/n/64/b2",
        "training.epoch/n/64/b2",
        "memory.peak_rss/inference",
        "memory.peak_rss/training",
    ] {
        figure(&r, id);
    }
    for f in r["figures"].as_array().unwrap() {
        let st = &f["ours"];
        let (med, min, max) = (
            st["median"].as_f64().unwrap(),
            st["min"].as_f64().unwrap(),
            st["max"].as_f64().unwrap(),
        );
        assert!(
            min > 0.0 && min <= med && med <= max && max.is_finite(),
            "{}: {st}",
            f["id"]
        );
        assert!(st["n"].as_u64().unwrap() >= 1);
        assert!(!f["name"].as_str().unwrap().is_empty() && !f["unit"].as_str().unwrap().is_empty());
    }
    // Sane magnitudes: a 64 px forward well under a minute, batch 2 gives more images/s than
    // its latency implies for one, peak RSS between 10 MiB and 100 GiB.
    let lat = figure(&r, "inference.latency/n/64/b2")["ours"]["median"]
        .as_f64()
        .unwrap();
    assert!(lat < 60_000.0);
    let thr = figure(&r, "inference.throughput/n/64/b2")["ours"]["median"]
        .as_f64()
        .unwrap();
    assert!(
        (thr - 2000.0 / lat).abs() / thr < 1e-6,
        "throughput {thr} vs latency {lat}"
    );
    let rss = figure(&r, "memory.peak_rss/inference")["ours"]["median"]
        .as_f64()
        .unwrap();
    assert!((10.0..100_000.0).contains(&rss), "{rss} MiB");
    // The NMS keeps some of the synthetic objects at predict thresholds, more at val's.
    let kept = |id| figure(&r, id)["extra"]["kept"].as_f64().unwrap();
    assert!(kept("postprocess.nms/predict") >= 1.0);
    assert!(kept("postprocess.nms/val") >= kept("postprocess.nms/predict"));
    let targets = r["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 3);
    let nms = targets
        .iter()
        .find(|t| t["name"].as_str().unwrap().starts_with("NMS"))
        .unwrap();
    assert!(nms["status"] == "met" || nms["status"] == "not met");

    let served = r["figures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["id"] == "serving.rps/c8");
    if served {
        assert!(
            figure(&r, "serving.latency/c8")["extra"]["p99"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        figure(&r, "memory.peak_rss/serve");
    } else {
        let notes = r["notes"].to_string();
        assert!(
            notes.contains("serving skipped"),
            "no serving figures and no note: {notes}"
        );
        println!("serving not measured here (no yolo-infer next to yolo-bench)");
    }

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for want in [
        "# yolo-bench report",
        "## Targets",
        "## Inference",
        "NMS at predict",
        "latency.png",
    ] {
        assert!(md.contains(want), "report.md has no {want:?}:\n{md}");
    }
    let png = std::fs::read(out.join("latency.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 3, "temporary files left: {leftovers:?}");

    // --compare: an "old" report whose batch-1 latency was twice ours and whose NMS figure
    // was not there.
    let mut old = r.clone();
    for f in old["figures"].as_array_mut().unwrap() {
        if f["id"] == "inference.latency/n/64/b1" {
            let m = f["ours"]["median"].as_f64().unwrap();
            f["ours"]["median"] = Value::from(2.0 * m);
        }
    }
    old["figures"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["id"] != "postprocess.nms/val");
    let old_path = dir.join("old.json");
    std::fs::write(&old_path, old.to_string()).unwrap();
    let cmp = dir.join("c");
    let o = bench(&[
        "--from",
        s(&out.join("report.json")),
        "--compare",
        s(&old_path),
        "--out",
        s(&cmp),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(cmp.join("report.json")).unwrap()).unwrap();
    let rows = c["comparison"]["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|x| x["id"] == "inference.latency/n/64/b1")
        .unwrap();
    assert!((row["ratio"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{row}");
    assert_eq!(row["verdict"], "better");
    let same = rows
        .iter()
        .find(|x| x["id"] == "postprocess.nms/predict")
        .unwrap();
    assert_eq!(same["verdict"], "same");
    assert_eq!(
        c["comparison"]["only_new"],
        serde_json::json!(["postprocess.nms/val"])
    );
    let md = std::fs::read_to_string(cmp.join("report.md")).unwrap();
    assert!(
        md.contains("## Change against") && md.contains("0.50x | better"),
        "{md}"
    );

    // Bad reports: the error names the file and the field.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"figures": []}"#).unwrap();
    let o = bench(&[
        "--from",
        s(&out.join("report.json")),
        "--compare",
        s(&bad),
        "--out",
        s(&cmp),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(e.contains("bad.json") && e.contains("schema"), "{e}");
    let mut broken = r.clone();
    broken["figures"][0]["ours"]["median"] = Value::from("fast");
    std::fs::write(&bad, broken.to_string()).unwrap();
    let o = bench(&["--from", s(&bad), "--out", s(&cmp)]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(e.contains("bad.json") && e.contains("median"), "{e}");
    let o = bench(&["--smoke", "--skip", "everything", "--out", s(&cmp)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--skip everything"));

    let _ = std::fs::remove_dir_all(&dir);
}

/// `--half` on the CPU backend: ignored with a note (f16 is emulated there), the report says
/// the inference ran in f32 and its figures keep the f32 ids, which `--compare` matches.
#[test]
fn half_on_flex_is_noted_and_runs_f32() {
    let dir = tmp("half");
    let out = dir.join("report");
    let o = bench(&[
        "--smoke", "--half", "--skip", "postprocess,preprocess,training,serving",
        "--out", s(&out), "--work", s(&dir.join("work")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "yolo-bench --smoke --half failed:\n{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["backend"]["name"], "flex");
    assert_eq!(r["backend"]["precision"], "f32");
    let notes = r["notes"].to_string();
    assert!(notes.contains("--half ignored") && notes.contains("flex"), "{notes}");
    let ids: Vec<&str> = r["figures"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert!(ids.iter().any(|i| i.starts_with("inference.latency/")), "{ids:?}");
    assert!(ids.iter().all(|i| !i.ends_with("/f16")), "{ids:?}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("inference in f32"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! The exported graphs against the native model: Python's `onnx` checker and onnxruntime
//! (through `tests/ort_run.py`, skipped with a message where no such Python is found unless
//! `YOLO_RS_REQUIRE_PYTHON=1`), and the written protobuf decoded back in Rust.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use prost::Message;
use yolo_core::nms::{non_max_suppression, Detection, NmsConfig};
use yolo_core::YoloV8;
use yolo_export::proto::ModelProto;
use yolo_export::{export_model, ExportOptions, NmsOptions, MAX_OPSET, MIN_OPSET};

/// Bounds of onnxruntime's f32 output against the native `predict` (unfused and fused
/// model). Both compute the same f32 arithmetic in different summation orders (GEMM blocking,
/// the folded BatchNorm, exp implementations): an error that grows through ~60 layers as a
/// few ulps per layer. Box coordinates are compared relative to their magnitude (at least 1
/// px; they reach ~500 px with the fixture's random weights, where an f32 ulp is 3e-5), class
/// scores absolute (they are ~0.004 with this fixture). yolo-core's parity bounds against
/// PyTorch (1e-5 relative, 1e-7 absolute) are of the same kind; measured here: see
/// `ort_matches_native_predict`'s printout.
const BOX_REL: f32 = 1e-5;
const SCORE_ABS: f32 = 5e-7;

/// `--half` against the native f32 model: f16 has an 11-bit significand (ulp 2^-10 ≈ 9.8e-4
/// relative), and the error accumulates through the layers. Boxes: the largest error relative
/// to the largest coordinate of the output (box errors scale with the image, not with each
/// value); scores: relative to each score, plus one f16 ulp at the scores' magnitude.
const F16_BOX_REL_MAX: f32 = 4e-3;
const F16_SCORE_REL: f32 = 2e-2;

fn names() -> Vec<String> {
    ["red", "green", "blue"].map(String::from).to_vec()
}

fn write(dir: &std::path::Path, name: &str, model: &YoloV8, opts: &ExportOptions) -> PathBuf {
    let e = export_model(model, &names(), "test model", opts).unwrap();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, &e.bytes).unwrap();
    path
}

fn anchors(h: usize, w: usize) -> usize {
    [8, 16, 32].iter().map(|s| (h / s) * (w / s)).sum()
}

#[test]
fn ort_matches_native_predict() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = fixture_model();
    let fused = model.clone().fuse();
    let stat = |h, w, b, opset| ExportOptions {
        batch: b,
        opset,
        ..ExportOptions::new([h, w])
    };
    let dynamic = ExportOptions {
        dynamic: true,
        ..ExportOptions::new([64, 64])
    };
    // (name, options, inputs [b, 3, h, w])
    let cases: Vec<(&str, ExportOptions, Vec<[usize; 4]>)> = vec![
        ("s64", stat(64, 64, 1, 17), vec![[1, 3, 64, 64]]),
        ("s128", stat(128, 128, 1, 17), vec![[1, 3, 128, 128]]),
        ("ns64x96", stat(64, 96, 1, 17), vec![[1, 3, 64, 96]]),
        ("b2_96x64", stat(96, 64, 2, 17), vec![[2, 3, 96, 64]]),
        ("opset_min", stat(64, 64, 1, MIN_OPSET), vec![[1, 3, 64, 64]]),
        ("opset_max", stat(64, 96, 1, MAX_OPSET), vec![[1, 3, 64, 96]]),
        ("dynamic", dynamic, vec![[2, 3, 96, 64], [1, 3, 64, 64], [2, 3, 128, 96]]),
    ];
    let mut runs = Vec::new();
    let mut seed = 0;
    for (name, opts, shapes) in &cases {
        let inputs = shapes
            .iter()
            .map(|&s| {
                seed += 1;
                OrtInput { data: input(seed, s.iter().product()), shape: s, f16: false }
            })
            .collect();
        runs.push(OrtRun { model: write(dir.path(), name, &model, opts), inputs });
    }
    let results = run_ort(&py, dir.path(), &runs);
    let (mut worst_box, mut worst_score) = (0f32, 0f32);
    for ((name, opts, _), (run, res)) in cases.iter().zip(runs.iter().zip(&results)) {
        assert_eq!(res.info["opset"], opts.opset, "{name}");
        for (inp, (shape, got)) in run.inputs.iter().zip(&res.outputs) {
            let [b, _, h, w] = inp.shape;
            let a = anchors(h, w);
            assert_eq!(shape, &vec![b, 7, a], "{name} {:?}", inp.shape);
            for (which, m) in [("unfused", &model), ("fused", &fused)] {
                let want = predict(m, &inp.data, inp.shape);
                let (eb, es) = output_errors(got, &want, 7, a);
                println!("{name} {:?} vs {which} predict: boxes {eb:.2e} rel, scores {es:.2e} abs", inp.shape);
                assert!(eb <= BOX_REL && es <= SCORE_ABS, "{name} {:?} vs {which}: boxes {eb:e}, scores {es:e}", inp.shape);
                worst_box = worst_box.max(eb);
                worst_score = worst_score.max(es);
            }
        }
    }
    println!("worst: boxes {worst_box:.2e} rel (bound {BOX_REL:e}), scores {worst_score:.2e} abs (bound {SCORE_ABS:e})");
}

#[test]
fn half_within_f16_bounds() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = fixture_model();
    let half = ExportOptions { half: true, ..ExportOptions::new([64, 96]) };
    let half_io32 = ExportOptions {
        half: true,
        fp32_io: true,
        dynamic: true,
        ..ExportOptions::new([64, 64])
    };
    let runs = vec![
        OrtRun {
            model: write(dir.path(), "half", &model, &half),
            inputs: vec![OrtInput { data: input(11, 3 * 64 * 96), shape: [1, 3, 64, 96], f16: true }],
        },
        OrtRun {
            model: write(dir.path(), "half_io32", &model, &half_io32),
            inputs: vec![OrtInput { data: input(12, 2 * 3 * 96 * 64), shape: [2, 3, 96, 64], f16: false }],
        },
    ];
    let results = run_ort(&py, dir.path(), &runs);
    assert_eq!(results[0].info["input_types"][0], "tensor(float16)");
    assert_eq!(results[1].info["input_types"][0], "tensor(float)");
    for (run, res) in runs.iter().zip(&results) {
        let inp = &run.inputs[0];
        // The native model sees the same values the f16 input holds.
        let x: Vec<f32> = if inp.f16 {
            inp.data.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect()
        } else {
            inp.data.clone()
        };
        let want = predict(&model, &x, inp.shape);
        let got = &res.outputs[0].1;
        let [_, _, h, w] = inp.shape;
        let a = anchors(h, w);
        let (mut box_err, mut box_max, mut score_err) = (0f32, 0f32, 0f32);
        for (i, (g, wv)) in got.iter().zip(&want).enumerate() {
            assert!(g.is_finite());
            if (i / a) % 7 < 4 {
                box_err = box_err.max((g - wv).abs());
                box_max = box_max.max(wv.abs());
            } else {
                // relative to the score, past one f16 ulp at its magnitude
                let ulp = half::f16::from_f32(*wv).to_f32().abs() * 9.8e-4;
                score_err = score_err.max(((g - wv).abs() - ulp).max(0.0) / wv.abs());
            }
        }
        let box_rel = box_err / box_max;
        println!(
            "{}: boxes max error {box_err:.3} px of {box_max:.1} px ({box_rel:.2e}), scores {score_err:.2e} rel",
            run.model.display()
        );
        assert!(box_rel <= F16_BOX_REL_MAX, "boxes {box_rel:e}");
        assert!(score_err <= F16_SCORE_REL, "scores {score_err:e}");
    }
}

/// Detections of image `img` from a `[B, max_det, 6]` NMS output: rows up to the first zero row.
fn ort_detections(out: &[f32], img: usize, max_det: usize) -> Vec<Detection> {
    let rows = &out[img * max_det * 6..(img + 1) * max_det * 6];
    let mut v = Vec::new();
    let mut ended = false;
    for r in rows.chunks_exact(6) {
        if r[4] > 0.0 {
            assert!(!ended, "a detection after a padding row");
            v.push(Detection { xyxy: [r[0], r[1], r[2], r[3]], conf: r[4], class: r[5] as usize });
        } else {
            assert!(r.iter().all(|&x| x == 0.0), "padding row not zero: {r:?}");
            ended = true;
        }
    }
    v
}

fn assert_same_detections(got: &[Detection], want: &[Detection], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {} detections, want {}:\n{got:?}\n{want:?}", got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.class, w.class, "{what} #{i}");
        assert!((g.conf - w.conf).abs() <= SCORE_ABS, "{what} #{i}: score {} vs {}", g.conf, w.conf);
        for k in 0..4 {
            let d = (g.xyxy[k] - w.xyxy[k]).abs() / w.xyxy[k].abs().max(1.0);
            assert!(d <= BOX_REL, "{what} #{i}: box {:?} vs {:?}", g.xyxy, w.xyxy);
        }
    }
}

/// [`assert_same_detections`] up to order: scores within rounding noise of each other may swap.
fn assert_same_detection_set(got: &[Detection], want: &[Detection], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {} detections, want {}:\n{got:?}\n{want:?}", got.len(), want.len());
    let close = |g: &Detection, w: &Detection| {
        g.class == w.class
            && (g.conf - w.conf).abs() <= SCORE_ABS
            && (0..4).all(|k| (g.xyxy[k] - w.xyxy[k]).abs() / w.xyxy[k].abs().max(1.0) <= BOX_REL)
    };
    let mut used = vec![false; got.len()];
    for w in want {
        let i = (0..got.len()).find(|&i| !used[i] && close(&got[i], w));
        let i = i.unwrap_or_else(|| panic!("{what}: no match for {w:?} in {got:?}"));
        used[i] = true;
    }
}

#[test]
fn nms_matches_yolo_core_nms() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = fixture_model();
    // Random weights score every class near 0.004, with many near-equal scores in flat
    // regions. A threshold at the median best score keeps half the anchors as candidates, so
    // suppression has plenty to do; a threshold in the widest gap of the top scores keeps
    // well-separated scores only, where the native prediction (rounded differently) must give the same
    // detections too.
    let probe = predict(&model, &input(20, 2 * 3 * 128 * 128), [2, 3, 128, 128]);
    let a = anchors(128, 128);
    let mut best: Vec<f32> = (0..2 * a)
        .map(|i| {
            let (img, j) = (i / a, i % a);
            (0..3).map(|c| probe[(img * 7 + 4 + c) * a + j]).fold(f32::MIN, f32::max)
        })
        .collect();
    best.sort_by(f32::total_cmp);
    let median = best[best.len() / 2];
    // In the widest relative gap between two scores of the top 10% that leaves at least 20
    // candidates, so that no score is within rounding noise of the threshold.
    let top = &best[best.len() * 90 / 100..best.len() - 20];
    let rel_gap = |i: usize| (top[i + 1] - top[i]) / top[i + 1];
    let gap = (0..top.len() - 1).max_by(|&i, &j| rel_gap(i).total_cmp(&rel_gap(j))).unwrap();
    let high = (top[gap] + top[gap + 1]) / 2.0;
    let nms = |conf, max_det, agnostic| Some(NmsOptions { conf, iou: 0.5, max_det, agnostic });
    // The fixture's boxes are large and overlap: a high IoU threshold keeps more of them.
    let nms_hi = |conf, agnostic| Some(NmsOptions { conf, iou: 0.9, max_det: 300, agnostic });
    let s128 = |b| ExportOptions { batch: b, ..ExportOptions::new([128, 128]) };
    // (name, options, inputs, also compare with the native prediction)
    let cases = vec![
        ("nms_class", ExportOptions { nms: nms(median, 300, false), ..s128(2) }, vec![[2, 3, 128, 128]], false),
        ("nms_maxdet", ExportOptions { nms: nms(median, 7, false), ..s128(2) }, vec![[2, 3, 128, 128]], false),
        ("nms_agnostic", ExportOptions { nms: nms(median, 300, true), ..s128(2) }, vec![[2, 3, 128, 128]], false),
        ("nms_native", ExportOptions { nms: nms_hi(high, false), ..s128(2) }, vec![[2, 3, 128, 128]], true),
        ("nms_native_agnostic", ExportOptions { nms: nms_hi(high, true), ..s128(2) }, vec![[2, 3, 128, 128]], true),
        // 84 anchors at 64x64 < 300 rows: the padded path.
        ("nms_small", ExportOptions { nms: nms(median, 300, false), ..ExportOptions::new([64, 64]) }, vec![[1, 3, 64, 64]], false),
        (
            "nms_dynamic",
            ExportOptions { dynamic: true, nms: nms(median, 100, false), ..ExportOptions::new([64, 64]) },
            vec![[2, 3, 128, 128], [1, 3, 64, 96]],
            false,
        ),
        (
            "nms_half",
            ExportOptions { half: true, fp32_io: true, nms: nms(median, 300, false), ..s128(2) },
            vec![[2, 3, 128, 128]],
            false,
        ),
    ];
    // Each NMS graph and its twin without NMS: yolo-core's NMS on the twin's output (the same
    // prediction, bit for bit) must give exactly the graph's detections.
    let mut runs = Vec::new();
    for (name, opts, shapes, _) in &cases {
        let inputs = || {
            shapes
                .iter()
                .enumerate()
                .map(|(i, &s)| OrtInput { data: input(20 + i as u64, s.iter().product()), shape: s, f16: false })
                .collect::<Vec<_>>()
        };
        runs.push(OrtRun { model: write(dir.path(), name, &model, opts), inputs: inputs() });
        let twin = ExportOptions { nms: None, ..opts.clone() };
        runs.push(OrtRun { model: write(dir.path(), &format!("{name}_raw"), &model, &twin), inputs: inputs() });
    }
    let results = run_ort(&py, dir.path(), &runs);
    let (mut exact, mut vs_native) = (0, 0);
    for (c, (name, opts, _, native)) in cases.iter().enumerate() {
        let o = opts.nms.as_ref().unwrap();
        let cfg = NmsConfig {
            conf: o.conf,
            iou: o.iou,
            max_det: o.max_det,
            agnostic: o.agnostic,
            ..NmsConfig::predict()
        };
        let (run, res, raw) = (&runs[2 * c], &results[2 * c], &results[2 * c + 1]);
        for (i, (inp, (shape, got))) in run.inputs.iter().zip(&res.outputs).enumerate() {
            let [b, _, h, w] = inp.shape;
            assert_eq!(shape, &vec![b, o.max_det, 6], "{name}");
            let a = anchors(h, w);
            let slice = |p: &[f32], img: usize| p[img * 7 * a..(img + 1) * 7 * a].to_vec();
            let native_pred = native.then(|| predict(&model, &inp.data, inp.shape));
            for img in 0..b {
                let ours = ort_detections(got, img, o.max_det);
                let want = non_max_suppression(&slice(&raw.outputs[i].1, img), 3, &cfg);
                println!("{name} {:?} image {img}: {} detections", inp.shape, ours.len());
                assert!(!want.is_empty(), "{name}: the test needs detections");
                if o.max_det < 20 {
                    assert_eq!(ours.len(), o.max_det, "{name}: max_det cut");
                }
                assert_eq!(ours, want, "{name} {:?} image {img}: against yolo-core's NMS on the same prediction", inp.shape);
                exact += ours.len();
                if let Some(p) = &native_pred {
                    let want = non_max_suppression(&slice(p, img), 3, &cfg);
                    assert_same_detection_set(&ours, &want, &format!("{name} {:?} image {img} vs native", inp.shape));
                    vs_native += ours.len();
                }
            }
        }
    }
    println!("{exact} detections equal to yolo-core's NMS, {vs_native} also to the native model's");
    assert!(exact > 100 && vs_native > 10, "too few detections compared: {exact}, {vs_native}");
}

#[test]
fn checker_passes_every_option_combination() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = fixture_model();
    let mut combos = Vec::new();
    for dynamic in [false, true] {
        for (half, fp32_io) in [(false, false), (true, false), (true, true)] {
            for nms in [None, Some(false), Some(true)] {
                for opset in [MIN_OPSET, 17, MAX_OPSET] {
                    // every opset for the plainest and the fullest graphs, 17 for the rest
                    let edge = (!dynamic && !half && nms.is_none()) || (dynamic && fp32_io && nms == Some(false));
                    if opset != 17 && !edge {
                        continue;
                    }
                    combos.push(ExportOptions {
                        dynamic,
                        half,
                        fp32_io,
                        batch: 2,
                        opset,
                        nms: nms.map(|agnostic| NmsOptions { conf: 0.001, agnostic, ..NmsOptions::default() }),
                        ..ExportOptions::new([64, 96])
                    });
                }
            }
        }
    }
    let runs: Vec<OrtRun> = combos
        .iter()
        .enumerate()
        .map(|(i, o)| OrtRun {
            model: write(dir.path(), &format!("combo{i}"), &model, o),
            inputs: vec![OrtInput {
                data: input(30, 2 * 3 * 64 * 96),
                shape: [2, 3, 64, 96],
                f16: o.half && !o.fp32_io,
            }],
        })
        .collect();
    let results = run_ort(&py, dir.path(), &runs);
    for (o, r) in combos.iter().zip(&results) {
        let i = &r.info;
        assert_eq!(i["inputs"], serde_json::json!(["images"]), "{o:?}");
        assert_eq!(i["outputs"], serde_json::json!(["output0"]), "{o:?}");
        let io = if o.half && !o.fp32_io { "tensor(float16)" } else { "tensor(float)" };
        assert_eq!(i["input_types"][0], io, "{o:?}");
        let want_in = if o.dynamic {
            serde_json::json!(["batch", 3, "height", "width"])
        } else {
            serde_json::json!([2, 3, 64, 96])
        };
        assert_eq!(i["input_shapes"][0], want_in, "{o:?}");
        let want_shape = match &o.nms {
            Some(n) => vec![2, n.max_det, 6],
            None => vec![2, 7, anchors(64, 96)],
        };
        assert_eq!(r.outputs[0].0, want_shape, "{o:?}");
        // What Ultralytics' AutoBackend reads.
        let m = &i["metadata"];
        assert_eq!(m["names"], serde_json::json!({"0": "red", "1": "green", "2": "blue"}));
        assert_eq!(m["stride"], 32);
        assert_eq!(m["task"], "detect");
        assert_eq!(m["batch"], 2);
        assert_eq!(m["imgsz"], serde_json::json!([64, 96]));
        assert_eq!(m["args"]["nms"], o.nms.is_some());
        assert_eq!(m["args"]["dynamic"], o.dynamic);
        assert_eq!(m["args"]["half"], o.half);
        assert_eq!(m["args"]["opset"], o.opset);
        // Static graphs compute no shapes.
        let ops: Vec<&str> = i["ops"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        if !o.dynamic {
            for op in ["Shape", "Range", "Expand", "ConstantOfShape"] {
                assert!(!ops.contains(&op), "{op} in a static graph: {o:?}");
            }
        }
    }
    println!("{} option combinations checked", combos.len());
}

/// The written protobuf decoded back (no Python needed).
#[test]
fn written_proto_decodes() {
    let (model, _) = fixture_model();
    let opts = ExportOptions { batch: 3, ..ExportOptions::new([64, 96]) };
    let e = export_model(&model, &names(), "d", &opts).unwrap();
    let m = ModelProto::decode(e.bytes.as_slice()).unwrap();
    assert_eq!(m.opset_import[0].version, 17);
    assert_eq!(m.ir_version, 8);
    let g = m.graph.unwrap();
    assert_eq!(g.input[0].name, "images");
    assert_eq!(g.output[0].name, "output0");
    assert_eq!(g.node.last().unwrap().output[0], "output0");
    // 64 Conv blocks with BatchNorm folded + 6 head output convs; no BatchNorm node.
    let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(count("BatchNormalization"), 0);
    assert_eq!(count("Conv"), g.initializer.iter().filter(|t| t.name.ends_with(".weight") && t.dims.len() == 4).count());
    assert_eq!(count("Shape"), 0);
    let anchors_init = g.initializer.iter().find(|t| t.name == "model.22.anchors").unwrap();
    assert_eq!(anchors_init.dims, vec![1, 2, anchors(64, 96) as i64]);
    // Every node input is a graph input, an initializer, an earlier output or empty.
    let mut known: std::collections::HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    known.insert("images".into());
    known.insert(String::new());
    for n in &g.node {
        for i in &n.input {
            assert!(known.contains(i), "{} reads undefined {i}", n.name);
        }
        known.extend(n.output.iter().cloned());
    }
    let meta: std::collections::HashMap<_, _> = m.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    assert_eq!(meta["names"], "{0: 'red', 1: 'green', 2: 'blue'}");
    assert_eq!(meta["imgsz"], "[64, 96]");
    assert_eq!(meta["batch"], "3");
    assert_eq!(e.sha256().len(), 64);
}

#[test]
fn invalid_options_are_refused() {
    let (model, _) = fixture_model();
    let bad = [
        ExportOptions::new([100, 64]),
        ExportOptions { batch: 0, ..ExportOptions::new([64, 64]) },
        ExportOptions { opset: MIN_OPSET - 1, ..ExportOptions::new([64, 64]) },
        ExportOptions { opset: MAX_OPSET + 1, ..ExportOptions::new([64, 64]) },
        ExportOptions { fp32_io: true, ..ExportOptions::new([64, 64]) },
        ExportOptions { nms: Some(NmsOptions { conf: 1.5, ..Default::default() }), ..ExportOptions::new([64, 64]) },
        ExportOptions { nms: Some(NmsOptions { iou: 0.0, ..Default::default() }), ..ExportOptions::new([64, 64]) },
        ExportOptions { nms: Some(NmsOptions { max_det: 0, ..Default::default() }), ..ExportOptions::new([64, 64]) },
    ];
    for o in bad {
        let err = export_model(&model, &names(), "", &o).unwrap_err();
        assert!(matches!(err, yolo_export::ExportError::Option { .. }), "{o:?}: {err}");
    }
    assert!(export_model(&model, &names()[..2], "", &ExportOptions::new([64, 64])).is_err());
}

#[test]
fn cli_writes_and_fails_clearly() {
    let bin = env!("CARGO_BIN_EXE_yolo-export");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub/m.onnx");
    let o = Command::new(bin)
        .args(["--weights"])
        .arg(fixture_weights())
        .arg("-o")
        .arg(&out)
        .args(["--imgsz", "64", "96", "--dynamic", "--nms", "--max-det", "50"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
    };
    for s in ["opset      17", "images float32 [batch, 3, height, width]", "output0 float32 [batch, 50, 6]", "images:0=batch", &sha, &bytes.len().to_string()] {
        assert!(stdout.contains(s), "missing {s:?} in:\n{stdout}");
    }
    // No temporary file left beside it.
    assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 1);

    let fails = |args: &[&str], needle: &str| {
        let o = Command::new(bin).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    };
    let missing = dir.path().join("nope.safetensors");
    fails(&["-w", missing.to_str().unwrap(), "--imgsz", "64"], "nope.safetensors");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    fails(&["-w", garbage.to_str().unwrap(), "--imgsz", "64"], "garbage.safetensors");
    let w = fixture_weights();
    let w = w.to_str().unwrap();
    let o = dir.path().join("x.onnx");
    let o = o.to_str().unwrap();
    fails(&["-w", w, "-o", o, "--imgsz", "100"], "multiples of 32");
    fails(&["-w", w, "-o", o, "--fp32-io"], "--half");
    fails(&["-w", w, "-o", o, "--conf", "0.5"], "--nms");
    fails(&["-w", w, "-o", o, "--opset", "12"], "12");
    fails(&["-w", w, "-o", o, "--imgsz", "32768"], "at most 16384");
    assert!(!std::path::Path::new(o).exists());
    // The checkpoint as the output: refused, the checkpoint left as it was.
    let ckpt = dir.path().join("w.safetensors");
    std::fs::copy(w, &ckpt).unwrap();
    let before = std::fs::read(&ckpt).unwrap();
    let c = ckpt.to_str().unwrap();
    fails(&["-w", c, "-o", &format!("{}/./w.safetensors", dir.path().display())], "would replace it");
    assert!(std::fs::read(&ckpt).unwrap() == before);
    // A model config in the metadata no YOLOv8 has: the error names the file and the field.
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut md = header.metadata().clone().unwrap();
    let model = md["model"].replace("\"reg_max\": 16", "\"reg_max\": 1");
    assert_ne!(model, md["model"], "{}", md["model"]);
    md.insert("model".into(), model);
    let odd = dir.path().join("odd.safetensors");
    safetensors::serialize_to_file(st.tensors(), Some(md), &odd).unwrap();
    fails(&["-w", odd.to_str().unwrap(), "--imgsz", "64"], "odd.safetensors: metadata field `model.reg_max`");
}

/// Against Ultralytics 8.4.190's own ONNX export of the same weights, run by onnxruntime on
/// the same input (fixtures from tools/fixtures/make_onnx_fixtures.py, which also checked that
/// Ultralytics' `YOLO("ours.onnx").predict(...)` finds the same boxes as on its own file).
#[test]
fn matches_ultralytics_export() {
    let Some(py) = python() else { return };
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(fx.join("meta.json")).unwrap()).unwrap();
    let bytes = std::fs::read(fx.join("outputs.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| -> (Vec<usize>, Vec<f32>) {
        let v = st.tensor(k).unwrap();
        let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (v.shape().to_vec(), data)
    };
    let imgsz = meta["imgsz"].as_u64().unwrap() as usize;
    let nms = NmsOptions {
        conf: meta["conf"].as_f64().unwrap() as f32,
        iou: meta["iou"].as_f64().unwrap() as f32,
        max_det: meta["max_det"].as_u64().unwrap() as usize,
        agnostic: false,
    };
    let (model, _) = fixture_model();
    let dir = tempfile::tempdir().unwrap();
    let (shape, x) = get("input");
    let shape: [usize; 4] = shape.try_into().unwrap();
    let plain = ExportOptions::new([imgsz, imgsz]);
    let with_nms = ExportOptions { nms: Some(nms.clone()), ..plain.clone() };
    let runs = vec![
        OrtRun { model: write(dir.path(), "plain", &model, &plain), inputs: vec![OrtInput { data: x.clone(), shape, f16: false }] },
        OrtRun { model: write(dir.path(), "nms", &model, &with_nms), inputs: vec![OrtInput { data: x, shape, f16: false }] },
    ];
    let res = run_ort(&py, dir.path(), &runs);

    let (want_shape, want) = get("ultralytics.output0");
    assert_eq!(res[0].outputs[0].0, want_shape);
    let (eb, es) = output_errors(&res[0].outputs[0].1, &want, want_shape[1], want_shape[2]);
    println!("ours vs Ultralytics' export: boxes {eb:.2e} rel, scores {es:.2e} abs");
    assert!(eb <= BOX_REL && es <= SCORE_ABS, "boxes {eb:e}, scores {es:e}");

    let (nms_shape, theirs_nms) = get("ultralytics.nms");
    assert_eq!(res[1].outputs[0].0, nms_shape);
    let ours = ort_detections(&res[1].outputs[0].1, 0, nms.max_det);
    let theirs = ort_detections(&theirs_nms, 0, nms.max_det);
    assert!(!theirs.is_empty());
    assert_same_detections(&ours, &theirs, "nms=True output vs Ultralytics'");

    // Ultralytics' predict on its own file (boxes clipped to the image) against our NMS output.
    let (pshape, p) = get("predict.ultralytics");
    assert_eq!(pshape[0], ours.len());
    let clip = |v: f32| v.clamp(0.0, imgsz as f32);
    for (d, r) in ours.iter().zip(p.chunks_exact(6)) {
        assert_eq!(d.class, r[5] as usize);
        assert!((d.conf - r[4]).abs() <= SCORE_ABS);
        for k in 0..4 {
            assert!((clip(d.xyxy[k]) - r[k]).abs() <= BOX_REL * imgsz as f32, "{:?} vs {r:?}", d.xyxy);
        }
    }
    // What the script saw Ultralytics' predict find on our files.
    for k in ["predict.ours", "predict.ours_nms"] {
        let (s, v) = get(k);
        assert_eq!(s, pshape, "{k}");
        for (a, b) in v.iter().zip(&p) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{k}: {v:?} vs {p:?}");
        }
    }
    // Every metadata key Ultralytics writes, we write.
    let ours_meta = &res[0].info["metadata"];
    for k in meta["ultralytics_metadata_keys"].as_array().unwrap() {
        assert!(ours_meta.get(k.as_str().unwrap()).is_some(), "metadata key {k} missing");
    }
}

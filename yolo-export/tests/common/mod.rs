//! Shared by the export tests: the fixture model, deterministic inputs, the native
//! prediction, and running written files through Python's `onnx` checker and onnxruntime
//! (`tests/ort_run.py`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use yolo_core::burn::tensor::{Tensor, TensorData};
use yolo_core::weights::{self, CheckpointMeta};
use yolo_core::{backend, YoloV8};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The reduced-width nc = 3 model with non-trivial BatchNorm statistics that yolo-core's
/// parity tests use (written by tools/fixtures/make_model_fixtures.py).
pub fn fixture_weights() -> PathBuf {
    workspace().join("yolo-core/tests/fixtures/model/tiny_nc3.safetensors")
}

pub fn fixture_model() -> (YoloV8, CheckpointMeta) {
    weights::load_model(fixture_weights(), &backend::cpu_device()).unwrap()
}

/// Deterministic values in [0, 1) (splitmix64).
pub fn input(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// `model.predict` on `x` `[b, 3, h, w]` on the CPU.
pub fn predict(model: &YoloV8, x: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let t = Tensor::<4>::from_data(TensorData::new(x.to_vec(), shape), &backend::cpu_device());
    model
        .predict(t)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// The Python with `onnx` and `onnxruntime`: `YOLO_RS_PYTHON`, else the workspace's `.venv`.
/// `None` (after printing why) when there is none, unless `YOLO_RS_REQUIRE_PYTHON=1`, which
/// makes that a failure.
pub fn python() -> Option<PathBuf> {
    let required = std::env::var("YOLO_RS_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let candidate = std::env::var_os("YOLO_RS_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(workspace().join(".venv/bin/python")).filter(|p| p.exists()));
    let why = match &candidate {
        None => "no YOLO_RS_PYTHON and no .venv/bin/python in the workspace".to_string(),
        Some(p) => match Command::new(p)
            .args(["-c", "import onnx, onnxruntime"])
            .output()
        {
            Ok(o) if o.status.success() => return candidate,
            Ok(o) => format!(
                "{} cannot import onnx and onnxruntime: {}",
                p.display(),
                String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("")
            ),
            Err(e) => format!("cannot run {}: {e}", p.display()),
        },
    };
    if required {
        panic!("YOLO_RS_REQUIRE_PYTHON=1 but {why}");
    }
    println!("skipped: {why} (set YOLO_RS_PYTHON to a python with onnx and onnxruntime)");
    None
}

/// One input of an [`OrtRun`].
pub struct OrtInput {
    pub data: Vec<f32>,
    pub shape: [usize; 4],
    /// Feed it as f16.
    pub f16: bool,
}

/// A model file and the inputs to run it on.
pub struct OrtRun {
    pub model: PathBuf,
    pub inputs: Vec<OrtInput>,
}

/// What `ort_run.py` reports for one model, with the outputs (as f32).
#[derive(Debug)]
pub struct OrtResult {
    pub info: serde_json::Value,
    pub outputs: Vec<(Vec<usize>, Vec<f32>)>,
}

/// Checks and runs every model in one Python process.
pub fn run_ort(py: &Path, dir: &Path, runs: &[OrtRun]) -> Vec<OrtResult> {
    let mut job_runs = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
        for (i, inp) in run.inputs.iter().enumerate() {
            let path = dir.join(format!("in_{r}_{i}.bin"));
            let bytes: Vec<u8> = if inp.f16 {
                inp.data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect()
            } else {
                inp.data.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            std::fs::write(&path, bytes).unwrap();
            inputs.push(serde_json::json!({
                "path": path, "shape": inp.shape, "dtype": if inp.f16 { "float16" } else { "float32" }
            }));
            outputs.push(dir.join(format!("out_{r}_{i}.bin")));
        }
        job_runs.push(serde_json::json!({"model": run.model, "inputs": inputs, "outputs": outputs}));
    }
    let result = dir.join("result.json");
    let job = dir.join("job.json");
    std::fs::write(
        &job,
        serde_json::to_vec(&serde_json::json!({"result": result, "runs": job_runs})).unwrap(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_run.py");
    let out = Command::new(py).arg(&script).arg(&job).output().unwrap();
    assert!(
        out.status.success(),
        "ort_run.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let infos: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    infos
        .into_iter()
        .enumerate()
        .map(|(r, info)| {
            let outputs = info["runs"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let shape: Vec<usize> = o["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as usize)
                        .collect();
                    let bytes = std::fs::read(dir.join(format!("out_{r}_{i}.bin"))).unwrap();
                    let v = bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    (shape, v)
                })
                .collect();
            OrtResult { info, outputs }
        })
        .collect()
}

/// Largest errors of a `[B, 4 + nc, A]` output against `want`: box rows relative to each
/// value's magnitude (at least 1 pixel), class scores absolute.
pub fn output_errors(got: &[f32], want: &[f32], rows: usize, anchors: usize) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "output sizes differ");
    let (mut boxes, mut scores) = (0f32, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(d.is_finite(), "non-finite output at {i}: got {g}, want {w}");
        if (i / anchors) % rows < 4 {
            boxes = boxes.max(d / w.abs().max(1.0));
        } else {
            scores = scores.max(d);
        }
    }
    (boxes, scores)
}

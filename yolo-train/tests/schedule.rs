//! The real training loop's schedule against Ultralytics 8.4.190's, iteration by iteration:
//! warmup (per-group LR, momentum, the `accumulate` ramp), gradient accumulation up to `nbs`
//! and when the optimizer steps, the cap of `accumulate` by the run's iterations, the
//! per-epoch LR factor (linear and cosine), the optimizer and LR that `auto` picks, the scaled
//! weight decay and `close_mosaic`. Fixtures: tools/fixtures/make_schedule_fixtures.py, which
//! records Ultralytics' trainer after every batch of the same settings.

use std::path::PathBuf;

use serde_json::Value;
use yolo_core::data::shapes::{generate, ShapesConfig};
use yolo_core::{backend, Multiples};
use yolo_train::config::OptimizerKind;
use yolo_train::trainer::{train_traced, StepTrace};
use yolo_train::{Report, TrainConfig};

fn fixtures() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedule/schedule.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-9 + 1e-9 * want.abs(),
        "{what}: yolo-train {got}, Ultralytics {want}"
    );
}

fn run_case(name: &str) {
    let fx = fixtures();
    let case = &fx["cases"][name];
    let s = &case["settings"];
    let dir = tempfile::tempdir().unwrap();
    let data = generate(
        &ShapesConfig {
            train: case["images"].as_u64().unwrap() as usize,
            val: 2,
            imgsz: 64,
            seed: 0,
            clutter: 0,
        },
        &dir.path().join("data"),
    )
    .unwrap();
    let cfg = TrainConfig {
        data: data.data_yaml,
        multiples: Some(Multiples {
            depth: 0.33,
            width: 0.0625,
            max_channels: 1024,
        }),
        epochs: s["epochs"].as_u64().unwrap() as usize,
        batch: s["batch"].as_u64().unwrap() as usize,
        nbs: s["nbs"].as_u64().unwrap() as usize,
        imgsz: s["imgsz"].as_u64().unwrap() as usize,
        optimizer: match s["optimizer"].as_str().unwrap() {
            "SGD" => OptimizerKind::Sgd,
            "auto" => OptimizerKind::Auto,
            o => panic!("optimizer {o}"),
        },
        lr0: f(&s["lr0"]),
        lrf: f(&s["lrf"]),
        momentum: f(&s["momentum"]),
        weight_decay: f(&s["weight_decay"]),
        warmup_epochs: f(&s["warmup_epochs"]),
        warmup_momentum: f(&s["warmup_momentum"]),
        warmup_bias_lr: f(&s["warmup_bias_lr"]),
        cos_lr: s["cos_lr"].as_bool().unwrap(),
        close_mosaic: s["close_mosaic"].as_u64().unwrap() as usize,
        val: false,
        project: dir.path().join("runs"),
        name: name.into(),
        ..TrainConfig::default()
    };
    let mut trace: Vec<StepTrace> = Vec::new();
    let device = backend::cpu_device();
    train_traced(&cfg, &device, Report::Quiet, |_| std::ops::ControlFlow::Continue(()), |t| {
        trace.push(t.clone())
    })
    .unwrap();
    let want = case["steps"].as_array().unwrap();
    assert_eq!(trace.len(), want.len(), "{name}: iterations");
    for (got, w) in trace.iter().zip(want) {
        let at = format!("{name} epoch {} ni {}", got.epoch, got.ni);
        assert_eq!(got.epoch as u64, w["epoch"].as_u64().unwrap(), "{at}: epoch");
        assert_eq!(got.ni as u64, w["ni"].as_u64().unwrap(), "{at}: ni");
        assert_eq!(got.accumulate as u64, w["accumulate"].as_u64().unwrap(), "{at}: accumulate");
        assert_eq!(got.ema_updates, w["ema_updates"].as_u64().unwrap(), "{at}: optimizer steps so far");
        assert_eq!(got.mosaic, w["mosaic"].as_bool().unwrap(), "{at}: mosaic");
        for g in 0..3 {
            close(&format!("{at}: lr of group {g}"), got.lr[g], f(&w["lr"][g]));
        }
        close(&format!("{at}: momentum"), got.momentum, f(&w["momentum"]));
        close(&format!("{at}: weight decay"), got.weight_decay, f(&w["weight_decay"]));
    }
}

/// SGD with momentum warmup, an `accumulate` ramp 1 -> 4, linear LR and mosaic closed for the
/// last 2 of 5 epochs.
#[test]
fn sgd_schedule_matches_ultralytics() {
    run_case("sgd");
}

/// `auto` (AdamW, its lr0 and a bias warmup from 0), nominal accumulate 16, a short last
/// batch, cosine LR.
#[test]
fn auto_cosine_schedule_matches_ultralytics() {
    run_case("auto_cos");
}

/// `accumulate` capped by the run's iterations, warmup leaving the last epoch out.
#[test]
fn capped_accumulate_matches_ultralytics() {
    run_case("capped");
}

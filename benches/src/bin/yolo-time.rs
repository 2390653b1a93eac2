//! Times the forward pass (decode included, output read back) of a checkpoint on the default
//! backend and prints one JSON line; `benches/compare.py` runs it beside onnxruntime and PyTorch.

use clap::Parser;
use yolo_benches::input;
use yolo_core::{backend, weights};

#[derive(Parser)]
struct Args {
    /// Checkpoint (safetensors with metadata).
    #[arg(long)]
    weights: String,
    #[arg(long, default_value_t = 640)]
    imgsz: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Half precision (f16), as `yolo-infer --half` and Ultralytics' `half=True`.
    #[arg(long)]
    half: bool,
    /// Also print every run's time (`times_ms`), for `compare.py`'s interleaved rounds.
    #[arg(long)]
    all: bool,
}

fn main() -> anyhow::Result<()> {
    // As the binaries do (`yolo-train`, `yolo-infer`).
    backend::keep_freed_memory();
    let a = Args::parse();
    let selected = backend::select_device()?;
    let device = selected.device.clone();
    let (model, _) = weights::load_model(&a.weights, &device)?;
    // As Ultralytics' predictor and benchmarks: BatchNorm folded into the convs (and f16 with
    // --half where it applies, as yolo-infer --half).
    let half = yolo_core::amp::use_half(a.half, &selected, |w| eprintln!("warning: {w}"));
    let model = if half { model.half() } else { model.fuse() };
    let x = input(a.batch, a.imgsz, &device);
    let (warmup, times) = yolo_benches::warmup_and_times_ms(a.warmup, a.iters, || {
        let y = model.predict(x.clone()).unwrap();
        let _ = y.into_data();
    });
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let mut line = serde_json::json!({"runtime": "yolo-rs", "device": format!("{device:?}"),
        "imgsz": a.imgsz, "batch": a.batch,
        "precision": if half { "f16" } else { "f32" }, "median_ms": sorted[sorted.len() / 2], "min_ms": sorted[0], "warmup_ms": warmup});
    if a.all {
        line["times_ms"] = serde_json::json!(times);
    }
    println!("{line}");
    Ok(())
}

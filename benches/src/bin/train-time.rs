//! Times the train step ([`yolo_benches::TrainStep`]: forward in train mode, real v8
//! loss, backward, clipping, SGD) on the default backend and prints one JSON line;
//! `benches/train_step_compare.py` runs it beside the same step in PyTorch.

use clap::Parser;
use yolo_benches::TrainStep;
use yolo_core::{backend, Scale};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "n")]
    scale: Scale,
    #[arg(long, default_value_t = 320)]
    imgsz: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Also print every step's time (`times_ms`), for the interleaved rounds.
    #[arg(long)]
    all: bool,
    /// Also print the median wall and process CPU time of each phase (forward, loss,
    /// backward, clip + SGD).
    #[arg(long)]
    phases: bool,
    /// Run each step from the main thread instead of on rayon's pool (`backend::on_cpu_pool`,
    /// where the trainer runs its steps): every parallel region is then handed over to the
    /// pool, for A/B runs.
    #[arg(long)]
    off_pool: bool,
    /// The step with mixed precision, as `yolo-train --amp` (f16 autocast, loss scaling).
    #[arg(long)]
    amp: bool,
}

fn main() -> anyhow::Result<()> {
    // As the binaries do (`yolo-train`, `yolo-infer`).
    backend::keep_freed_memory();
    let a = Args::parse();
    let device = backend::select_device()?.device;
    let mut step = TrainStep::new(a.scale, a.batch, a.imgsz, &device);
    if a.amp {
        anyhow::ensure!(
            yolo_core::amp::supported(&device),
            "--amp: {device:?} has no f16 arithmetic"
        );
        step = step.with_amp();
    }
    let mut loss = 0.0;
    let mut phases = Vec::new();
    let (warmup, times) = yolo_benches::warmup_and_times_ms(a.warmup, a.iters, || {
        let (l, wall, cpu) = if a.off_pool { step.step_phases() } else { backend::on_cpu_pool(|| step.step_phases()) };
        loss = l;
        phases.push([wall, cpu]);
    });
    let phases = &phases[a.warmup..];
    anyhow::ensure!(loss.is_finite(), "train step gave a non-finite loss ({loss})");
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let mut line = serde_json::json!({"runtime": "yolo-rs", "device": format!("{device:?}"),
        "imgsz": a.imgsz, "batch": a.batch, "amp": a.amp, "median_ms": sorted[sorted.len() / 2], "min_ms": sorted[0],
        "last_loss": loss, "warmup_ms": warmup});
    if a.all {
        line["times_ms"] = serde_json::json!(times);
    }
    if a.phases {
        let median = |k: usize, i: usize| {
            let mut v: Vec<f64> = phases.iter().map(|p| p[k][i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let names = ["forward", "loss", "backward", "clip_sgd"];
        for (k, key) in ["phases_ms", "phases_cpu_ms"].into_iter().enumerate() {
            line[key] = names.iter().enumerate().map(|(i, n)| (n.to_string(), serde_json::json!(median(k, i)))).collect();
        }
    }
    println!("{line}");
    Ok(())
}

//! Writes a freshly initialised (seeded) YOLOv8 checkpoint of a scale and class count: the
//! model the serving and inference benchmarks load when no trained weights are at hand (speed
//! does not depend on the weights' values, only on the detections they give).

use clap::Parser;
use yolo_core::weights::{save_model, CheckpointMeta};
use yolo_core::{backend, ModelConfig, Scale};

#[derive(Parser)]
struct Args {
    /// n, s, m, l or x.
    #[arg(long, default_value = "n")]
    scale: String,
    #[arg(long, default_value_t = 80)]
    nc: usize,
    #[arg(long, default_value_t = 640)]
    imgsz: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output checkpoint.
    #[arg(long)]
    out: String,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let scale: Scale = a.scale.parse().map_err(anyhow::Error::msg)?;
    let cfg = ModelConfig::new(scale, a.nc);
    let model = cfg.init_seeded(&backend::cpu_device(), a.seed)?;
    let meta = CheckpointMeta {
        model: cfg,
        names: (0..a.nc).map(|i| format!("class{i}")).collect(),
        imgsz: a.imgsz,
        extra: Default::default(),
    };
    save_model(&model, &meta, &a.out)?;
    println!("wrote {} (yolov8{}, {} classes)", a.out, a.scale, a.nc);
    Ok(())
}

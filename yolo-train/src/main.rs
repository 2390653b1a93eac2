//! `yolo-train`: train a YOLOv8 detector on a YOLO-format dataset.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use yolo_core::data::shapes::{generate, ShapesConfig};
use yolo_core::{backend, Multiples, Scale};
use yolo_train::{resume, train, OptimizerKind, Report, TrainConfig, TrainSummary};

/// Train a YOLOv8 detector (Ultralytics 8.4.190 training loop and augmentations).
#[derive(Parser, Debug)]
#[command(name = "yolo-train", version, about, long_about = None)]
struct Cli {
    /// data.yaml, or `shapes` for the built-in demo dataset (generated into datasets/shapes).
    #[arg(long, required_unless_present = "resume")]
    data: Option<String>,
    /// Continue the run in this folder (e.g. runs/train/demo) from its last finished epoch,
    /// with its saved settings; every other option is ignored.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    #[arg(long, default_value_t = 640)]
    imgsz: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Model scale: n, s, m, l, x.
    #[arg(long, default_value = "n")]
    scale: String,
    /// Custom width multiple (tiny models); with --depth-multiple overrides --scale.
    #[arg(long)]
    width_multiple: Option<f64>,
    /// Custom depth multiple.
    #[arg(long)]
    depth_multiple: Option<f64>,
    /// Max channels of a custom model.
    #[arg(long, default_value_t = 1024)]
    max_channels: usize,
    /// Start from these weights (safetensors checkpoint with metadata).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// auto, SGD or AdamW.
    #[arg(long, default_value = "auto")]
    optimizer: String,
    #[arg(long)]
    lr0: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Nominal batch size (gradients are accumulated up to it).
    #[arg(long)]
    nbs: Option<usize>,
    #[arg(long)]
    patience: Option<usize>,
    #[arg(long)]
    warmup_epochs: Option<f64>,
    #[arg(long)]
    cos_lr: bool,
    #[arg(long, default_value = "train")]
    name: String,
    #[arg(long, default_value = "runs/train")]
    project: PathBuf,
    /// Reuse an existing run folder.
    #[arg(long)]
    exist_ok: bool,
    /// Skip validation.
    #[arg(long)]
    no_val: bool,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// One JSON object per epoch on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_scale(s: &str) -> Result<Scale> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "n" => Scale::N,
        "s" => Scale::S,
        "m" => Scale::M,
        "l" => Scale::L,
        "x" => Scale::X,
        other => bail!("unknown scale `{other}` (n, s, m, l, x)"),
    })
}

fn shapes_data() -> Result<PathBuf> {
    let root = Path::new("datasets/shapes");
    let yaml = root.join("data.yaml");
    if !yaml.exists() {
        eprintln!("generating the shapes demo dataset into {}", root.display());
        let summary = generate(&ShapesConfig::default(), root)
            .with_context(|| format!("generating {}", root.display()))?;
        return Ok(summary.data_yaml);
    }
    Ok(yaml)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let report = if cli.json {
        Report::Json
    } else if cli.quiet {
        Report::Quiet
    } else {
        Report::Bar
    };
    let device = backend::default_device();
    if let Some(run_dir) = &cli.resume {
        let summary = resume(run_dir, &device, report)
            .with_context(|| format!("resuming {}", run_dir.display()))?;
        print_summary(&cli, &summary);
        return Ok(());
    }
    let data_arg = cli.data.clone().expect("clap requires --data without --resume");
    let data = if data_arg == "shapes" {
        shapes_data()?
    } else {
        PathBuf::from(&data_arg)
    };
    let multiples = match (cli.width_multiple, cli.depth_multiple) {
        (None, None) => None,
        (w, d) => Some(Multiples {
            depth: d.unwrap_or(0.33),
            width: w.unwrap_or(0.25),
            max_channels: cli.max_channels,
        }),
    };
    let defaults = TrainConfig::default();
    let cfg = TrainConfig {
        data: data.clone(),
        scale: parse_scale(&cli.scale)?,
        multiples,
        weights: cli.weights.clone(),
        epochs: cli.epochs,
        batch: cli.batch,
        imgsz: cli.imgsz,
        seed: cli.seed.unwrap_or(defaults.seed),
        optimizer: cli
            .optimizer
            .parse::<OptimizerKind>()
            .map_err(anyhow::Error::msg)?,
        lr0: cli.lr0.unwrap_or(defaults.lr0),
        nbs: cli.nbs.unwrap_or(defaults.nbs),
        patience: cli.patience.unwrap_or(defaults.patience),
        warmup_epochs: cli.warmup_epochs.unwrap_or(defaults.warmup_epochs),
        cos_lr: cli.cos_lr,
        name: cli.name.clone(),
        project: cli.project.clone(),
        exist_ok: cli.exist_ok,
        val: !cli.no_val,
        ..defaults
    };
    let summary = train(&cfg, &device, report)
        .with_context(|| format!("training on {}", data.display()))?;
    print_summary(&cli, &summary);
    Ok(())
}

fn print_summary(cli: &Cli, summary: &TrainSummary) {
    if !cli.quiet || cli.json {
        let last = summary.epochs.last();
        eprintln!(
            "{} epochs done in {:.1}s; results in {}\nbest weights: {} (epoch {}, by {}, fitness {:.5})\nlast weights: {}",
            summary.epochs.len(),
            summary.epochs.iter().map(|e| e.seconds).sum::<f64>(),
            summary.run_dir.display(),
            summary.best.display(),
            summary.best_epoch,
            summary.fitness_from,
            summary.best_fitness,
            summary.last.display(),
        );
        if let Some(e) = last {
            if let Some(m) = e.metrics {
                eprintln!(
                    "final val (EMA, epoch {}): P {:.3} R {:.3} mAP50 {:.3} mAP50-95 {:.3}",
                    e.epoch, m.precision, m.recall, m.map50, m.map50_95
                );
            }
            eprintln!("train images/s (last epoch): {:.1}", e.images_per_s);
        }
    }
}

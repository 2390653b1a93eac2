//! `yolo-infer`: validate (mAP quality gate) YOLOv8 checkpoints; generate the demo data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use yolo_core::data::shapes::{self, ShapesConfig};
use yolo_infer::check_data::{self, CheckDataArgs, DataGate};
use yolo_infer::gate::Gate;
use yolo_infer::val::{self, ValArgs};

#[derive(Parser, Debug)]
#[command(
    name = "yolo-infer",
    version,
    about = "Check datasets, validate YOLOv8 detectors (mAP quality gate) and generate the demo data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Evaluate a checkpoint on a dataset split: per-class table, metrics.json, quality gate.
    ///
    /// Exit codes: 0 evaluated (and the gate, if any, passed); 3 the gate failed;
    /// 1 an error (bad weights, data or arguments); 2 a usage error.
    Val(ValCmd),
    /// Check a dataset before training: every split scanned, every finding printed and saved.
    ///
    /// Exit codes: 0 the data passed; 3 it failed a threshold; 1 an error (unreadable or
    /// malformed data.yaml, a missing split folder); 2 a usage error.
    CheckData(CheckDataCmd),
    /// Write the built-in `shapes` demo dataset (YOLO format with data.yaml).
    Shapes(ShapesCmd),
}

#[derive(Args, Debug)]
struct ValCmd {
    /// Checkpoint (safetensors with metadata; see tools/convert_ultralytics.py).
    #[arg(long)]
    weights: PathBuf,
    /// data.yaml, or `shapes` for the built-in demo data (generated into datasets/shapes).
    #[arg(long)]
    data: String,
    #[arg(long, default_value = "val")]
    split: String,
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// NMS confidence threshold.
    #[arg(long, default_value_t = 0.001)]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.7)]
    iou: f32,
    #[arg(long, default_value_t = 300)]
    max_det: usize,
    /// Square batches instead of Ultralytics' rectangular val batches.
    #[arg(long)]
    no_rect: bool,
    /// Gate: minimum mAP50.
    #[arg(long)]
    min_map50: Option<f64>,
    /// Gate: minimum mAP50-95.
    #[arg(long)]
    min_map50_95: Option<f64>,
    /// Folder for metrics.json (default: runs/val).
    #[arg(long, default_value = "runs/val")]
    out: PathBuf,
    /// Folder for Tekton result files (`map50`, `map50-95`, `passed`).
    #[arg(long)]
    results_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CheckDataCmd {
    /// data.yaml, or `shapes` for the built-in demo data (generated into datasets/shapes).
    #[arg(long)]
    data: String,
    /// Splits to check (repeat or comma-separate; default: every split the yaml gives).
    #[arg(long, value_delimiter = ',', value_parser = ["train", "val", "test"])]
    split: Vec<String>,
    /// Largest allowed fraction of a split's images dropped by a check (0: none may be).
    #[arg(long, default_value_t = 0.0, value_parser = parse_frac)]
    max_skipped_frac: f64,
    /// Images whose header claims more pixels are skipped before decoding.
    #[arg(long, default_value_t = yolo_core::data::image::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Accept images that appear (same bytes) in two splits.
    #[arg(long)]
    allow_leakage: bool,
    /// Accept a split with no label files at all.
    #[arg(long)]
    allow_no_labels: bool,
    /// The JSON report (every finding of every split, and the verdict).
    #[arg(long, default_value = "runs/check-data/data_report.json")]
    report: PathBuf,
    /// Findings printed before "and M more".
    #[arg(long, default_value_t = yolo_core::data::check::PRINT_FINDINGS)]
    max_print: usize,
    /// Folder for Tekton result files (`images`, `skipped`, `passed`).
    #[arg(long)]
    results_dir: Option<PathBuf>,
}

fn parse_frac(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a fraction between 0 and 1")),
    }
}

#[derive(Args, Debug)]
struct ShapesCmd {
    /// Output folder.
    #[arg(long, default_value = "datasets/shapes")]
    out: PathBuf,
    #[arg(long, default_value_t = ShapesConfig::default().train)]
    train: usize,
    #[arg(long, default_value_t = ShapesConfig::default().val)]
    val: usize,
    #[arg(long, default_value_t = ShapesConfig::default().imgsz)]
    imgsz: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    yolo_core::backend::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Val(c) => run_val(c),
        Command::CheckData(c) => run_check_data(c),
        Command::Shapes(c) => run_shapes(c),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_shapes(c: ShapesCmd) -> anyhow::Result<i32> {
    let cfg = ShapesConfig {
        train: c.train,
        val: c.val,
        imgsz: c.imgsz,
        seed: c.seed,
    };
    let s = shapes::generate(&cfg, &c.out)
        .with_context(|| format!("writing the shapes dataset to {}", c.out.display()))?;
    println!(
        "wrote {} train + {} val images to {} ({})",
        s.train_images,
        s.val_images,
        s.root.display(),
        s.data_yaml.display()
    );
    Ok(0)
}

fn run_check_data(c: CheckDataCmd) -> anyhow::Result<i32> {
    let splits = c
        .split
        .iter()
        .map(|s| yolo_infer::val::parse_split(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    check_data::run(&CheckDataArgs {
        data: c.data,
        splits,
        gate: DataGate {
            max_skipped_frac: c.max_skipped_frac,
            allow_leakage: c.allow_leakage,
            allow_no_labels: c.allow_no_labels,
        },
        max_pixels: c.max_pixels,
        report: c.report,
        max_print: c.max_print,
        results_dir: c.results_dir,
    })
}

fn run_val(c: ValCmd) -> anyhow::Result<i32> {
    let args = ValArgs {
        weights: c.weights,
        data: c.data,
        split: c.split,
        cfg: yolo_core::val::ValConfig {
            imgsz: c.imgsz,
            batch: c.batch,
            conf: c.conf,
            iou: c.iou,
            max_det: c.max_det,
            rect: !c.no_rect,
        },
        out: c.out,
    };
    let report = val::run(&args)?;
    print!("{}", val::table(&report));
    let outcome = Gate {
        min_map50: c.min_map50,
        min_map50_95: c.min_map50_95,
    }
    .check(report.map50, report.map50_95);
    if let Some(dir) = &c.results_dir {
        outcome
            .write_results(dir)
            .with_context(|| format!("writing Tekton results to {}", dir.display()))?;
    }
    if outcome.passed {
        if c.min_map50.is_some() || c.min_map50_95.is_some() {
            println!("quality gate passed");
        }
    } else {
        for f in &outcome.failures {
            eprintln!("quality gate FAILED: {f}");
        }
    }
    Ok(outcome.exit_code())
}

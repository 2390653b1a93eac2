//! `yolo-infer`: validate (mAP quality gate) YOLOv8 checkpoints; generate the demo data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use yolo_core::data::shapes::{self, ShapesConfig};
use yolo_infer::check_data::{self, CheckDataArgs, DataGate};
use yolo_infer::detector::DetectOptions;
use yolo_infer::gate::Gate;
use yolo_infer::predict::{self, Format, PredictArgs};
use yolo_infer::serve::{self, ServeConfig};
use yolo_infer::val::{self, ValArgs};

#[derive(Parser, Debug)]
#[command(
    name = "yolo-infer",
    version,
    about = "Check datasets, validate (mAP quality gate), predict with and serve YOLOv8 detectors",
    after_help = "Environment: YOLO_RS_PARSE_ONLY=1 exits 0 as soon as the command line parses (CI checks \
                  the command lines of tekton/ against this CLI); usage errors still exit 2."
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
    /// Detect objects in images: a file, a folder, a glob or a .txt list.
    ///
    /// Outputs go to runs/predict/<name> (json/<stem>.json per image; --save-txt, --save and
    /// --save-coco add YOLO txt rows, annotated images and COCO results). Exit codes: 0 done
    /// (unreadable images are reported and skipped); 1 an error; 2 a usage error.
    Predict(PredictCmd),
    /// Serve detections over HTTP: POST /v1/detect, GET /healthz, /readyz, /metrics.
    ///
    /// Stops on SIGTERM or Ctrl-C after the requests in flight are answered.
    Serve(ServeCmd),
    /// Write the built-in `shapes` demo dataset (YOLO format with data.yaml).
    Shapes(ShapesCmd),
}

/// `--device`, shared by the commands that run the model.
#[derive(Args, Debug)]
struct DeviceArg {
    /// Backend to run on: cuda, wgpu, flex (= cpu), as BURN_DEVICE; empty (the default):
    /// BURN_DEVICE if set, else the GPU when the machine has one and the CPU otherwise. A
    /// named backend the build lacks or the machine has no device for is an error.
    #[arg(long, value_name = "BACKEND")]
    device: Option<String>,
    /// Half precision (f16) inference on a GPU backend, as Ultralytics' half=True (mAP within
    /// 0.002 of f32 in the tests). Ignored with a warning on flex (the CPU) and on a device
    /// without f16 arithmetic.
    #[arg(long)]
    half: bool,
}

#[derive(Args, Debug)]
struct ValCmd {
    #[command(flatten)]
    device: DeviceArg,
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
    #[arg(long, default_value_t = 0.001, value_parser = parse_frac32)]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.7, value_parser = parse_frac32)]
    iou: f32,
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    max_det: u64,
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

#[derive(Args, Debug)]
struct NmsArgs {
    /// Keep detections whose score is above this.
    #[arg(long, default_value_t = 0.25, value_parser = parse_frac32)]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.7, value_parser = parse_frac32)]
    iou: f32,
    /// At most this many detections per image.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    max_det: u64,
    /// Keep only these class ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<usize>>,
    /// Class-agnostic NMS.
    #[arg(long)]
    agnostic: bool,
}

impl NmsArgs {
    fn options(&self) -> DetectOptions {
        DetectOptions {
            conf: self.conf,
            iou: self.iou,
            max_det: self.max_det as usize,
            agnostic: self.agnostic,
            classes: self.classes.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct PredictCmd {
    #[command(flatten)]
    device: DeviceArg,
    /// Checkpoint (safetensors with metadata).
    #[arg(long)]
    weights: PathBuf,
    /// An image, a folder (recursive), a glob ('imgs/*.jpg') or a .txt list of images.
    #[arg(long)]
    source: String,
    /// Inference size (rounded up to a multiple of 32).
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    nms: NmsArgs,
    /// Images whose header claims more pixels are skipped before decoding.
    #[arg(long, default_value_t = yolo_core::data::image::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Parent folder of the run folder.
    #[arg(long, default_value = "runs/predict")]
    project: PathBuf,
    /// Run folder name (predict, predict2, ... when it exists).
    #[arg(long, default_value = "predict")]
    name: String,
    /// Reuse the run folder if it exists.
    #[arg(long)]
    exist_ok: bool,
    /// What goes to stdout.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Save annotated images (<stem>.jpg).
    #[arg(long)]
    save: bool,
    /// Save YOLO txt rows with confidences (labels/<stem>.txt).
    #[arg(long)]
    save_txt: bool,
    /// Save COCO-style results (predictions.json).
    #[arg(long)]
    save_coco: bool,
}

#[derive(Args, Debug)]
struct ServeCmd {
    #[command(flatten)]
    device: DeviceArg,
    /// Checkpoint (safetensors with metadata).
    #[arg(long)]
    weights: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Inference size (rounded up to a multiple of 32).
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    /// Images per forward pass at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: u64,
    /// Milliseconds to wait for more images after the first of a batch.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Decoded images waiting for inference at most; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    queue: u64,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Images whose header claims more pixels are refused before decoding (413).
    #[arg(long, default_value_t = 4096 * 4096)]
    max_pixels: u64,
    /// Seconds before an unanswered request gets 503.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Defaults for requests that do not set them.
    #[command(flatten)]
    nms: NmsArgs,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_frac32(s: &str) -> Result<f32, String> {
    parse_frac(s).map(|v| v as f32)
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
    /// Up to N unlabelled distractors (rings, crosses, lines) per image, under the objects.
    #[arg(long, default_value_t = 0)]
    clutter: u32,
}

fn main() -> ExitCode {
    yolo_core::backend::keep_freed_memory();
    let cli = Cli::parse();
    if std::env::var_os("YOLO_RS_PARSE_ONLY").is_some_and(|v| v == "1") {
        return ExitCode::SUCCESS;
    }
    let result = match cli.command {
        Command::Val(c) => run_val(c),
        Command::CheckData(c) => run_check_data(c),
        Command::Predict(c) => run_predict(c),
        Command::Serve(c) => run_serve(c),
        Command::Shapes(c) => run_shapes(c),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {}", yolo_core::error::chain(e.as_ref()));
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
        clutter: c.clutter,
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

fn run_predict(c: PredictCmd) -> anyhow::Result<i32> {
    let s = predict::run(&PredictArgs {
        weights: c.weights,
        source: c.source,
        imgsz: c.imgsz,
        batch: c.batch,
        opts: c.nms.options(),
        max_pixels: c.max_pixels,
        project: c.project,
        name: c.name,
        exist_ok: c.exist_ok,
        format: c.format,
        save: c.save,
        save_txt: c.save_txt,
        save_coco: c.save_coco,
        device: c.device.device,
        half: c.device.half,
    })?;
    eprintln!(
        "{} images, {} detections, {} skipped; results in {}",
        s.images,
        s.detections,
        s.skipped.len(),
        s.run_dir.display()
    );
    eprintln!(
        "Speed: {:.1}ms preprocess, {:.1}ms inference, {:.1}ms postprocess per image",
        s.speed.preprocess_ms, s.speed.inference_ms, s.speed.postprocess_ms
    );
    Ok(0)
}

fn run_serve(c: ServeCmd) -> anyhow::Result<i32> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match c.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let mut cfg = ServeConfig::new(c.weights, c.addr);
    cfg.imgsz = c.imgsz;
    cfg.max_batch = c.max_batch as usize;
    cfg.max_wait = std::time::Duration::from_millis(c.max_wait_ms);
    cfg.queue = c.queue as usize;
    cfg.max_body_bytes = c.max_body_bytes;
    cfg.max_pixels = c.max_pixels;
    cfg.timeout = std::time::Duration::from_secs(c.timeout_s);
    cfg.defaults = c.nms.options();
    cfg.device = c.device.device;
    cfg.half = c.device.half;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let started = serve::start(cfg).await?;
        tracing::info!(addr = %started.addr, "listening");
        started.serve(serve::shutdown_signal()).await
    })?;
    tracing::info!("stopped");
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
            max_det: c.max_det as usize,
            rect: !c.no_rect,
        },
        out: c.out,
        device: c.device.device,
        half: c.device.half,
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

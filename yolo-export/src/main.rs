//! `yolo-export`: writes a checkpoint as ONNX and prints what it wrote.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use yolo_export::{export_checkpoint, ExportOptions, NmsOptions, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET};

/// Export a YOLOv8 checkpoint (ours, or converted from Ultralytics) to ONNX.
///
/// The graph takes `images` [B, 3, H, W] (RGB in [0, 1]) and returns `output0`
/// [B, 4 + nc, anchors] (cx, cy, w, h in input pixels, then class scores), or with --nms
/// [B, max_det, 6] (x1, y1, x2, y2, score, class), as Ultralytics' ONNX export.
#[derive(Parser, Debug)]
#[command(
    name = "yolo-export",
    version,
    about,
    long_about = None,
    after_help = "Environment: YOLO_RS_PARSE_ONLY=1 exits 0 as soon as the command line parses (CI checks \
                  the command lines of tekton/ against this CLI); usage errors still exit 2."
)]
struct Cli {
    /// Checkpoint (.safetensors).
    #[arg(long, short)]
    weights: PathBuf,
    /// Output file [default: the checkpoint's path with .onnx].
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Input size: H, or H W (multiples of 32) [default: the checkpoint's imgsz].
    #[arg(long, num_args = 1..=2, value_name = "H [W]")]
    imgsz: Vec<usize>,
    /// Batch size (with --dynamic: the nominal batch written to the metadata).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Symbolic batch, height and width.
    #[arg(long)]
    dynamic: bool,
    /// f16 weights and computation (input and output f16 unless --fp32-io).
    #[arg(long)]
    half: bool,
    /// With --half: f32 input and output (casts inside the graph).
    #[arg(long)]
    fp32_io: bool,
    /// End the graph in NMS: output [B, max_det, 6].
    #[arg(long)]
    nms: bool,
    /// NMS score threshold (with --nms).
    #[arg(long)]
    conf: Option<f32>,
    /// NMS IoU threshold (with --nms).
    #[arg(long)]
    iou: Option<f32>,
    /// Detections per image (with --nms).
    #[arg(long)]
    max_det: Option<usize>,
    /// Class-agnostic NMS (with --nms).
    #[arg(long)]
    agnostic: bool,
    /// ONNX opset, 13 to 23 (23: the newest onnxruntime 1.23 runs).
    #[arg(long, default_value_t = DEFAULT_OPSET, value_parser = clap::value_parser!(i64).range(MIN_OPSET..=MAX_OPSET))]
    opset: i64,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    if !cli.nms && (cli.conf.is_some() || cli.iou.is_some() || cli.max_det.is_some() || cli.agnostic) {
        bail!("--conf, --iou, --max-det and --agnostic apply only with --nms");
    }
    let imgsz = match cli.imgsz[..] {
        [] => {
            // yolo-core's errors name the file.
            let meta = yolo_core::weights::read_meta(&cli.weights).context("cannot read checkpoint")?;
            [meta.imgsz, meta.imgsz]
        }
        [s] => [s, s],
        [h, w] => [h, w],
        _ => unreachable!("clap takes 1 or 2 values"),
    };
    let nms = cli.nms.then(|| {
        let d = NmsOptions::default();
        NmsOptions {
            conf: cli.conf.unwrap_or(d.conf),
            iou: cli.iou.unwrap_or(d.iou),
            max_det: cli.max_det.unwrap_or(d.max_det),
            agnostic: cli.agnostic,
        }
    });
    let opts = ExportOptions {
        imgsz,
        batch: cli.batch,
        dynamic: cli.dynamic,
        half: cli.half,
        fp32_io: cli.fp32_io,
        nms,
        opset: cli.opset,
    };
    let output = cli.output.clone().unwrap_or_else(|| cli.weights.with_extension("onnx"));
    let w = export_checkpoint(&cli.weights, &output, &opts)?;
    let e = &w.exported;
    println!("wrote {}", w.path.display());
    println!("  opset      {} (IR version {})", e.opset, e.ir_version);
    for i in &e.inputs {
        println!("  input      {i}");
    }
    for o in &e.outputs {
        println!("  output     {o}");
    }
    let axes = if e.dynamic_axes.is_empty() { "none".to_string() } else { e.dynamic_axes.join(", ") };
    println!("  dynamic    {axes}");
    if let Some(n) = &opts.nms {
        println!(
            "  nms        conf {} iou {} max_det {} {}",
            n.conf,
            n.iou,
            n.max_det,
            if n.agnostic { "agnostic" } else { "per class" }
        );
    }
    println!("  nodes      {}", e.nodes);
    println!("  size       {} bytes", e.bytes.len());
    println!("  sha256     {}", e.sha256());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("YOLO_RS_PARSE_ONLY").is_some_and(|v| v == "1") {
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yolo-export: error: {}", yolo_core::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

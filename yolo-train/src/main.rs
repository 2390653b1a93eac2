//! `yolo-train`: train a YOLOv8 detector on a YOLO-format dataset.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use yolo_core::data::shapes::{generate, ShapesConfig};
use yolo_core::{backend, Multiples, Scale};
use yolo_train::trainer::state_path;
use std::ops::ControlFlow;
use yolo_train::push::Pushgateway;
use yolo_train::{
    resume_with, train_with, EpochStats, OptimizerKind, Report, TrainConfig, TrainError,
    TrainSummary,
};

/// Train a YOLOv8 detector (Ultralytics 8.4.190 training loop and augmentations).
#[derive(Parser, Debug)]
#[command(
    name = "yolo-train",
    version,
    about,
    long_about = None,
    after_help = "Environment: YOLO_RS_PARSE_ONLY=1 exits 0 as soon as the command line parses (CI checks \
                  the command lines of tekton/ against this CLI); usage errors still exit 2."
)]
struct Cli {
    /// data.yaml, or `shapes` for the built-in demo dataset (generated into datasets/shapes).
    #[arg(long, required_unless_present = "resume")]
    data: Option<String>,
    /// Continue the run in this folder (e.g. runs/train/demo) from its last finished epoch,
    /// with its saved settings; every other option is ignored.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Resume <project>/<name> when its weights/last.state exists (with its saved settings, as
    /// --resume), else start a new run in exactly <project>/<name> (never name2): a retried
    /// job continues its run. A run whose epochs are all done is reported, not retrained.
    #[arg(long, conflicts_with = "resume")]
    auto_resume: bool,
    /// Folder for Tekton result files: `best` (path of best.safetensors), `last`, `run-dir`
    /// and `epochs` (epochs finished in the run folder).
    #[arg(long, value_name = "DIR")]
    results_dir: Option<PathBuf>,
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
    /// Keep decoded training images in memory after first use (Ultralytics' cache=ram).
    #[arg(long)]
    cache: bool,
    /// Mixed precision on a GPU backend (Ultralytics' amp): convs in f16, the loss scaled,
    /// weights and optimizer in f32. Ignored with a warning on the CPU (flex), as Ultralytics
    /// does.
    #[arg(long)]
    amp: bool,
    /// Any other setting of args.yaml, by its key (dotted for `aug`), e.g. `--set lrf=0.1
    /// --set aug.mosaic=0 --set aug.mixup=0.1`; repeatable, applied after the flags above.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Backend to train on: cuda, wgpu, flex (= cpu), as BURN_DEVICE; empty (the default):
    /// BURN_DEVICE if set, else the GPU when the machine has one and the CPU otherwise. A named
    /// backend the build lacks or the machine has no device for is an error.
    #[arg(long, value_name = "BACKEND")]
    device: Option<String>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// One JSON object per epoch on stdout.
    #[arg(long)]
    json: bool,
    /// Push each epoch's metrics (losses, mAP, images/s, epoch time, LR) to this Prometheus
    /// Pushgateway (http://host:9091), group job="yolo-train", run=<name>; empty: no push. A
    /// failed push is a warning; training goes on.
    #[arg(long, value_name = "URL")]
    pushgateway: Option<String>,
}

/// The `--pushgateway` client for a run, and the per-epoch callback that pushes.
fn pusher(cli: &Cli, run: &str) -> Result<impl FnMut(&EpochStats) -> ControlFlow<()>> {
    let gw = match &cli.pushgateway {
        Some(url) if !url.is_empty() => Some(Pushgateway::new(url, "yolo-train", run).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    Ok(move |s: &EpochStats| {
        if let Some(gw) = &gw {
            if let Err(e) = gw.push(s) {
                eprintln!("warning: {e}");
            }
        }
        ControlFlow::Continue(())
    })
}

fn run_name(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
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

fn main() -> std::process::ExitCode {
    yolo_core::backend::canonical_device_env();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", yolo_core::error::chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    yolo_core::backend::keep_freed_memory();
    let cli = Cli::parse();
    if std::env::var_os("YOLO_RS_PARSE_ONLY").is_some_and(|v| v == "1") {
        return Ok(());
    }
    let report = if cli.json {
        Report::Json
    } else if cli.quiet {
        Report::Quiet
    } else {
        Report::Bar
    };
    let selected = backend::select_device_flag(cli.device.as_deref())?;
    if !cli.quiet {
        eprintln!("device: {selected}");
    }
    let backend_kind = selected.backend;
    let device = selected.device;
    if let Some(run_dir) = &cli.resume {
        let summary = resume_with(run_dir, &device, report, pusher(&cli, &run_name(run_dir))?)
            .with_context(|| format!("resuming {}", run_dir.display()))?;
        print_summary(&cli, &summary);
        return write_results(&cli, &summary.run_dir);
    }
    let auto_run_dir = cli.project.join(&cli.name);
    if cli.auto_resume && state_path(&auto_run_dir).exists() {
        eprintln!("auto-resume: {} has a training state; resuming it", auto_run_dir.display());
        match resume_with(&auto_run_dir, &device, report, pusher(&cli, &cli.name)?) {
            Ok(summary) => print_summary(&cli, &summary),
            // Every epoch finished before (the job stopped after training): nothing to redo.
            Err(TrainError::Resume { message, .. }) if message.contains("epochs are done") => {
                eprintln!("auto-resume: {}: {message}; nothing to train", auto_run_dir.display());
            }
            Err(e) => return Err(e).with_context(|| format!("resuming {}", auto_run_dir.display())),
        }
        return write_results(&cli, &auto_run_dir);
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
        // --auto-resume without a state: a new run in exactly <project>/<name>.
        exist_ok: cli.exist_ok || cli.auto_resume,
        val: !cli.no_val,
        cache: cli.cache,
        amp: cli.amp,
        ..defaults
    };
    let mut cfg = apply_overrides(cfg, &cli.set)?;
    if cfg.amp && backend_kind == backend::BackendKind::Flex {
        // Ultralytics turns amp off on the CPU too: f16 there is emulated, slower than f32.
        eprintln!("warning: amp applies to GPU backends; training on flex in f32");
        cfg.amp = false;
    }
    let summary = train_with(&cfg, &device, report, pusher(&cli, &cfg.name)?)
        .with_context(|| format!("training on {}", data.display()))?;
    print_summary(&cli, &summary);
    write_results(&cli, &summary.run_dir)
}

/// Writes the `--results-dir` files for the run folder `run_dir`: short strings without a
/// trailing newline, as Tekton results are read.
fn write_results(cli: &Cli, run_dir: &Path) -> Result<()> {
    let Some(dir) = &cli.results_dir else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let csv = run_dir.join("results.csv");
    let text = std::fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
    let epochs = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next()?.trim().parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    let weights = run_dir.join("weights");
    for (name, value) in [
        ("best", weights.join("best.safetensors").display().to_string()),
        ("last", weights.join("last.safetensors").display().to_string()),
        ("run-dir", run_dir.display().to_string()),
        ("epochs", epochs.to_string()),
    ] {
        let path = dir.join(name);
        yolo_core::files::write_atomic(&path, value.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Applies `--set KEY=VALUE` overrides: the value is parsed as YAML and must fit the
/// setting's type; unknown keys are errors that name the key.
fn apply_overrides(cfg: TrainConfig, sets: &[String]) -> Result<TrainConfig> {
    if sets.is_empty() {
        return Ok(cfg);
    }
    let mut root = serde_yaml::to_value(&cfg).context("serialising the settings")?;
    for s in sets {
        let (key, value) = s
            .split_once('=')
            .with_context(|| format!("--set {s}: expected KEY=VALUE"))?;
        let value: serde_yaml::Value =
            serde_yaml::from_str(value).with_context(|| format!("--set {s}: value is not YAML"))?;
        let parts: Vec<&str> = key.split('.').collect();
        let mut node = &mut root;
        for (i, part) in parts.iter().enumerate() {
            let here = parts[..=i].join(".");
            let map = node
                .as_mapping_mut()
                .with_context(|| format!("--set {s}: `{}` has no sub-settings", parts[..i].join(".")))?;
            let k = serde_yaml::Value::String(part.to_string());
            let Some(slot) = map.get_mut(&k) else {
                bail!("--set {s}: unknown setting `{here}` (see a run's args.yaml for the keys)");
            };
            if i + 1 == parts.len() {
                *slot = value.clone();
                break;
            }
            node = slot;
        }
        // Read back after each one, so that the error names the setting that does not fit.
        serde_yaml::from_value::<TrainConfig>(root.clone())
            .with_context(|| format!("--set {s}: the value does not fit `{key}`"))?;
    }
    serde_yaml::from_value(root).context("--set: the settings do not fit together")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_keys_and_reject_unknown_ones() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cfg = apply_overrides(
            TrainConfig::default(),
            &set(&["lrf=0.1", "aug.mosaic=0", "aug.mixup=0.25", "cos_lr=true"]),
        )
        .unwrap();
        assert_eq!(cfg.lrf, 0.1);
        assert_eq!(cfg.aug.mosaic, 0.0);
        assert_eq!(cfg.aug.mixup, 0.25);
        assert!(cfg.cos_lr);
        let err = apply_overrides(TrainConfig::default(), &set(&["aug.mosiac=0"])).unwrap_err();
        assert!(err.to_string().contains("unknown setting `aug.mosiac`"), "{err}");
        let err = apply_overrides(TrainConfig::default(), &set(&["epochs=many"])).unwrap_err();
        assert!(format!("{err:#}").contains("epochs"), "{err:#}");
        let err = apply_overrides(TrainConfig::default(), &set(&["lrf"])).unwrap_err();
        assert!(err.to_string().contains("expected KEY=VALUE"), "{err}");
        // Of several, the one that does not fit is named, alone.
        let err = apply_overrides(TrainConfig::default(), &set(&["lrf=0.1", "aug.mosaic=abc", "cos_lr=true"]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--set aug.mosaic=abc: the value does not fit `aug.mosaic`"), "{err}");
        assert!(!err.contains("lrf") && !err.contains("cos_lr"), "{err}");
    }
}

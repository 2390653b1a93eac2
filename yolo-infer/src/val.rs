//! `yolo-infer val`: evaluate a checkpoint on a dataset split and write `metrics.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use yolo_core::data::check::{check_dataset, CheckOptions, PRINT_FINDINGS};
use yolo_core::data::dataset::{DataConfig, Split};
use yolo_core::data::shapes::{self, ShapesConfig};
use yolo_core::val::{evaluate, ValConfig, ValMetrics};
use yolo_core::{backend, files, weights};

/// Arguments of one validation run.
#[derive(Debug, Clone)]
pub struct ValArgs {
    pub weights: PathBuf,
    /// A data.yaml, or `shapes` for the built-in demo data.
    pub data: String,
    pub split: String,
    pub cfg: ValConfig,
    /// Folder for metrics.json.
    pub out: PathBuf,
    /// Backend (`--device`: cuda, wgpu, flex); `None`: `BURN_DEVICE`, else the machine's best.
    pub device: Option<String>,
    /// Half precision on a GPU backend ([`yolo_core::amp::use_half`]).
    pub half: bool,
}

/// Resolves `--data`: `shapes` means the built-in demo dataset, generated into
/// `datasets/shapes` when its data.yaml is not there yet.
pub fn resolve_data(data: &str) -> anyhow::Result<PathBuf> {
    if data == "shapes" {
        let root = Path::new("datasets/shapes");
        let yaml = root.join("data.yaml");
        if !yaml.exists() {
            let s = shapes::generate(&ShapesConfig::default(), root)
                .context("generating the built-in shapes dataset")?;
            eprintln!(
                "generated the shapes demo dataset in {} ({} train, {} val images)",
                root.display(),
                s.train_images,
                s.val_images
            );
        }
        return Ok(yaml);
    }
    Ok(PathBuf::from(data))
}

/// `train`, `val` or `test`.
pub fn parse_split(s: &str) -> anyhow::Result<Split> {
    Ok(match s {
        "train" => Split::Train,
        "val" => Split::Val,
        "test" => Split::Test,
        other => bail!("unknown split `{other}` (train, val or test)"),
    })
}

/// Loads weights and data, prints the data report (and saves it as `<out>/data_report.json`),
/// evaluates, writes `<out>/metrics.json` atomically.
pub fn run(a: &ValArgs) -> anyhow::Result<ValMetrics> {
    let cfg = a.cfg.checked()?;
    if cfg.imgsz != a.cfg.imgsz {
        eprintln!(
            "warning: imgsz {} is not a multiple of the largest stride (32): using {}",
            a.cfg.imgsz, cfg.imgsz
        );
    }
    let selected = backend::select_device_flag(a.device.as_deref())?;
    eprintln!("device: {selected}");
    let half = yolo_core::amp::use_half(a.half, &selected, |w| eprintln!("warning: {w}"));
    let device = selected.device;
    let (model, meta) = weights::load_model(&a.weights, &device)?;
    let model = if half { model.half() } else { model.fuse() };
    let yaml = resolve_data(&a.data)?;
    let data = DataConfig::from_yaml(&yaml)?;
    if data.nc() != meta.model.nc {
        bail!(
            "{}: the dataset has {} classes, the checkpoint {} has {}",
            yaml.display(),
            data.nc(),
            a.weights.display(),
            meta.model.nc
        );
    }
    let split = parse_split(&a.split)?;
    let (mut checked, report) = check_dataset(
        &data,
        &[split],
        CheckOptions {
            leakage: false,
            ..CheckOptions::default()
        },
    )?;
    let report_file = a.out.join("data_report.json");
    eprint!("{}", report.summary(PRINT_FINDINGS, Some(&report_file)));
    report.save(&report_file)?;
    let (_, samples) = checked.remove(0);
    if samples.is_empty() {
        return Err(report.no_valid_images(split).into());
    }
    let metrics = evaluate(&model, &samples, &data.names, &cfg, &device)?;
    let json = serde_json::to_vec_pretty(&metrics).expect("metrics serialise");
    files::write_atomic(&a.out.join("metrics.json"), &json)
        .with_context(|| format!("writing {}", a.out.join("metrics.json").display()))?;
    yolo_core::plots::plot_pr_curve(&a.out.join("PR_curve.png"), &metrics.pr_curves, &data.names)?;
    yolo_core::plots::plot_confusion_matrix(
        &a.out.join("confusion_matrix.png"),
        &metrics.confusion,
        &data.names,
    )?;
    Ok(metrics)
}

/// The per-class table Ultralytics prints after `val`.
pub fn table(m: &ValMetrics) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>22}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}",
        "Class", "Images", "Instances", "Box(P", "R", "mAP50", "mAP50-95)"
    );
    let _ = writeln!(
        s,
        "{:>22}{:>11}{:>11}{:>11.3}{:>11.3}{:>11.3}{:>11.3}",
        "all", m.images, m.instances, m.precision, m.recall, m.map50, m.map50_95
    );
    for c in &m.per_class {
        let _ = writeln!(
            s,
            "{:>22}{:>11}{:>11}{:>11.3}{:>11.3}{:>11.3}{:>11.3}",
            c.name, c.images, c.instances, c.precision, c.recall, c.ap50, c.ap50_95
        );
    }
    s
}

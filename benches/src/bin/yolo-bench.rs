//! The benchmark suite: one command that measures this build on this node (inference by scale,
//! size and batch; decode and NMS; letterbox and the training transform; a train step and
//! whole-epoch training; peak memory; the server under load) beside the reference runtimes
//! found by `--python` (onnxruntime on our ONNX and on Ultralytics', PyTorch / Ultralytics),
//! and writes report.json, report.md and latency.png.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use yolo_benches::suite::machine::{self, Machine};
use yolo_benches::suite::plan::Plan;
use yolo_benches::suite::refs::Refs;
use yolo_benches::suite::report::{Backend, Report, Target, SCHEMA};
use yolo_benches::suite::sections::{self, Ctx};
use yolo_core::{backend, Scale};

const SECTIONS: [&str; 5] = [
    "inference",
    "postprocess",
    "preprocess",
    "training",
    "serving",
];

#[derive(Parser)]
#[command(
    name = "yolo-bench",
    version,
    about = "Measure yolo-rs on this node (CPU or GPU backend) beside onnxruntime and PyTorch/Ultralytics; \
             write report.json, report.md and latency.png",
    after_help = "Modes: the default full run (yolov8n and yolov8s at 320/640 x batch 1/8, 3 interleaved rounds), \
                  --quick (yolov8n only, 2 rounds of fewer runs, short training and serving; under 2 minutes on 2 cores without \
                  --python) and --smoke (64 px, seconds, for tests). The report.md's header says exactly what a mode covered.\n\
                  Environment: BURN_DEVICE=flex|wgpu|cuda picks the backend among those compiled in; RAYON_NUM_THREADS \
                  sets the CPU threads (the references get as many); YOLO_RS_REVISION names the revision where git is absent.\n\
                  YOLO_RS_PARSE_ONLY=1 exits 0 as soon as the command line parses (CI checks the Tekton and Kubernetes command lines)."
)]
struct Args {
    /// Fewer configs and runs (= --mode quick): under 2 minutes on 2 cores (without --python).
    #[arg(long, conflicts_with_all = ["smoke", "mode"])]
    quick: bool,
    /// The least work that runs every section, at 64 px (= --mode smoke): seconds.
    #[arg(long, conflicts_with = "mode")]
    smoke: bool,
    /// full, quick or smoke (for manifests that pass the mode as a value).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Folder for report.json, report.md and latency.png (created; files replaced atomically).
    #[arg(long, default_value = "yolo-bench-report")]
    out: PathBuf,
    /// A Python interpreter with onnxruntime and/or torch + ultralytics + safetensors: the
    /// references run beside ours, taking turns. Without it, only yolo-rs is measured.
    #[arg(long)]
    python: Option<String>,
    /// The yolo-infer binary for the serving figures (default: the one next to yolo-bench).
    #[arg(long)]
    infer: Option<String>,
    /// An earlier report.json: add the change of every figure against it.
    #[arg(long)]
    compare: Option<String>,
    /// Measure nothing: render this report.json again (with --compare, against OLD) into --out.
    #[arg(long)]
    from: Option<String>,
    /// Model scales for the inference figures, comma-separated (default: the mode's).
    #[arg(long, value_delimiter = ',')]
    scales: Vec<Scale>,
    /// Inference in half precision (f16), as `yolo-infer --half`, on a GPU backend: ours runs
    /// the f16 model, PyTorch its fused model `.half()` on a half input, onnxruntime our f16
    /// ONNX export (Ultralytics' f16 export needs a CUDA device, so it is not among them). The
    /// figures get their own ids (`.../f16`). On flex it is ignored with a note, as by yolo-infer.
    #[arg(long)]
    half: bool,
    /// Sections to leave out, comma-separated: inference, postprocess, preprocess, training, serving.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Also write Tekton results here: `report` (the report folder) and `targets` (how many
    /// targets were met, not met, not measured).
    #[arg(long)]
    results_dir: Option<String>,
    /// Keep the work files (checkpoints, ONNX, generated data, logs) in this folder instead of a
    /// temporary one that is removed.
    #[arg(long)]
    work: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Full,
    Quick,
    Smoke,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if std::env::var_os("YOLO_RS_PARSE_ONLY").is_some_and(|v| v == "1") {
        return std::process::ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", yolo_core::error::chain(e.as_ref()));
            std::process::ExitCode::from(1)
        }
    }
}

/// The path options, an empty value meaning "none" (a Tekton param left at its default "").
struct Paths {
    python: Option<PathBuf>,
    infer: Option<PathBuf>,
    compare: Option<PathBuf>,
    from: Option<PathBuf>,
    results_dir: Option<PathBuf>,
    work: Option<PathBuf>,
}

fn run(a: Args) -> anyhow::Result<()> {
    let path = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(PathBuf::from);
    let paths = Paths {
        python: path(&a.python),
        infer: path(&a.infer),
        compare: path(&a.compare),
        from: path(&a.from),
        results_dir: path(&a.results_dir),
        work: path(&a.work),
    };
    for s in &a.skip {
        if !SECTIONS.contains(&s.as_str()) {
            bail!(
                "--skip {s}: unknown section (one of {})",
                SECTIONS.join(", ")
            );
        }
    }
    let old = paths.compare.as_deref().map(Report::load).transpose()?;
    if let Some(from) = &paths.from {
        let mut report = Report::load(from)?;
        if let (Some(old), Some(old_path)) = (&old, &paths.compare) {
            report.comparison = Some(report.compare_with(old, old_path));
        }
        report.write_all(&a.out)?;
        eprintln!("wrote {}", a.out.join("report.md").display());
        return Ok(());
    }
    // As the other binaries: freed memory stays with the process for the next buffers.
    backend::keep_freed_memory();
    let started = Instant::now();
    let load_start = machine::load_average();
    let window = if a.smoke || a.mode == Some(Mode::Smoke) {
        std::time::Duration::from_millis(200)
    } else {
        std::time::Duration::from_secs(1)
    };
    let busy_start = machine::busy_cores(window);
    let mode = match (a.smoke, a.quick, a.mode) {
        (true, _, _) => Mode::Smoke,
        (_, true, _) => Mode::Quick,
        (_, _, m) => m.unwrap_or(Mode::Full),
    };
    let mut plan = match mode {
        Mode::Smoke => Plan::smoke(),
        Mode::Quick => Plan::quick(),
        Mode::Full => Plan::full(),
    };
    if !a.scales.is_empty() {
        plan.scales = a.scales.clone();
    }
    let selected = backend::select_device()?;
    let device = selected.device.clone();
    let mut notes = Vec::new();
    let half = yolo_core::amp::use_half(a.half, &selected, |w| notes.push(w.to_string()));
    let machine = Machine::detect();
    let (temp, work) = match &paths.work {
        Some(w) => (None, w.clone()),
        None => {
            let w = std::env::temp_dir().join(format!("yolo-bench-{}", std::process::id()));
            (Some(TempDir(w.clone())), w)
        }
    };
    std::fs::create_dir_all(&work).with_context(|| format!("{}: cannot create", work.display()))?;
    let work = work
        .canonicalize()
        .with_context(|| format!("{}", work.display()))?;

    let mut sections_s = std::collections::BTreeMap::new();
    let t = Instant::now();
    let refs = match &paths.python {
        Some(py) => {
            eprintln!("starting the reference worker ({})...", py.display());
            match Refs::start(py, &work) {
                Ok(r) => Some(r),
                Err(e) => {
                    notes.push(format!("references not run: {e:#}"));
                    None
                }
            }
        }
        None => {
            notes.push("no --python: only yolo-rs was measured (pass a Python with onnxruntime, torch, ultralytics and safetensors for the references)".into());
            None
        }
    };
    if paths.python.is_some() {
        sections_s.insert("references".to_string(), t.elapsed().as_secs_f64());
    }
    let reference_versions = refs
        .as_ref()
        .map(|r| r.versions.clone())
        .unwrap_or_default();
    let infer = match &paths.infer {
        Some(p) if p.is_file() => Some(p.clone()),
        Some(p) => bail!("--infer {}: no such file", p.display()),
        None => std::env::current_exe()
            .ok()
            .map(|e| e.with_file_name(format!("yolo-infer{}", std::env::consts::EXE_SUFFIX)))
            .filter(|p| p.is_file()),
    };

    let steps = plan.steps(&a.skip);
    let mut ctx = Ctx::new(
        device.clone(),
        plan.clone(),
        work.clone(),
        refs,
        machine.threads,
        steps,
    );
    ctx.notes = notes;
    ctx.half = half;
    let skip = |s: &str| a.skip.iter().any(|x| x == s);
    type Section = fn(&mut Ctx) -> anyhow::Result<()>;
    let run_sections: [(&str, Section); 4] = [
        ("inference", sections::inference),
        ("postprocess", sections::postprocess),
        ("preprocess", sections::preprocess),
        ("training", sections::training),
    ];
    for (name, f) in run_sections {
        if skip(name) {
            continue;
        }
        let t = Instant::now();
        f(&mut ctx).with_context(|| format!("section {name}"))?;
        sections_s.insert(name.to_string(), t.elapsed().as_secs_f64());
    }
    if !skip("serving") {
        let t = Instant::now();
        sections::serving(&mut ctx, infer.as_deref()).context("section serving")?;
        sections_s.insert("serving".to_string(), t.elapsed().as_secs_f64());
    }
    ctx.progress.finish();
    drop(ctx.refs.take());

    let backend_name = backend_name(&device);
    let mut versions = std::collections::BTreeMap::new();
    versions.insert("yolo-rs".to_string(), env!("CARGO_PKG_VERSION").to_string());
    versions.insert("burn".to_string(), env!("YOLO_BENCH_BURN").to_string());
    versions.insert(
        "burn-flex".to_string(),
        env!("YOLO_BENCH_BURN_FLEX").to_string(),
    );
    versions.insert("rustc".to_string(), env!("YOLO_BENCH_RUSTC").to_string());
    let gpu_memory = if ctx.gpu_memory.is_empty() {
        serde_json::Value::String(format!(
            "n/a (the {backend_name} backend reports no device memory)"
        ))
    } else {
        serde_json::Value::Object(ctx.gpu_memory.clone())
    };
    let mut report = Report {
        schema: SCHEMA.into(),
        created_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        command: std::env::args()
            .map(|s| shell_word(&s))
            .collect::<Vec<_>>()
            .join(" "),
        mode: plan.mode.into(),
        covers: plan.covers(),
        wall_s: started.elapsed().as_secs_f64(),
        sections_s,
        git_revision: machine::git_revision(),
        load_average: load_start.zip(machine::load_average()).map(|(a, b)| [a, b]),
        other_busy_cores: busy_start
            .zip(machine::busy_cores(window))
            .map(|(a, b)| [a, b]),
        machine,
        backend: Backend {
            name: backend_name.clone(),
            device: format!("{device:?}"),
            precision: if half { "f16" } else { "f32" }.into(),
            compiled: backend::compiled_backends()
                .into_iter()
                .map(String::from)
                .collect(),
        },
        versions,
        reference_versions,
        gpu_memory,
        figures: std::mem::take(&mut ctx.figures),
        targets: Vec::new(),
        notes: std::mem::take(&mut ctx.notes),
        comparison: None,
    };
    report.targets = targets(&report);
    if let (Some(v), true) = (std::env::var_os("OMP_WAIT_POLICY"), paths.python.is_some()) {
        report.notes.push(format!(
            "OMP_WAIT_POLICY={} was set for the references",
            v.to_string_lossy()
        ));
    }
    if let Some([a, b]) = report.other_busy_cores {
        let cores = report.machine.cores as f64;
        if a.max(b) > 0.25 * cores {
            report.notes.push(format!(
                "other work was running: other processes kept {a:.2} of {cores} CPUs busy before the run and {b:.2} \
                 after it; every figure is slower than on an idle machine, and ratios can differ from an idle \
                 machine's too (the references take turns with ours, but runtimes whose threads spin-wait, as \
                 OpenMP in PyTorch and onnxruntime's pool do, can lose far more to shared cores; \
                 OMP_WAIT_POLICY=PASSIVE in the environment shows how much for PyTorch)"
            ));
        }
    }
    if let (Some(old), Some(old_path)) = (&old, &paths.compare) {
        report.comparison = Some(report.compare_with(old, old_path));
    }
    report.write_all(&a.out)?;
    if let Some(dir) = &paths.results_dir {
        write_results(dir, &a.out, &report)?;
    }
    drop(temp);
    eprintln!(
        "wrote {} ({} figures, {:.0} s)",
        a.out.join("report.md").display(),
        report.figures.len(),
        report.wall_s
    );
    Ok(())
}

/// The Tekton results: `report` (the absolute report folder) and `targets`.
fn write_results(dir: &std::path::Path, out: &std::path::Path, r: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--results-dir {}: cannot create", dir.display()))?;
    let folder = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
    let count = |s: &str| r.targets.iter().filter(|t| t.status == s).count();
    let targets = format!(
        "met {}, not met {}, not measured {}",
        count("met"),
        count("not met"),
        count("not measured")
    );
    for (name, value) in [
        ("report", folder.display().to_string()),
        ("targets", targets),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, value).with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(())
}

/// flex, wgpu or cuda (else the device as Burn prints it).
fn backend_name(device: &yolo_core::burn::tensor::Device) -> String {
    if *device == backend::cpu_device() {
        return "flex".into();
    }
    let d = format!("{device:?}").to_ascii_lowercase();
    ["cuda", "wgpu", "vulkan", "metal", "rocm"]
        .into_iter()
        .find(|k| d.contains(k))
        .map(|k| {
            if k == "vulkan" || k == "metal" {
                "wgpu".to_string()
            } else {
                k.to_string()
            }
        })
        .unwrap_or(d)
}

/// The issue's targets, judged on this report's figures.
fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let cpu = r.backend.name == "flex";
    let t = |name: &str, status: &str, detail: String| Target {
        name: name.into(),
        status: status.into(),
        detail,
    };

    let name = "yolov8n 640 batch 1 on the CPU no slower than onnxruntime";
    out.push(match r.figure("inference.latency/n/640/b1") {
        _ if !cpu => t(
            name,
            "not measured",
            format!(
                "the backend is {} (the target is for the CPU)",
                r.backend.name
            ),
        ),
        None => t(
            name,
            "not measured",
            "no yolov8n 640 batch 1 figure in this mode".into(),
        ),
        Some(f) => {
            // Against the faster onnxruntime file: the stricter comparison.
            let best = f
                .references
                .iter()
                .filter(|x| x.name.starts_with("onnxruntime"))
                .min_by(|x, y| x.stats.median.total_cmp(&y.stats.median));
            match best {
                None => t(
                    name,
                    "not measured",
                    "needs --python with onnxruntime".into(),
                ),
                Some(x) => t(
                    name,
                    if x.ratio <= 1.0 { "met" } else { "not met" },
                    format!(
                        "{:.1} ms against {} {:.1} ms: {:.2}x its time (minima {:.2}x)",
                        f.ours.median, x.name, x.stats.median, x.ratio, x.ratio_min
                    ),
                ),
            }
        }
    });

    let name = "NMS under 0.5 ms at predict thresholds";
    out.push(match r.figure("postprocess.nms/predict") {
        None => t(
            name,
            "not measured",
            "the postprocess section was skipped".into(),
        ),
        Some(f) => t(
            name,
            if f.ours.median < 0.5 {
                "met"
            } else {
                "not met"
            },
            format!(
                "{:.3} ms median ({:.3}-{:.3}), 8400 anchors, 80 classes, synthetic output",
                f.ours.median, f.ours.min, f.ours.max
            ),
        ),
    });

    let name = "whole-epoch training >= 1.5x Ultralytics' images/s on the CPU (at equal accuracy)";
    let epoch = r
        .figures
        .iter()
        .find(|f| f.id.starts_with("training.epoch/"));
    out.push(match epoch.and_then(|f| f.references.first().map(|x| (f, x))) {
        _ if !cpu => t(name, "not measured", format!("the backend is {} (the target is for the CPU)", r.backend.name)),
        None => t(name, "not measured", "needs --python with ultralytics (or benches/train_compare.py)".into()),
        Some((f, x)) => t(
            name,
            if f.ours.median >= 1.5 * x.stats.median { "met" } else { "not met" },
            format!(
                "{:.1} against {:.1} images/s: {:.2}x (speed only: accuracy is not compared by this short run; \
                 benches/train_compare.py trains long enough to)",
                f.ours.median, x.stats.median, x.ratio
            ),
        ),
    });

    if !cpu {
        for (name, id) in [
            ("train step against PyTorch on the GPU", "training.step/"),
            (
                "batch-8 inference against PyTorch on the GPU",
                "inference.latency/n/640/b8",
            ),
        ] {
            let f = r.figures.iter().find(|f| f.id.starts_with(id));
            let x = f.and_then(|f| {
                f.references
                    .iter()
                    .find(|x| x.name.starts_with("PyTorch"))
                    .map(|x| (f, x))
            });
            out.push(match x {
                None => t(
                    name,
                    "not measured",
                    "needs --python with torch and ultralytics".into(),
                ),
                Some((f, x)) => t(
                    name,
                    "reported",
                    format!(
                        "{:.1} ms against {} {:.1} ms: {:.2}x its time",
                        f.ours.median, x.name, x.stats.median, x.ratio
                    ),
                ),
            });
        }
    }
    out
}

/// A word of a command line as a shell would need it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A temporary folder removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

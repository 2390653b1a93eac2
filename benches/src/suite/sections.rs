//! The measurements, one function per report section. Each adds its figures (with the
//! references measured beside them where the worker has them) and notes to the [`Ctx`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use yolo_core::burn::tensor::Device;
use yolo_core::data::dataset::{load_split, DataConfig, Split as DataSplit};
use yolo_core::data::letterbox::LetterBox;
use yolo_core::data::shapes::{self, ShapesConfig};
use yolo_core::nms::{non_max_suppression, NmsConfig};
use yolo_core::weights::{self, CheckpointMeta};
use yolo_core::{backend, decode, ModelConfig, Scale, YoloV8};
use yolo_train::augment::AugConfig;
use yolo_train::loader::Loader;
use yolo_train::{OptimizerKind, TrainConfig};

use super::machine::{peak_rss_kib, reset_peak_rss};
use super::plan::Plan;
use super::refs::{self, Refs};
use super::report::Figure;
use super::serve::{self, LoadConfig};
use super::stats::{quantile, Stats};
use super::synth;
use crate::{input, times_ms, TrainStep};

/// Seconds the references' NMS and letterbox runs may take (after at least 3 runs; theirs
/// can be 20x ours, which must not make the suite wait minutes for a millisecond figure).
const CHEAP_BUDGET_S: f64 = 5.0;

/// Progress: a bar on a terminal, one line per step otherwise (CI and pod logs).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: u64,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Self {
            bar,
            total,
            done: 0,
        }
    }

    /// Starts the next step.
    pub fn step(&mut self, what: &str) {
        if self.done > 0 {
            if let Some(b) = &self.bar {
                b.inc(1);
            }
        }
        self.done += 1;
        match &self.bar {
            Some(b) => b.set_message(what.to_string()),
            None => eprintln!("[{}/{}] {what}", self.done, self.total),
        }
    }

    /// A line above the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// What the sections share.
pub struct Ctx {
    pub device: Device,
    pub plan: Plan,
    pub work: PathBuf,
    pub refs: Option<Refs>,
    /// Threads the references may use (those of our pool).
    pub threads: usize,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    pub progress: Progress,
    /// Device memory per section, where the backend reports it.
    pub gpu_memory: serde_json::Map<String, serde_json::Value>,
    /// Whether the references run on a CUDA GPU (when our backend is a GPU one and torch sees one).
    pub ref_device: &'static str,
    /// Inference in f16 (`--half`, where it applies), ours and the references'.
    pub half: bool,
    checkpoints: BTreeMap<String, (PathBuf, YoloV8)>,
}

impl Ctx {
    /// `steps`: the progress bar's length ([`Plan::steps`]).
    pub fn new(
        device: Device,
        plan: Plan,
        work: PathBuf,
        refs: Option<Refs>,
        threads: usize,
        steps: u64,
    ) -> Self {
        let gpu = device != backend::cpu_device();
        let ref_device = if gpu && refs.as_ref().is_some_and(|r| r.cuda) {
            "cuda"
        } else {
            "cpu"
        };
        let progress = Progress::new(steps);
        Self {
            device,
            plan,
            work,
            refs,
            threads,
            figures: Vec::new(),
            notes: Vec::new(),
            progress,
            gpu_memory: serde_json::Map::new(),
            ref_device,
            half: false,
            checkpoints: BTreeMap::new(),
        }
    }

    fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        self.progress.println(&format!("note: {n}"));
        self.notes.push(n);
    }

    /// Whether the reference worker runs and has `runtime`.
    fn has_ref(&self, runtime: &str) -> bool {
        self.refs.as_ref().is_some_and(|r| r.has(runtime))
    }

    /// `req`'s answer from the reference worker, if it has `runtime`; a failed request is a
    /// note, `"{what}: {runtime} not timed: {error}"`, and `None`.
    fn reference(&mut self, runtime: &str, req: serde_json::Value, timeout: Duration, what: &str) -> Option<serde_json::Value> {
        let answer = self.refs.as_mut().filter(|r| r.has(runtime))?.request(req, timeout);
        answer
            .map_err(|e| self.note(format!("{what}: {runtime} not timed: {e:#}")))
            .ok()
    }

    /// A seeded fresh yolov8 of `scale` (80 classes, `init_seeded(.., 0)` on the CPU), saved
    /// once as a checkpoint: the weights every runtime loads. Returns its path and the CPU model.
    fn checkpoint(&mut self, scale: Scale) -> anyhow::Result<(PathBuf, YoloV8)> {
        let key = scale.to_string();
        if let Some((p, m)) = self.checkpoints.get(&key) {
            return Ok((p.clone(), m.clone()));
        }
        let cfg = ModelConfig::new(scale, 80);
        let model = cfg.init_seeded(&backend::cpu_device(), 0)?;
        let meta = CheckpointMeta {
            model: cfg,
            names: (0..80).map(|i| format!("class{i}")).collect(),
            imgsz: 640,
            extra: Default::default(),
        };
        let path = self.work.join(format!("yolov8{scale}.safetensors"));
        weights::save_model(&model, &meta, &path)?;
        self.checkpoints.insert(key, (path.clone(), model.clone()));
        Ok((path, model))
    }

    /// Resets the peak RSS before a section.
    fn begin_memory(&mut self) {
        if !reset_peak_rss() && !self.notes.iter().any(|n| n.contains("clear_refs")) {
            self.note("peak RSS could not be reset between sections (/proc/self/clear_refs): each section's figure is the process's peak so far");
        }
    }

    /// The peak RSS of the section (and the device memory where the backend reports it).
    fn end_memory(&mut self, section: &str) {
        if let Some(kib) = peak_rss_kib(None) {
            self.figures.push(Figure::new(
                format!("memory.peak_rss/{section}"),
                "memory",
                format!("peak RSS, {section}"),
                "MiB",
                Stats::single(kib as f64 / 1024.0),
            ));
        }
        if let Some(u) = self.device.memory_pool_usage() {
            self.gpu_memory.insert(
                section.into(),
                json!({"bytes_in_use_mib": u.bytes_in_use as f64 / 1048576.0,
                       "bytes_reserved_mib": u.bytes_reserved as f64 / 1048576.0,
                       "allocations": u.number_allocs}),
            );
        }
    }

    fn refs_threads(&self) -> serde_json::Value {
        json!(self.threads)
    }
}

/// Inference latency and throughput by scale, size and batch; the references beside each.
pub fn inference(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.begin_memory();
    let plan = ctx.plan.clone();
    for &scale in &plan.scales {
        let (ckpt, cpu_model) = ctx.checkpoint(scale)?;
        // As yolo-time: loaded on the device, BatchNorm folded into the convs (and in f16
        // with --half).
        let (model, _) = weights::load_model(&ckpt, &ctx.device)?;
        let model = if ctx.half { model.half() } else { model.fuse() };
        // f16 figures have ids of their own: `--compare` matches like with like.
        let (id_tail, name_tail) = if ctx.half { ("/f16", ", f16") } else { ("", "") };
        for &(size, batch) in &plan.infer {
            ctx.progress
                .step(&format!("inference yolov8{scale} {size} batch {batch}"));
            let key = format!("{scale}-{size}-b{batch}");
            let runtimes = prepare_refs(ctx, &key, scale, size, batch, &ckpt, &cpu_model);
            let iters = if batch == 1 {
                plan.iters_b1
            } else {
                plan.iters_batch
            };
            let x = input(batch, size, &ctx.device);
            let mut ours = Vec::new();
            let mut theirs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for _ in 0..plan.rounds {
                ours.extend(times_ms(plan.warmup, iters, || {
                    let y = model
                        .predict(x.clone())
                        .expect("the input is [B, 3, S, S] with S a multiple of 32");
                    let _ = y.into_data();
                }));
                time_refs(ctx, &key, &runtimes, plan.warmup, iters, &mut theirs);
            }
            let name = format!("yolov8{scale} {size}x{size} batch {batch}{name_tail}");
            let Some(ours) = Stats::from_samples(&ours) else {
                continue;
            };
            let mut lat = Figure::new(
                format!("inference.latency/{scale}/{size}/b{batch}{id_tail}"),
                "inference",
                format!("{name}, latency"),
                "ms",
                ours.clone(),
            );
            let k = 1000.0 * batch as f64;
            let mut thr = Figure::new(
                format!("inference.throughput/{scale}/{size}/b{batch}{id_tail}"),
                "inference",
                format!("{name}, throughput"),
                "images/s",
                ours.inverse(k),
            )
            .higher_is_better();
            for (n, t) in &theirs {
                if let Some(s) = Stats::from_samples(t) {
                    thr.add_reference(n.clone(), s.inverse(k));
                    lat.add_reference(n.clone(), s);
                }
            }
            ctx.figures.push(lat);
            ctx.figures.push(thr);
        }
    }
    ctx.end_memory("inference");
    Ok(())
}

/// Our ONNX for `key` and the worker's sessions on it, Ultralytics' export and PyTorch; the
/// runtimes that could be prepared.
fn prepare_refs(
    ctx: &mut Ctx,
    key: &str,
    scale: Scale,
    size: usize,
    batch: usize,
    ckpt: &Path,
    cpu_model: &YoloV8,
) -> Vec<String> {
    if ctx.refs.is_none() {
        return Vec::new();
    }
    let onnx = ctx.work.join(format!("ours_{key}.onnx"));
    let mut opts = yolo_export::ExportOptions::new([size, size]);
    opts.batch = batch;
    opts.half = ctx.half;
    let names: Vec<String> = (0..80).map(|i| format!("class{i}")).collect();
    let written = yolo_export::export_model(
        cpu_model,
        &names,
        &format!("yolo-bench yolov8{scale}"),
        &opts,
    )
    .map_err(anyhow::Error::from)
    .and_then(|e| super::report::write_atomic(&onnx, &e.bytes));
    if let Err(e) = written {
        ctx.note(format!(
            "{key}: our ONNX export failed, no references: {e:#}"
        ));
        return Vec::new();
    }
    let req = json!({"op": "prepare", "key": key, "scale": scale.to_string(), "imgsz": size, "batch": batch,
                     "ours_onnx": onnx, "weights": ckpt, "work": ctx.work, "threads": ctx.refs_threads(),
                     "device": ctx.ref_device, "half": ctx.half});
    let ans = ctx
        .refs
        .as_mut()
        .expect("checked")
        .request(req, Duration::from_secs(600));
    match ans {
        Ok(a) => {
            for (k, why) in a["skipped"].as_object().into_iter().flatten() {
                let n = format!("references: {k} not run ({})", why.as_str().unwrap_or("?"));
                if !ctx.notes.contains(&n) {
                    ctx.note(n);
                }
            }
            for (k, d) in a["max_rel_diff_vs_first"].as_object().into_iter().flatten() {
                let d = d.as_f64().unwrap_or(f64::NAN);
                // f32: float rounding; f16: each runtime's f16 rounding (~6e-3 against f32).
                if d.is_nan() || d >= if ctx.half { 3e-2 } else { 1e-3 } {
                    ctx.note(format!("{key}: {k}'s output differs from the first reference's by {d:.2e} (relative)"));
                }
            }
            a["runtimes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        }
        Err(e) => {
            ctx.note(format!("{key}: references not prepared: {e:#}"));
            Vec::new()
        }
    }
}

fn time_refs(
    ctx: &mut Ctx,
    key: &str,
    runtimes: &[String],
    warmup: usize,
    iters: usize,
    out: &mut BTreeMap<String, Vec<f64>>,
) {
    for n in runtimes {
        let Some(refs) = ctx.refs.as_mut() else {
            return;
        };
        match refs.time(key, n, warmup, iters) {
            Ok(t) => out.entry(n.clone()).or_default().extend(t),
            Err(e) => ctx.note(format!("{key}: {n} not timed: {e:#}")),
        }
    }
}

/// Decode on yolov8n's raw head output, and NMS at predict and val thresholds on a seeded
/// synthetic output (Ultralytics' `non_max_suppression` beside it).
pub fn postprocess(ctx: &mut Ctx) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    ctx.progress.step("decode");
    let (ckpt, _) = ctx.checkpoint(Scale::N)?;
    let (model, _) = weights::load_model(&ckpt, &ctx.device)?;
    let model = model.fuse();
    let size = plan.decode_imgsz;
    let head = backend::on_cpu_pool(|| model.forward(input(1, size, &ctx.device)));
    let meta = model.meta();
    let t = times_ms(2, plan.post_iters, || {
        let y = backend::on_cpu_pool(|| decode(&head, &meta));
        let _ = y.into_data();
    });
    let anchors: usize = [8, 16, 32].iter().map(|s| (size / s) * (size / s)).sum();
    if let Some(s) = Stats::from_samples(&t) {
        ctx.figures.push(
            Figure::new(format!("postprocess.decode/n/{size}"), "postprocess", format!("decode yolov8n {size}x{size} ({anchors} anchors), read back"), "ms", s)
                .with_note("DFL expectation, anchors and strides to [1, 84, A] on the device, then copied to the host"),
        );
    }

    let syn = synth::prediction(80, 640, 12, 0);
    let raw = ctx.work.join("nms_pred.f32");
    let bytes: Vec<u8> = syn.pred.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&raw, bytes).with_context(|| format!("{}: cannot write", raw.display()))?;
    for (label, cfg) in [("predict", NmsConfig::predict()), ("val", NmsConfig::val())] {
        ctx.progress.step(&format!("NMS at {label} thresholds"));
        let mut kept = 0;
        let t = times_ms(5.min(plan.nms_iters), plan.nms_iters, || {
            kept = non_max_suppression(&syn.pred, 80, &cfg).len();
        });
        let (cand_anchors, cand_pairs) = synth::candidates(&syn.pred, 80, cfg.conf);
        let Some(s) = Stats::from_samples(&t) else {
            continue;
        };
        let mut f = Figure::new(
            format!("postprocess.nms/{label}"),
            "postprocess",
            format!("NMS at {label} thresholds (conf {}, IoU {}{})", cfg.conf, cfg.iou, if cfg.multi_label { ", multi-label" } else { "" }),
            "ms",
            s,
        )
        .with_note(format!(
            "seeded synthetic [84, {}] output with {} objects (synth.rs): {cand_anchors} anchors / {cand_pairs} (anchor, class) pairs pass conf",
            syn.anchors, syn.objects
        ));
        f.extra.insert("kept".into(), kept as f64);
        let req = json!({"op": "nms", "path": raw, "nc": 80, "anchors": syn.anchors, "conf": cfg.conf,
                         "iou": cfg.iou, "multi_label": cfg.multi_label, "warmup": 5.min(plan.nms_iters),
                         "iters": plan.nms_iters, "budget_s": CHEAP_BUDGET_S, "threads": 1});
        if let Some(a) = ctx.reference("ultralytics", req, Duration::from_secs(300), &format!("NMS {label}")) {
            if let Some(s) = refs::times(&a).ok().and_then(|t| Stats::from_samples(&t)) {
                f.add_reference("Ultralytics non_max_suppression", s);
            }
            if let Some(i) = a["impl"].as_str() {
                f.note = Some(format!(
                    "{}; Ultralytics with {i}, one torch thread as ours",
                    f.note.take().unwrap_or_default()
                ));
            }
            if let Some(k) = a["kept"].as_f64() {
                f.extra.insert("kept_by_ultralytics".into(), k);
            }
        }
        ctx.figures.push(f);
    }
    Ok(())
}

/// Letterbox of a real-size image, and the training transform through the training loader.
pub fn preprocess(ctx: &mut Ctx) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    ctx.progress.step("letterbox");
    let src = shapes::render(
        &ShapesConfig {
            train: 0,
            val: 1,
            imgsz: plan.letterbox_src,
            seed: 0,
            clutter: 4,
        },
        shapes::Split::Val,
        0,
    )
    .image;
    let (w, h) = src.dimensions();
    let lb = LetterBox::square(640);
    let t = times_ms(2, plan.letterbox_iters, || {
        let _ = lb.apply(&src);
    });
    if let Some(s) = Stats::from_samples(&t) {
        let mut f = Figure::new("preprocess.letterbox/640", "preprocess", format!("letterbox {w}x{h} to 640x640"), "ms", s)
            .with_note("one shapes image (seed 0), cv2-exact bilinear resize and padding, one thread (cv2 too)");
        if ctx.has_ref("ultralytics") {
            let png = ctx.work.join("letterbox_src.png");
            src.save(&png)
                .with_context(|| format!("{}: cannot write", png.display()))?;
            let req = json!({"op": "letterbox", "path": png, "imgsz": 640, "warmup": 2, "iters": plan.letterbox_iters,
                             "budget_s": CHEAP_BUDGET_S, "threads": 1});
            if let Some(a) = ctx.reference("ultralytics", req, Duration::from_secs(300), "letterbox") {
                if let Some(s) = refs::times(&a).ok().and_then(|t| Stats::from_samples(&t)) {
                    f.add_reference("Ultralytics LetterBox (cv2)", s);
                }
            }
        }
        ctx.figures.push(f);
    }

    for &imgsz in &plan.transform_sizes {
        ctx.progress.step(&format!("training transform at {imgsz}"));
        let root = ctx.work.join(format!("aug-{imgsz}"));
        let summary = shapes::generate(
            &ShapesConfig {
                train: plan.transform_samples,
                val: 1,
                imgsz: imgsz as u32,
                seed: 0,
                clutter: 0,
            },
            &root,
        )?;
        let data = DataConfig::from_yaml(&summary.data_yaml)?;
        let (samples, _) = load_split(&data, DataSplit::Train)?;
        let n = samples.len();
        let batch = 16.min(n);
        let loader = Arc::new(Loader {
            samples,
            imgsz,
            batch,
            seed: 0,
            shuffle: true,
            augment: Some((AugConfig::default(), usize::MAX)),
            cache: None,
        });
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
        let mut epoch = 0;
        let mut err = None;
        let one = times_ms(1, plan.transform_iters, || {
            epoch += 1;
            if let Err(e) = pool.install(|| loader.load_host(&[epoch % n], epoch)) {
                err = Some(e);
            }
        });
        let many = times_ms(1, plan.transform_iters, || {
            epoch += 1;
            let idx: Vec<usize> = (0..batch).map(|i| (epoch * batch + i) % n).collect();
            if let Err(e) = loader.load_host(&idx, epoch) {
                err = Some(e);
            }
        });
        if let Some(e) = err {
            return Err(e).context("training transform");
        }
        let what = "Mosaic, RandomPerspective, HSV, flips (Ultralytics' v8_transforms defaults) from the PNG files";
        if let Some(s) = Stats::from_samples(&one) {
            ctx.figures.push(
                Figure::new(
                    format!("preprocess.transform/{imgsz}/one-thread"),
                    "preprocess",
                    format!("training transform {imgsz}, one sample, one thread"),
                    "images/s",
                    s.inverse(1000.0),
                )
                .higher_is_better()
                .with_note(what),
            );
        }
        if let Some(s) = Stats::from_samples(&many) {
            ctx.figures.push(
                Figure::new(
                    format!("preprocess.transform/{imgsz}/batch"),
                    "preprocess",
                    format!("training transform {imgsz}, batch of {batch}, all cores"),
                    "images/s",
                    s.inverse(1000.0 * batch as f64),
                )
                .higher_is_better(),
            );
        }
    }
    Ok(())
}

/// One training step (the references' beside it, taking turns), then whole epochs on shapes
/// data (Ultralytics' `model.train` on the same data after ours).
pub fn training(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.begin_memory();
    let plan = ctx.plan.clone();
    let (size, batch) = plan.step;
    ctx.progress
        .step(&format!("train step yolov8n {size} batch {batch}"));
    let key = format!("train-n-{size}-b{batch}");
    let mut runtimes = Vec::new();
    let req = json!({"op": "prepare_train_step", "key": key, "scale": "n", "imgsz": size, "batch": batch,
                     "threads": ctx.refs_threads(), "device": ctx.ref_device});
    if let Some(a) = ctx.reference("ultralytics", req, Duration::from_secs(300), "train step") {
        runtimes = a["runtimes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }
    let mut step = TrainStep::new(Scale::N, batch, size, &ctx.device);
    let mut ours = Vec::new();
    let mut theirs = BTreeMap::new();
    let mut loss = 0.0f32;
    for _ in 0..plan.step_rounds {
        // On rayon's pool, where the trainer runs its steps.
        ours.extend(times_ms(plan.warmup, plan.step_iters, || {
            loss = backend::on_cpu_pool(|| step.step())
        }));
        time_refs(
            ctx,
            &key,
            &runtimes,
            plan.warmup,
            plan.step_iters,
            &mut theirs,
        );
    }
    drop(step);
    anyhow::ensure!(
        loss.is_finite(),
        "train step gave a non-finite loss ({loss})"
    );
    if let Some(s) = Stats::from_samples(&ours) {
        let mut f = Figure::new(format!("training.step/n/{size}/b{batch}"), "training", format!("train step yolov8n {size}x{size} batch {batch}"), "ms", s)
            .with_note("forward (train mode), v8 loss with the assigner, backward, clipping, Nesterov SGD (lib.rs TrainStep)");
        for (n, t) in &theirs {
            if let Some(s) = Stats::from_samples(t) {
                f.add_reference(n.clone(), s);
            }
        }
        ctx.figures.push(f);
    }

    ctx.progress
        .step(&format!("{} epoch(s) of shapes training", plan.epochs));
    let root = ctx.work.join("shapes-train");
    let summary = shapes::generate(
        &ShapesConfig {
            train: plan.epoch_train,
            val: plan.epoch_val,
            imgsz: plan.epoch_imgsz as u32,
            seed: 0,
            clutter: 0,
        },
        &root,
    )?;
    let cfg = TrainConfig {
        data: summary.data_yaml.clone(),
        scale: Scale::N,
        epochs: plan.epochs,
        batch: plan.epoch_batch,
        imgsz: plan.epoch_imgsz,
        seed: 0,
        optimizer: OptimizerKind::Auto,
        val: false,
        project: ctx.work.join("runs"),
        name: "yolo-bench".into(),
        exist_ok: true,
        ..TrainConfig::default()
    };
    let run = yolo_train::train(&cfg, &ctx.device, yolo_train::Report::Quiet)?;
    let ips: Vec<f64> = run.epochs.iter().map(|e| e.images_per_s).collect();
    // The first epoch pays one-time costs (allocations, the first batches' buffers).
    let (used, which) = if ips.len() >= 2 {
        (&ips[1..], "epochs 2 on")
    } else {
        (&ips[..], "the only epoch")
    };
    let train_images = summary.train_images;
    if let Some(s) = Stats::from_samples(used) {
        let mut f =
            Figure::new(
                format!(
                    "training.epoch/n/{}/b{}",
                    plan.epoch_imgsz, plan.epoch_batch
                ),
                "training",
                format!(
                    "whole-epoch training yolov8n {} batch {}, {train_images} shapes images",
                    plan.epoch_imgsz, plan.epoch_batch
                ),
                "images/s",
                s,
            )
            .higher_is_better()
            .with_note(format!(
            "train phase of each epoch (loading, augmentation, steps, EMA), {which}; per epoch: {}",
            ips.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", ")
        ));
        if ctx.has_ref("ultralytics") {
            ctx.progress
                .println("Ultralytics training on the same data (its model.train, workers=0)...");
            let req = json!({"op": "train", "data": summary.data_yaml, "scale": "n", "epochs": plan.epochs,
                             "imgsz": plan.epoch_imgsz, "batch": plan.epoch_batch, "nbs": cfg.nbs,
                             "train_images": train_images, "work": ctx.work, "threads": ctx.refs_threads(),
                             "device": ctx.ref_device});
            if let Some(a) = ctx.reference("ultralytics", req, Duration::from_secs(1800), "training") {
                let v: Vec<f64> = a["images_per_s"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_f64())
                    .collect();
                let used = if v.len() >= 2 { &v[1..] } else { &v[..] };
                if let Some(s) = Stats::from_samples(used) {
                    f.add_reference("Ultralytics model.train (PyTorch)", s);
                }
            }
        }
        ctx.figures.push(f);
    }
    ctx.end_memory("training");
    Ok(())
}

/// `yolo-infer serve` under `connections` client threads.
pub fn serving(ctx: &mut Ctx, infer: Option<&Path>) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    ctx.progress
        .step(&format!("serve, {} connections", plan.connections));
    let Some(infer) = infer else {
        ctx.note("serving skipped: no yolo-infer binary next to yolo-bench (build it: cargo build --release -p yolo-infer) and no --infer");
        return Ok(());
    };
    let (ckpt, _) = ctx.checkpoint(Scale::N)?;
    let img = shapes::render(
        &ShapesConfig {
            train: 0,
            val: 1,
            imgsz: plan.serve_imgsz as u32,
            seed: 0,
            clutter: 0,
        },
        shapes::Split::Val,
        0,
    )
    .image;
    let mut body = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut body, 90).encode_image(&img)?;
    let log = ctx.work.join("serve.log");
    let load = serve::run(&LoadConfig {
        infer,
        weights: &ckpt,
        imgsz: plan.serve_imgsz,
        body: &body,
        content_type: "image/jpeg",
        connections: plan.connections,
        warmup: plan.serve_warmup,
        window: plan.serve_window,
        log: &log,
    })
    .with_context(|| format!("serving with {}", infer.display()))?;
    let c = plan.connections;
    let what = format!(
        "yolov8n at {}, a {}x{} JPEG ({} bytes) POSTed to /v1/detect by {c} keep-alive clients; {:.0} s measured after {:.0} s",
        plan.serve_imgsz,
        img.width(),
        img.height(),
        body.len(),
        load.window_s,
        plan.serve_warmup.as_secs_f64()
    );
    if load.ok == 0 {
        ctx.note(format!(
            "serving: no request answered 200 ({} non-2xx, {} errors; log {})",
            load.non_2xx,
            load.errors,
            log.display()
        ));
        return Ok(());
    }
    let rps = Stats::from_samples(&load.rps_per_second).unwrap_or_else(|| Stats::single(load.rps));
    let mut f = Figure::new(
        format!("serving.rps/c{c}"),
        "serving",
        format!("serve requests/s, {c} connections"),
        "requests/s",
        rps,
    )
    .higher_is_better()
    .with_note(format!("{what}; median/min/max over 1-s windows"));
    f.extra.insert("overall".into(), load.rps);
    f.extra.insert("ok".into(), load.ok as f64);
    f.extra.insert("non_2xx".into(), load.non_2xx as f64);
    f.extra.insert("errors".into(), load.errors as f64);
    if let Some(b) = load.mean_batch {
        f.extra.insert("mean_batch".into(), b);
    }
    ctx.figures.push(f);
    if let Some(s) = Stats::from_samples(&load.latencies_ms) {
        let mut f = Figure::new(
            format!("serving.latency/c{c}"),
            "serving",
            format!("serve latency, {c} connections"),
            "ms",
            s,
        );
        for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            if let Some(v) = quantile(&load.latencies_ms, q) {
                f.extra.insert(k.into(), v);
            }
        }
        ctx.figures.push(f);
    }
    if let Some(kib) = load.server_peak_rss_kib {
        ctx.figures.push(Figure::new(
            "memory.peak_rss/serve",
            "memory",
            "peak RSS, yolo-infer serve (its process)",
            "MiB",
            Stats::single(kib as f64 / 1024.0),
        ));
    }
    if load.non_2xx + load.errors > 0 {
        ctx.note(format!(
            "serving: {} non-2xx answers and {} connection errors in the window",
            load.non_2xx, load.errors
        ));
    }
    Ok(())
}

//! The training loop of Ultralytics 8.4.190's `BaseTrainer._do_train`, written out: forward on
//! the autodiff model, `v8_detection_loss`, backward, gradient accumulation up to `nbs`,
//! global-norm clipping (10.0), the grouped optimizer step with warmup LR / momentum, the EMA
//! update; per epoch validation losses and mAP of the EMA model, `results.csv`, `last` and
//! `best` checkpoints (EMA weights) and the resume state (`weights/last.state`).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;
use yolo_core::burn;
use yolo_core::data::check::{check_dataset, CheckOptions, PRINT_FINDINGS};
use yolo_core::data::dataset::{DataConfig, Split};
use yolo_core::weights::{self, CheckpointMeta};
use yolo_core::{ModelConfig, YoloV8};

use crate::amp::{scale_loss, GradScaler};
use crate::config::TrainConfig;
use crate::ema::ModelEma;
use crate::error::{Result, TrainError};
use crate::loader::Loader;
use crate::loss::{v8_detection_loss, LossConfig};
use crate::optim::{clip_and_step, resolve_optimizer, YoloOptimizer};
use crate::resume as state;
use crate::schedule::{accumulate, scaled_weight_decay, warmup_iterations, LrLambda, Warmup};

/// Columns of `results.csv`, in order.
pub const RESULTS_HEADER: [&str; 14] = [
    "epoch",
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "metrics/precision(B)",
    "metrics/recall(B)",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
    "lr/pg0",
    "lr/pg1",
    "lr/pg2",
];

/// How `best` is chosen when mAP is measured: [`DetMetrics::fitness`], mAP50-95 alone, as
/// Ultralytics 8.4.190 (v8-era releases weighted 0.1·mAP50 + 0.9·mAP50-95; runs resumed from
/// states written under that rule continue under this one).
pub const FITNESS_MAP: &str = yolo_core::metrics::FITNESS_RULE;

/// The rule states written before the switch to [`FITNESS_MAP`] name.
const FITNESS_MAP_V8: &str = "0.1*mAP50+0.9*mAP50-95";

/// Batches loaded ahead of the training step.
pub const PREFETCH: usize = 2;

/// Max gradient norm (`clip_grad_norm_(max_norm=10.0)` in `optimizer_step`).
pub const MAX_GRAD_NORM: f64 = 10.0;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A progress line on stderr, redrawn per batch, kept per epoch.
    Bar,
    /// Nothing.
    Quiet,
    /// One JSON object per epoch on stdout.
    Json,
}

pub use yolo_core::metrics::DetMetrics;

/// mAP of the EMA model on the validation split, with yolo-core's validation loop (the one
/// `yolo-infer val` uses): Ultralytics' rect batches, conf 0.001, IoU 0.7, max_det 300.
/// `autocast`: the forward runs under an f16 autocast scope (the convs in f16, the weights
/// f32), as Ultralytics 8.4 validates when it trains with AMP on a GPU.
pub fn val_metrics(ema: &YoloV8, val: &Loader, device: &Device, autocast: bool) -> Result<DetMetrics> {
    let cfg = yolo_core::val::ValConfig {
        imgsz: val.imgsz as u32,
        batch: val.batch,
        ..Default::default()
    };
    let _scope = autocast.then(|| yolo_core::amp::autocast(Some(yolo_core::amp::DTYPE)));
    let m = yolo_core::val::evaluate(&ema.clone().fuse(), &val.samples, &[], &cfg, device)?;
    Ok(DetMetrics {
        precision: m.precision,
        recall: m.recall,
        map50: m.map50,
        map50_95: m.map50_95,
    })
}

/// What one epoch produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    /// Mean train loss items (box, cls, dfl) over the epoch.
    pub train_loss: [f64; 3],
    /// Mean validation loss items of the EMA model.
    pub val_loss: Option<[f64; 3]>,
    pub metrics: Option<DetMetrics>,
    /// LR of the groups at the end of the epoch (weights, BN weights, biases).
    pub lr: [f64; 3],
    pub momentum: f64,
    pub images_per_s: f64,
    pub seconds: f64,
    /// Seconds of the epoch's training loop spent waiting for the loader's next batch (decode
    /// and augmentation run ahead on other threads): near 0 when the loader keeps the step fed;
    /// a large share of the training time means the step (a GPU's, say) outruns the loader.
    pub data_wait_s: f64,
    pub fitness: f64,
    /// Optimizer steps so far.
    pub steps: u64,
    /// With `amp`: the loss scale at the end of the epoch, and the optimizer steps of the
    /// epoch skipped because a gradient overflowed in half precision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amp: Option<AmpStats>,
}

/// The loss scaling of an epoch of mixed precision training.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AmpStats {
    pub loss_scale: f32,
    pub skipped_steps: usize,
}

/// What one iteration of the loop did, after its optimizer step if it made one: the schedule
/// Ultralytics' `BaseTrainer._do_train` follows (see tests/schedule.rs).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepTrace {
    /// 0-based epoch.
    pub epoch: usize,
    /// Batch index in the epoch.
    pub batch: usize,
    /// Global iteration `batch + nb * epoch`.
    pub ni: usize,
    /// Batches accumulated per optimizer step at this iteration.
    pub accumulate: usize,
    /// LR of the groups (weights, BatchNorm weights, biases).
    pub lr: [f64; 3],
    /// SGD's momentum, or AdamW's `beta_1`.
    pub momentum: f64,
    /// Weight decay of the weights group (scaled by `batch * accumulate / nbs`).
    pub weight_decay: f64,
    /// Whether this iteration stepped the optimizer.
    pub optimizer_step: bool,
    /// Optimizer steps (= EMA updates) so far.
    pub ema_updates: u64,
    /// Whether Mosaic was on for this batch.
    pub mosaic: bool,
    /// Images in the batch.
    pub images: usize,
}

/// The result of a training run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub last: PathBuf,
    pub best: PathBuf,
    pub best_epoch: usize,
    pub best_fitness: f64,
    /// [`FITNESS_MAP`] or `"val loss"` (or `"train loss"` without a val split).
    pub fitness_from: &'static str,
    pub epochs: Vec<EpochStats>,
}

pub use yolo_core::runs::increment_path;

/// Builds the model: fresh weights, or `cfg.weights` (same architecture as the checkpoint).
/// With another class count every tensor is taken from the checkpoint except the last conv of
/// each class branch (`model.22.cv3.*.2`), which stays freshly initialised; when the class
/// branch's hidden width (`max(ch0, min(nc, 100))`) changes too, its first two convs stay fresh
/// as well (Ultralytics' `intersect_dicts` drops mismatched shapes the same way).
pub fn init_model(cfg: &TrainConfig, nc: usize, device: &Device) -> Result<(YoloV8, ModelConfig)> {
    let Some(path) = &cfg.weights else {
        let model_cfg = match cfg.multiples {
            Some(m) => ModelConfig::custom(m, nc),
            None => ModelConfig::new(cfg.scale, nc),
        };
        let model = model_cfg.init_seeded(device, cfg.seed)?;
        return Ok((model, model_cfg));
    };
    let meta = weights::read_meta(path)?;
    let mut model_cfg = meta.model.clone();
    model_cfg.nc = nc;
    let mut model = model_cfg.init_seeded(device, cfg.seed)?;
    if meta.model.nc == nc {
        weights::load_weights(&mut model, path)?;
        return Ok((model, model_cfg));
    }
    let (old, _) = weights::load_model(path, device)?;
    model.backbone = old.backbone;
    model.neck = old.neck;
    model.head.cv2 = old.head.cv2;
    model.head.dfl = old.head.dfl;
    for (new, mut old) in model.head.cv3.iter_mut().zip(old.head.cv3) {
        let width = |b: &[yolo_core::nn::head::BranchLayer]| match &b[0] {
            yolo_core::nn::head::BranchLayer::Conv(c) => c.conv.weight.dims()[0],
            yolo_core::nn::head::BranchLayer::Out(c) => c.weight.dims()[0],
        };
        if width(new) == width(&old) {
            old.truncate(2);
            old.push(new.pop().expect("branch has three layers"));
            *new = old;
        }
    }
    Ok((model, model_cfg))
}

/// `%.6g` as Python formats it (enough for results.csv).
fn g6(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let exp = v.abs().log10().floor() as i32;
    if (-4..6).contains(&exp) {
        let decimals = (5 - exp).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let s = format!("{v:.5e}");
        let (m, e) = s.split_once('e').unwrap();
        let m = if m.contains('.') {
            m.trim_end_matches('0').trim_end_matches('.')
        } else {
            m
        };
        let e: i32 = e.parse().unwrap();
        format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    }
}

fn csv_row(s: &EpochStats) -> String {
    let opt = |v: Option<f64>| v.map(g6).unwrap_or_default();
    let m = s.metrics;
    let vl = |i: usize| opt(s.val_loss.map(|v| v[i]));
    [
        s.epoch.to_string(),
        g6(s.train_loss[0]),
        g6(s.train_loss[1]),
        g6(s.train_loss[2]),
        opt(m.map(|m| m.precision)),
        opt(m.map(|m| m.recall)),
        opt(m.map(|m| m.map50)),
        opt(m.map(|m| m.map50_95)),
        vl(0),
        vl(1),
        vl(2),
        g6(s.lr[0]),
        g6(s.lr[1]),
        g6(s.lr[2]),
    ]
    .join(",")
}

fn loss_items(components: burn::tensor::Tensor<1>) -> Result<[f64; 3]> {
    let v: Vec<f32> = components
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("loss components convert to f32");
    Ok([v[0] as f64, v[1] as f64, v[2] as f64])
}

/// Mean validation loss items of `model` (eval mode, plain device) over `val`, as the
/// validator's `loss / len(dataloader)`.
pub fn val_loss(model: &YoloV8, val: &Loader, loss_cfg: &LossConfig, device: &Device) -> Result<[f64; 3]> {
    let meta = model.meta();
    let mut sum = [0.0; 3];
    let batches = val.batches(0);
    for idx in &batches {
        let batch = val.load(idx, 0, device)?;
        let out = model.forward(batch.images);
        let l = loss_items(v8_detection_loss(&out, &meta, &batch.targets, loss_cfg).components)?;
        for k in 0..3 {
            sum[k] += l[k];
        }
    }
    let n = batches.len().max(1) as f64;
    Ok(sum.map(|s| s / n))
}

/// Trains as configured on `device` (its autodiff twin is used for training). Writes the run
/// folder `project/name[N]` and returns the summary.
pub fn train(cfg: &TrainConfig, device: &Device, report: Report) -> Result<TrainSummary> {
    train_with(cfg, device, report, |_| ControlFlow::Continue(()))
}

/// [`train`] with a callback after every epoch (after its checkpoints and state are written);
/// `ControlFlow::Break` stops the run there, as an interruption would (it can be resumed).
pub fn train_with(
    cfg: &TrainConfig,
    device: &Device,
    report: Report,
    on_epoch: impl FnMut(&EpochStats) -> ControlFlow<()>,
) -> Result<TrainSummary> {
    train_traced(cfg, device, report, on_epoch, |_| {})
}

/// [`train_with`] with a second callback after every iteration, with what it did (LR,
/// momentum, accumulation, optimizer step, mosaic).
pub fn train_traced(
    cfg: &TrainConfig,
    device: &Device,
    report: Report,
    on_epoch: impl FnMut(&EpochStats) -> ControlFlow<()>,
    on_step: impl FnMut(&StepTrace),
) -> Result<TrainSummary> {
    cfg.validate()?;
    let run_dir = increment_path(&cfg.project.join(&cfg.name), cfg.exist_ok);
    let weights_dir = run_dir.join("weights");
    std::fs::create_dir_all(&weights_dir).map_err(|e| TrainError::io(&weights_dir, e))?;
    cfg.save_yaml(&run_dir.join("args.yaml"))?;
    let csv_path = run_dir.join("results.csv");
    std::fs::write(&csv_path, RESULTS_HEADER.join(",") + "\n").map_err(|e| TrainError::io(&csv_path, e))?;
    run(cfg, run_dir, None, device, report, on_epoch, on_step)
}

/// The training state file of a run folder.
pub fn state_path(run_dir: &Path) -> PathBuf {
    run_dir.join("weights").join("last.state")
}

/// Continues the run in `run_dir` (its `args.yaml` and `weights/last.state`) from the end of
/// its last completed epoch, exactly as if it had not stopped. `results.csv` keeps the rows of
/// the completed epochs; the summary lists the epochs run by this call.
pub fn resume(run_dir: &Path, device: &Device, report: Report) -> Result<TrainSummary> {
    resume_with(run_dir, device, report, |_| ControlFlow::Continue(()))
}

/// [`resume`] with a per-epoch callback, as [`train_with`].
pub fn resume_with(
    run_dir: &Path,
    device: &Device,
    report: Report,
    on_epoch: impl FnMut(&EpochStats) -> ControlFlow<()>,
) -> Result<TrainSummary> {
    let args = run_dir.join("args.yaml");
    let state = state_path(run_dir);
    for p in [&args, &state] {
        if !p.exists() {
            return Err(TrainError::Resume {
                path: run_dir.into(),
                message: format!("{} is missing (not a run folder, or no epoch finished)", p.display()),
            });
        }
    }
    let cfg = TrainConfig::load_yaml(&args)?;
    cfg.validate()?;
    let restored = state::load_state(&state, &device.clone().autodiff(), device)?;
    if restored.state.epoch >= cfg.epochs {
        return Err(TrainError::Resume {
            path: run_dir.into(),
            message: format!("all {} epochs are done", cfg.epochs),
        });
    }
    // Keep the header and the rows of completed epochs (a row may have been written after the
    // last state, by an epoch that did not finish saving).
    let csv_path = run_dir.join("results.csv");
    let text = std::fs::read_to_string(&csv_path).unwrap_or_default();
    let mut kept = RESULTS_HEADER.join(",") + "\n";
    for line in text.lines().skip(1) {
        match line.split(',').next().and_then(|e| e.parse::<usize>().ok()) {
            Some(e) if e <= restored.state.epoch => kept += &format!("{line}\n"),
            _ => {}
        }
    }
    yolo_core::files::write_atomic(&csv_path, kept.as_bytes())?;
    run(&cfg, run_dir.to_path_buf(), Some(restored), device, report, on_epoch, |_| {})
}

/// The loop, from scratch or from a restored state.
fn run(
    cfg: &TrainConfig,
    run_dir: PathBuf,
    restored: Option<state::Restored>,
    device: &Device,
    report: Report,
    mut on_epoch: impl FnMut(&EpochStats) -> ControlFlow<()>,
    mut on_step: impl FnMut(&StepTrace),
) -> Result<TrainSummary> {
    let data = DataConfig::from_yaml(&cfg.data)?;
    let nc = data.nc();
    // Every split the yaml gives is checked (the report covers train/val leakage), and the
    // report is printed and saved in the run folder.
    let splits: Vec<Split> = [Split::Train, Split::Val, Split::Test]
        .into_iter()
        .filter(|s| data.sources(*s).is_some())
        .collect();
    let (checked, data_report) = check_dataset(&data, &splits, CheckOptions::default())?;
    let report_file = run_dir.join("data_report.json");
    if report != Report::Quiet {
        eprint!("{}", data_report.summary(PRINT_FINDINGS, Some(&report_file)));
    }
    data_report.save(&report_file)?;
    let samples_of = |split: Split| {
        checked
            .iter()
            .find(|(s, _)| *s == split)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let train_samples = samples_of(Split::Train);
    if train_samples.is_empty() {
        return Err(data_report.no_valid_images(Split::Train).into());
    }
    let val_samples = if cfg.val && data.sources(Split::Val).is_some() {
        let v = samples_of(Split::Val);
        if v.is_empty() {
            return Err(data_report.no_valid_images(Split::Val).into());
        }
        v
    } else {
        vec![]
    };
    drop(checked);
    let weights_dir = run_dir.join("weights");
    let csv_path = run_dir.join("results.csv");

    let ad = device.clone().autodiff();
    let (model, model_cfg, ema_model, start) = match restored {
        Some(r) => {
            if r.meta.model.nc != nc {
                return Err(TrainError::Resume {
                    path: run_dir.clone(),
                    message: format!("the state has {} classes, the data {nc}", r.meta.model.nc),
                });
            }
            let start = (r.state.clone(), r.optimizer, r.pending);
            (r.model, r.meta.model, r.ema, Some(start))
        }
        None => {
            let (model, model_cfg) = init_model(cfg, nc, &ad)?;
            let model = state::stable_param_ids(model);
            let ema = model.valid();
            (model, model_cfg, ema, None)
        }
    };
    let mut model = model;
    let meta = model.meta();
    let loss_cfg = LossConfig {
        box_gain: cfg.box_gain as f32,
        cls_gain: cfg.cls as f32,
        dfl_gain: cfg.dfl as f32,
        reg_max: meta.reg_max,
        ..LossConfig::default()
    };

    let train_samples_len = train_samples.len();
    // Ultralytics closes mosaic at epoch `epochs - close_mosaic` (never when negative).
    let close_mosaic_from = cfg.epochs.checked_sub(cfg.close_mosaic).unwrap_or(usize::MAX);
    let train = std::sync::Arc::new(Loader {
        samples: train_samples,
        imgsz: cfg.imgsz,
        batch: cfg.batch,
        seed: cfg.seed,
        shuffle: true,
        augment: Some((cfg.aug.clone(), close_mosaic_from)),
        cache: cfg
            .cache
            .then(|| std::sync::Arc::new(crate::loader::RamCache::new(train_samples_len))),
    });
    let val = Loader {
        samples: val_samples,
        imgsz: cfg.imgsz,
        batch: cfg.batch * 2,
        seed: cfg.seed,
        shuffle: false,
        augment: None,
        cache: None,
    };
    let nb = train.len();
    let acc_nominal = accumulate(cfg.nbs, cfg.batch);
    let weight_decay = scaled_weight_decay(cfg.weight_decay, cfg.batch, acc_nominal, cfg.nbs);
    let acc0 = acc_nominal.min(nb * cfg.epochs);
    let choice = resolve_optimizer(
        cfg.optimizer,
        cfg.lr0,
        cfg.momentum,
        cfg.warmup_bias_lr,
        nc,
        train.samples.len(),
        cfg.batch,
        cfg.nbs,
        cfg.epochs,
    );
    let mut optim = YoloOptimizer::new(&model, choice, weight_decay);
    let lf = LrLambda {
        epochs: cfg.epochs,
        lrf: cfg.lrf,
        cos: cfg.cos_lr,
    };
    // Warmup ramps momentum towards `args.momentum`, also when `auto` chose another one for
    // the optimizer (as 8.4.190 does).
    let warmup = Warmup {
        nw: warmup_iterations(cfg.warmup_epochs, cfg.epochs, nb),
        accumulate: acc0,
        warmup_bias_lr: choice.warmup_bias_lr,
        warmup_momentum: cfg.warmup_momentum,
        momentum: cfg.momentum,
    };
    let mut ema = ModelEma::new(ema_model);
    let mut accum = GradientsAccumulator::<YoloV8>::new();
    let mut last_opt_step: i64 = -1;
    let mut accumulate_now = acc0;
    let mut momentum = choice.momentum;
    // Mixed precision: convs in f16 under autocast, the loss scaled (Ultralytics' amp=True).
    // Ultralytics' `check_amp` turns AMP off with a warning where it does not work; here, on a
    // device without f16 arithmetic (a Vulkan adapter without `shaderFloat16`, say), whose
    // kernels would otherwise compute garbage.
    let amp = cfg.amp && yolo_core::amp::supported(device);
    if report != Report::Quiet {
        if cfg.amp && !amp {
            eprintln!("warning: amp: {device:?} has no f16 arithmetic; training in f32");
        } else if amp && yolo_core::cpu::flex::is_flex(device) {
            // yolo-train turns amp off on the CPU; a library caller or a resumed GPU run gets here.
            eprintln!("warning: amp on the CPU (flex): f16 is emulated there, slower than f32");
        }
    }
    let mut scaler = amp.then(GradScaler::default);
    let mut best_fitness = f64::NEG_INFINITY;
    let mut best_epoch = 0;
    let mut first_epoch = 0;
    let fitness_from = if val.is_empty() {
        "train loss"
    } else {
        "val loss"
    };
    let mut fitness_from_used = fitness_from;
    if let Some((state, optimizer, pending)) = start {
        optim.load_state_bytes(optimizer, device).map_err(|message| TrainError::State {
            path: state_path(&run_dir),
            message: format!("optimizer: {message}"),
        })?;
        if amp {
            // A state saved without amp (or before the scaler was saved) starts a fresh scale.
            scaler = Some(state.grad_scaler.unwrap_or_default());
        }
        // The pending gradients carry the loss scale they were computed at (1 without amp).
        let pending = crate::optim::rescale_pending(&model, pending, state.grad_scaler.as_ref(), scaler.as_ref());
        accum.accumulate(&model, pending);
        ema.updates = state.ema_updates;
        last_opt_step = state.last_opt_step;
        accumulate_now = state.accumulate;
        momentum = state.momentum;
        best_fitness = state.best_fitness;
        best_epoch = state.best_epoch;
        first_epoch = state.epoch;
        fitness_from_used = match state.fitness_from.as_str() {
            FITNESS_MAP | FITNESS_MAP_V8 => FITNESS_MAP,
            "val loss" => "val loss",
            _ => "train loss",
        };
    }
    optim.set_momentum(momentum);

    let ckpt_meta = |epoch: usize, fitness: f64, ema_updates: u64| {
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("epoch".into(), epoch.to_string());
        extra.insert("fitness".into(), fitness.to_string());
        extra.insert("ema_updates".into(), ema_updates.to_string());
        CheckpointMeta {
            model: model_cfg.clone(),
            names: data.names.clone(),
            imgsz: cfg.imgsz,
            extra,
        }
    };

    let last = weights_dir.join("last.safetensors");
    let best = weights_dir.join("best.safetensors");
    let mut history = Vec::new();

    for epoch in first_epoch..cfg.epochs {
        let t0 = Instant::now();
        let lr_epoch = choice.lr0 * lf.factor(epoch);
        let mut lr = [lr_epoch; 3];
        let mut tloss = [0.0f64; 3];
        let mut images = 0usize;
        let mut data_wait_s = 0.0;
        let mut skipped_steps = 0usize;
        // The next batches load (decode + augment, rayon) on another thread during the step.
        let mut batches = train.prefetch(epoch, PREFETCH).enumerate();
        loop {
            let waiting = Instant::now();
            let Some((i, item)) = batches.next() else { break };
            data_wait_s += waiting.elapsed().as_secs_f64();
            let (idx, host) = item?;
            let ni = i + nb * epoch;
            if let Some(s) = warmup.at(ni, [lr_epoch; 3]) {
                accumulate_now = s.accumulate;
                lr = s.lr;
                momentum = s.momentum;
                optim.set_momentum(momentum);
            }
            let batch = host.to_device(&ad);
            images += idx.len();
            // The step runs on rayon's pool, where the CPU kernels' parallel regions run
            // inline instead of being handed over from this thread one by one.
            let (next, items) = yolo_core::backend::on_cpu_pool(|| {
                let loss = {
                    // Autocast is per thread: opened here, on the thread that runs the forward.
                    let _autocast = yolo_core::amp::autocast(scaler.map(|_| yolo_core::amp::DTYPE));
                    let out = model.forward(batch.images);
                    v8_detection_loss(&out, &meta, &batch.targets, &loss_cfg)
                };
                let items = match loss_items(loss.components) {
                    Ok(items) if items.iter().all(|v| v.is_finite()) => items,
                    Ok(_) => return (model, Err(TrainError::NonFiniteLoss { epoch: epoch + 1, batch: i })),
                    Err(e) => return (model, Err(e)),
                };
                let total = scale_loss(scaler.as_ref(), loss.total);
                let grads = GradientsParams::from_grads(total.backward(), &model);
                accum.accumulate(&model, grads);
                let mut model = model;
                if ni as i64 - last_opt_step >= accumulate_now as i64 {
                    let (next, stepped) = clip_and_step(model, accum.grads(), MAX_GRAD_NORM, scaler.as_mut(), |m, g| optim.step(lr, m, g));
                    model = next;
                    if !stepped {
                        skipped_steps += 1;
                    }
                    last_opt_step = ni as i64;
                    // Ultralytics updates the EMA after a skipped step too.
                    ema.update(&model.valid());
                }
                (model, Ok(items))
            });
            model = next;
            let items = items?;
            on_step(&StepTrace {
                epoch,
                batch: i,
                ni,
                accumulate: accumulate_now,
                lr,
                momentum: match choice.kind {
                    crate::config::OptimizerKind::AdamW => choice.momentum,
                    _ => momentum,
                },
                weight_decay,
                optimizer_step: last_opt_step == ni as i64,
                ema_updates: ema.updates,
                mosaic: cfg.aug.mosaic > 0.0 && epoch < close_mosaic_from,
                images: idx.len(),
            });
            for k in 0..3 {
                tloss[k] = (tloss[k] * i as f64 + items[k]) / (i + 1) as f64;
            }
            if report == Report::Bar {
                let secs = t0.elapsed().as_secs_f64();
                eprint!(
                    "\r{:>5}/{:<5} box {:.4} cls {:.4} dfl {:.4}  lr {:.3e}  {:.1} img/s  {}/{} ",
                    epoch + 1,
                    cfg.epochs,
                    tloss[0],
                    tloss[1],
                    tloss[2],
                    lr[0],
                    images as f64 / secs.max(1e-9),
                    i + 1,
                    nb
                );
            }
        }
        let train_secs = t0.elapsed().as_secs_f64();

        let (val_loss_items, metrics) = if val.is_empty() {
            (None, None)
        } else {
            (
                Some(val_loss(&ema.model, &val, &loss_cfg, device)?),
                // Ultralytics: autocast in validation with AMP, on a GPU only.
                Some(val_metrics(&ema.model, &val, device, amp && !yolo_core::cpu::flex::is_flex(device))?),
            )
        };
        let fitness = match (metrics, val_loss_items) {
            (Some(m), _) => {
                fitness_from_used = FITNESS_MAP;
                m.fitness()
            }
            (None, Some(v)) => -(v[0] + v[1] + v[2]),
            (None, None) => -(tloss[0] + tloss[1] + tloss[2]),
        };
        let stats = EpochStats {
            epoch: epoch + 1,
            epochs: cfg.epochs,
            train_loss: tloss,
            val_loss: val_loss_items,
            metrics,
            lr,
            momentum,
            images_per_s: images as f64 / train_secs.max(1e-9),
            seconds: t0.elapsed().as_secs_f64(),
            data_wait_s,
            fitness,
            steps: ema.updates,
            amp: scaler.map(|s| AmpStats {
                loss_scale: s.scale,
                skipped_steps,
            }),
        };
        let meta = ckpt_meta(epoch + 1, fitness, ema.updates);
        weights::save_model(&ema.model, &meta, &last)?;
        if fitness > best_fitness {
            best_fitness = fitness;
            best_epoch = epoch + 1;
            weights::save_model(&ema.model, &meta, &best)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&csv_path)
            .map_err(|e| TrainError::io(&csv_path, e))?;
        writeln!(f, "{}", csv_row(&stats)).map_err(|e| TrainError::io(&csv_path, e))?;
        drop(f);
        // The state last: a run killed before this line resumes from the previous epoch.
        let pending = accum.grads();
        let optimizer = optim.state_bytes().map_err(|message| TrainError::State {
            path: state_path(&run_dir),
            message: format!("optimizer: {message}"),
        })?;
        state::save_state(
            &state_path(&run_dir),
            &state::TrainState {
                epoch: epoch + 1,
                best_fitness,
                best_epoch,
                fitness_from: fitness_from_used.to_string(),
                ema_updates: ema.updates,
                last_opt_step,
                accumulate: accumulate_now,
                momentum,
                grad_scaler: scaler,
            },
            &meta,
            &model,
            &ema.model,
            &optimizer,
            &pending,
        )?;
        accum.accumulate(&model, pending);
        match report {
            Report::Bar => {
                let v = stats
                    .val_loss
                    .map(|v| format!("  val box {:.4} cls {:.4} dfl {:.4}", v[0], v[1], v[2]))
                    .unwrap_or_default();
                eprintln!("{v}  ({:.1}s, data wait {:.1}s)", stats.seconds, stats.data_wait_s);
            }
            Report::Json => println!("{}", serde_json::to_string(&stats).expect("stats serialise")),
            Report::Quiet => {}
        }
        let flow = on_epoch(&stats);
        history.push(stats);
        if flow.is_break() || (cfg.patience > 0 && epoch + 1 - best_epoch >= cfg.patience) {
            break;
        }
    }
    Ok(TrainSummary {
        run_dir,
        last,
        best,
        best_epoch,
        best_fitness,
        fitness_from: fitness_from_used,
        epochs: history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fine-tuning from a checkpoint with another class count keeps everything but the class
    /// branch's last conv (and its first two when the hidden width changes).
    #[test]
    fn fine_tune_reinitialises_only_the_class_output() {
        use yolo_core::nn::head::BranchLayer;
        use yolo_core::Multiples;
        let dir = tempfile::tempdir().unwrap();
        let device = yolo_core::backend::cpu_device();
        let m = Multiples {
            depth: 0.33,
            width: 0.0625,
            max_channels: 1024,
        };
        // Hidden width of the class branch: max(ch0, min(nc, 100)) = 16 for nc 3 and nc 5.
        let src = ModelConfig::custom(m, 3).init_seeded(&device, 1).unwrap();
        let path = dir.path().join("src.safetensors");
        let meta = CheckpointMeta {
            model: ModelConfig::custom(m, 3),
            names: vec!["a".into(), "b".into(), "c".into()],
            imgsz: 64,
            extra: Default::default(),
        };
        weights::save_model(&src, &meta, &path).unwrap();
        let cfg = TrainConfig {
            weights: Some(path),
            ..TrainConfig::default()
        };
        let v = |t: burn::tensor::Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        let out_w = |b: &[BranchLayer]| match &b[2] {
            BranchLayer::Out(c) => c.weight.val(),
            _ => unreachable!(),
        };
        let conv_w = |b: &[BranchLayer], i: usize| match &b[i] {
            BranchLayer::Conv(c) => c.conv.weight.val(),
            _ => unreachable!(),
        };
        let (same, cfg_same) = init_model(&cfg, 3, &device).unwrap();
        assert_eq!(cfg_same.nc, 3);
        assert_eq!(v(out_w(&same.head.cv3[0])), v(out_w(&src.head.cv3[0])));
        let (tuned, cfg5) = init_model(&cfg, 5, &device).unwrap();
        assert_eq!(cfg5.nc, 5);
        assert_eq!(tuned.meta().nc, 5);
        assert_eq!(v(tuned.backbone.stem.conv.weight.val()), v(src.backbone.stem.conv.weight.val()));
        for l in 0..3 {
            assert_eq!(v(out_w(&tuned.head.cv2[l])), v(out_w(&src.head.cv2[l])), "box branch {l}");
            assert_eq!(v(conv_w(&tuned.head.cv3[l], 0)), v(conv_w(&src.head.cv3[l], 0)), "cls conv {l}.0");
            assert_eq!(out_w(&tuned.head.cv3[l]).dims()[0], 5, "class output {l}");
        }
    }

    #[test]
    fn g6_formats_like_python() {
        assert_eq!(g6(1.0), "1");
        assert_eq!(g6(0.0001), "0.0001");
        assert_eq!(g6(1.23456789), "1.23457");
        assert_eq!(g6(0.000012345), "1.2345e-05");
        assert_eq!(g6(123456789.0), "1.23457e+08");
        assert_eq!(g6(0.0), "0");
    }

    #[test]
    fn increment_path_appends_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("train");
        assert_eq!(increment_path(&base, false), base);
        std::fs::create_dir(&base).unwrap();
        assert_eq!(increment_path(&base, false), dir.path().join("train2"));
        assert_eq!(increment_path(&base, true), base);
        std::fs::create_dir(dir.path().join("train2")).unwrap();
        assert_eq!(increment_path(&base, false), dir.path().join("train3"));
    }
}

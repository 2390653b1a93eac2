//! Shared helpers for the benchmarks: building inputs and timing on any backend; and the
//! `yolo-bench` suite ([`suite`]).

pub mod suite;

use std::time::Instant;

use yolo_core::burn::optim::GradientsParams;
use yolo_core::burn::tensor::{Device, Tensor, TensorData};
use yolo_core::{HeadMeta, ModelConfig, Scale, YoloV8};
use yolo_train::amp::{scale_loss, GradScaler};
use yolo_train::optim::{clip_and_step, OptimizerChoice, YoloOptimizer};
use yolo_train::{v8_detection_loss, LossConfig, OptimizerKind, Target, Targets};

/// A deterministic input in `[0, 1]`.
pub fn input(batch: usize, size: usize, device: &Device) -> Tensor<4> {
    let n = batch * 3 * size * size;
    let data: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    Tensor::from_data(TensorData::new(data, [batch, 3, size, size]), device)
}

/// Process CPU time in milliseconds (all threads; time the vCPUs spend descheduled on a
/// shared VM is not counted).
pub fn cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Wall time of each of `iters` runs of `f` (after `warmup` runs), in milliseconds.
pub fn times_ms(warmup: usize, iters: usize, f: impl FnMut()) -> Vec<f64> {
    warmup_and_times_ms(warmup, iters, f).1
}

/// The wall times of the `warmup` runs and of the `iters` timed runs that follow them, in
/// milliseconds. On a GPU backend the first runs include compiling (and, with autotune,
/// benchmarking) the kernels: the binaries report them as `warmup_ms`.
pub fn warmup_and_times_ms(warmup: usize, iters: usize, mut f: impl FnMut()) -> (Vec<f64>, Vec<f64>) {
    let mut timed = |_| {
        let s = Instant::now();
        f();
        s.elapsed().as_secs_f64() * 1e3
    };
    let warm = (0..warmup).map(&mut timed).collect();
    (warm, (0..iters.max(1)).map(&mut timed).collect())
}

/// Median and minimum wall time of `f` in milliseconds over `iters` runs after `warmup` runs.
pub fn time_ms(warmup: usize, iters: usize, f: impl FnMut()) -> (f64, f64) {
    let mut t = times_ms(warmup, iters, f);
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

/// The "train step", as `yolo-train` runs it: forward in train mode, the real v8 loss
/// (assigner included), backward, global-norm clipping at 10 and a grouped Nesterov SGD step.
/// Shared by the criterion bench and `train-time` (which `benches/train_step_compare.py` runs
/// beside PyTorch). [`with_amp`](Self::with_amp) makes it `yolo-train --amp`'s step.
pub struct TrainStep {
    model: Option<YoloV8>,
    /// Mixed precision: convs in f16 under autocast, the loss scaled (`yolo-train --amp`).
    amp: Option<GradScaler>,
    meta: HeadMeta,
    optim: YoloOptimizer,
    x: Tensor<4>,
    targets: Targets,
    cfg: LossConfig,
}

impl TrainStep {
    /// A seeded yolov8 of `scale` (80 classes) on `device`'s autodiff twin, a deterministic
    /// batch of `batch` images of `size`², three boxes per image spread over the image and
    /// the size range (the same boxes as `train_step_compare.py` gives PyTorch).
    pub fn new(scale: Scale, batch: usize, size: usize, device: &Device) -> Self {
        let device = device.clone().autodiff();
        let model = ModelConfig::new(scale, 80).init_seeded(&device, 0).expect("valid config");
        let meta = model.meta();
        let choice = OptimizerChoice { kind: OptimizerKind::Sgd, lr0: 0.01, momentum: 0.937, warmup_bias_lr: 0.0 };
        let optim = YoloOptimizer::new(&model, choice, 5e-4);
        let targets = Targets {
            boxes: (0..batch)
                .flat_map(|b| {
                    (0..3).map(move |k| Target {
                        batch_idx: b,
                        cls: (b * 3 + k) % 80,
                        xywh: [0.2 + 0.3 * k as f32, 0.3 + 0.05 * b as f32, 0.1 + 0.1 * k as f32, 0.15],
                    })
                })
                .collect(),
        };
        Self { model: Some(model), amp: None, meta, optim, x: input(batch, size, &device), targets, cfg: LossConfig::default() }
    }

    /// The step with mixed precision, as `yolo-train --amp` runs it: forward under f16
    /// autocast, the loss scaled by PyTorch's `GradScaler` rule, unscaled before clipping, the
    /// SGD step skipped where a gradient overflowed.
    pub fn with_amp(mut self) -> Self {
        self.amp = Some(GradScaler::default());
        self
    }

    /// One step; returns the loss (read back, so the work is done when it returns).
    pub fn step(&mut self) -> f32 {
        self.step_phases().0
    }

    /// One step; returns the loss and the time in ms of its phases: forward, loss, backward,
    /// clipping + SGD, as wall time and as process CPU time (the CPU backend runs eagerly, so
    /// each phase's work is done when the next starts).
    pub fn step_phases(&mut self) -> (f32, [f64; 4], [f64; 4]) {
        let mut wall = [0.0; 4];
        let mut cpu = [0.0; 4];
        let mut t = (Instant::now(), cpu_ms());
        let mut lap = |i: usize| {
            wall[i] = t.0.elapsed().as_secs_f64() * 1e3;
            cpu[i] = cpu_ms() - t.1;
            t = (Instant::now(), cpu_ms());
        };
        let m = self.model.take().expect("model is put back after every step");
        let autocast = yolo_core::amp::autocast(self.amp.map(|_| yolo_core::amp::DTYPE));
        let out = m.forward(self.x.clone());
        lap(0);
        let loss = v8_detection_loss(&out, &self.meta, &self.targets, &self.cfg);
        drop(autocast);
        let value = loss.total.clone().into_scalar::<f32>();
        lap(1);
        let total = scale_loss(self.amp.as_ref(), loss.total);
        let grads = GradientsParams::from_grads(total.backward(), &m);
        lap(2);
        let optim = &mut self.optim;
        self.model = Some(clip_and_step(m, grads, 10.0, self.amp.as_mut(), |m, g| optim.step([0.01; 3], m, g)).0);
        lap(3);
        (value, wall, cpu)
    }
}

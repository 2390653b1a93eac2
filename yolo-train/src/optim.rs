//! The optimizer of Ultralytics' `BaseTrainer.build_optimizer`: three parameter groups (weights
//! with decay, BatchNorm weights, biases), SGD with Nesterov momentum or AdamW, the
//! `optimizer=auto` rule, and global-norm gradient clipping (`clip_grad_norm_(max_norm=10)`).
//!
//! Burn's `ModuleOptimizer` keeps each parameter's optimizer instance beside its state, and
//! `with_group` resets the state of the group it adds, so the optimizer cannot be rebuilt per
//! step to change momentum during warmup. Instead the SGD here ([`NesterovSgd`]) reads its
//! momentum from a cell shared with [`YoloOptimizer`], which sets it before every step; LRs go
//! per group through Burn's own `ModuleLearningRate`. AdamW is Burn's (betas fixed: Ultralytics'
//! warmup only moves `momentum` of groups that have one, and Adam groups have `betas`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use burn::lr_scheduler::constant::ConstantLr;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, GradientsParams, ModuleOptimizer, Optimizer, RecordState, StateSink,
    StateSource,
};
use burn::tensor::{Device, Tensor};
use yolo_core::burn;

use crate::amp::GradScaler;
use crate::config::OptimizerKind;

/// The optimizer Ultralytics' rule settles on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerChoice {
    /// `Sgd` or `AdamW`, never `Auto`.
    pub kind: OptimizerKind,
    pub lr0: f64,
    pub momentum: f64,
    pub warmup_bias_lr: f64,
}

/// Resolves `optimizer=auto` as 8.4.190 does: `iterations = ceil(n_train / max(batch, nbs)) *
/// epochs`; above 10000 Ultralytics picks MuSGD (lr 0.01, momentum 0.9), which is not
/// implemented here: plain Nesterov SGD with the same settings is used instead. Otherwise AdamW
/// with `lr = round(0.002 * 5 / (4 + nc), 6)` and momentum 0.9. Either way `warmup_bias_lr`
/// becomes 0. Explicit choices pass through unchanged.
pub fn resolve_optimizer(
    kind: OptimizerKind,
    lr0: f64,
    momentum: f64,
    warmup_bias_lr: f64,
    nc: usize,
    n_train: usize,
    batch: usize,
    nbs: usize,
    epochs: usize,
) -> OptimizerChoice {
    if kind != OptimizerKind::Auto {
        return OptimizerChoice {
            kind,
            lr0,
            momentum,
            warmup_bias_lr,
        };
    }
    let iterations = n_train.div_ceil(batch.max(nbs)) * epochs;
    let lr_fit = (0.002 * 5.0 / (4.0 + nc as f64) * 1e6).round_ties_even() / 1e6;
    let (kind, lr0) = if iterations > 10000 {
        (OptimizerKind::Sgd, 0.01)
    } else {
        (OptimizerKind::AdamW, lr_fit)
    };
    OptimizerChoice {
        kind,
        lr0,
        momentum: 0.9,
        warmup_bias_lr: 0.0,
    }
}

/// The three parameter groups, in Ultralytics' order.
#[derive(Debug, Clone, Default)]
pub struct ParamGroups {
    /// pg0: weights with decay (conv weights, including the frozen DFL projection).
    pub weights: Vec<(ParamId, String)>,
    /// pg1: BatchNorm weights (`gamma`), no decay.
    pub bn: Vec<(ParamId, String)>,
    /// pg2: every bias (conv biases and BatchNorm `beta`), no decay.
    pub biases: Vec<(ParamId, String)>,
}

impl ParamGroups {
    /// Splits a module's parameters as `build_optimizer` does: a name containing `bias` → pg2,
    /// a BatchNorm weight → pg1, any other weight → pg0. BatchNorm running statistics are
    /// buffers, not parameters, and belong to no group.
    pub fn of<M: Module>(module: &M) -> Self {
        let mut v = GroupVisitor {
            path: vec![],
            groups: Self::default(),
        };
        module.visit(&mut v);
        v.groups
    }

    /// Group sizes `[pg0, pg1, pg2]`.
    pub fn counts(&self) -> [usize; 3] {
        [self.weights.len(), self.bn.len(), self.biases.len()]
    }
}

struct GroupVisitor {
    path: Vec<String>,
    groups: ParamGroups,
}

impl ModuleVisitor for GroupVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.join(".");
        let leaf = self.path.last().map(String::as_str).unwrap_or("");
        let entry = (param.id, path.clone());
        match leaf {
            "running_mean" | "running_var" => {}
            "bias" | "beta" => self.groups.biases.push(entry),
            "gamma" => self.groups.bn.push(entry),
            _ => self.groups.weights.push(entry),
        }
    }
}

/// A momentum value shared between [`YoloOptimizer`] and its SGD instances.
#[derive(Debug, Clone, Default)]
pub struct SharedMomentum(Arc<AtomicU64>);

impl SharedMomentum {
    pub fn new(v: f64) -> Self {
        Self(Arc::new(AtomicU64::new(v.to_bits())))
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed)
    }
}

/// PyTorch's `SGD(nesterov=True, dampening=0)` with coupled weight decay:
/// `g = grad + wd * p; buf = m * buf + g (buf = g at first); p -= lr * (g + m * buf)`.
#[derive(Clone)]
pub struct NesterovSgd {
    pub weight_decay: f64,
    pub momentum: SharedMomentum,
}

/// Momentum buffer of [`NesterovSgd`].
#[derive(Clone)]
pub struct VelocityState<const D: usize> {
    pub velocity: Tensor<D>,
}

impl<const D: usize> RecordState for VelocityState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "velocity", self.velocity.to_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let data = src.take_tensor(prefix, "velocity")?;
        Some(Self {
            velocity: Tensor::from_data(data, &load_device(device)),
        })
    }
}

thread_local! {
    /// The device [`YoloOptimizer::load_state_bytes`] restores optimizer states on, while it
    /// runs on this thread.
    static LOAD_DEVICE: std::cell::RefCell<Option<Device>> = const { std::cell::RefCell::new(None) };
}

/// Where a restored optimizer state goes: the training device while
/// [`YoloOptimizer::load_state_bytes`] runs, `burn_default` otherwise. Burn 0.22.1's
/// `ModuleOptimizer::load_record` hands the states `Device::default()`, which is not the
/// device the run chose: on a build with `cuda` it is CUDA even where the run trains on
/// `wgpu` or the CPU (and a machine without CUDA panicked on `--resume`).
fn load_device(burn_default: &Device) -> Device {
    LOAD_DEVICE.with(|d| d.borrow().clone()).unwrap_or_else(|| burn_default.clone())
}

/// Burn's [`AdamW`] whose state is restored on the training device (see [`load_device`]);
/// the steps and the saved state are AdamW's own.
#[derive(Clone)]
pub struct RestoredAdamW(pub AdamW);

/// [`AdamWState`], restored on the training device.
#[derive(Clone)]
pub struct RestoredAdamWState<const D: usize>(pub AdamWState<D>);

impl<const D: usize> RecordState for RestoredAdamWState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        self.0.state_flatten(prefix, out)
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        AdamWState::state_unflatten(prefix, src, &load_device(device)).map(Self)
    }
}

impl Optimizer for RestoredAdamW {
    type State<const D: usize> = RestoredAdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (tensor, state) = self.0.step(lr, tensor, grad, state.map(|s| s.0));
        (tensor, state.map(RestoredAdamWState))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        RestoredAdamWState(<AdamW as Optimizer>::to_device(state.0, device))
    }
}

impl Optimizer for NesterovSgd {
    type State<const D: usize> = VelocityState<D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let m = self.momentum.get();
        // The same update in one parallel pass on the CPU backend (the same bits).
        let v = state.as_ref().map(|s| &s.velocity);
        if let Some((p, velocity)) = yolo_core::ops::sgd::nesterov_sgd_step(&tensor, &grad, v, self.weight_decay, m, lr) {
            return (p, Some(VelocityState { velocity }));
        }
        let g = if self.weight_decay != 0.0 {
            grad + tensor.clone().mul_scalar(self.weight_decay)
        } else {
            grad
        };
        let velocity = match state {
            Some(s) => s.velocity.mul_scalar(m) + g.clone(),
            None => g.clone(),
        };
        let update = g + velocity.clone().mul_scalar(m);
        (
            tensor - update.mul_scalar(lr),
            Some(VelocityState { velocity }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        VelocityState {
            velocity: state.velocity.to_device(device),
        }
    }
}

/// The grouped optimizer of a training run.
pub struct YoloOptimizer {
    inner: ModuleOptimizer,
    bn: ParamGroup,
    biases: ParamGroup,
    momentum: SharedMomentum,
    /// Settings it was built with.
    pub choice: OptimizerChoice,
    /// The weight decay of pg0 (already scaled by `batch * accumulate / nbs`).
    pub weight_decay: f64,
}

impl YoloOptimizer {
    /// Builds the optimizer for `model`'s parameters.
    pub fn new<M: Module>(model: &M, choice: OptimizerChoice, weight_decay: f64) -> Self {
        let groups = ParamGroups::of(model);
        let ids = |g: &[(ParamId, String)]| ParamGroup::from_ids(g.iter().map(|(id, _)| *id).collect());
        let bn = ids(&groups.bn);
        let biases = ids(&groups.biases);
        let momentum = SharedMomentum::new(choice.momentum);
        let inner = match choice.kind {
            OptimizerKind::AdamW => {
                let cfg = |wd: f64| {
                    AdamWConfig::new()
                        .with_beta_1(choice.momentum as f32)
                        .with_beta_2(0.999)
                        .with_epsilon(1e-8)
                        .with_weight_decay(wd as f32)
                        .build()
                };
                let cfg = |wd: f64| RestoredAdamW(cfg(wd));
                ModuleOptimizer::from(cfg(weight_decay))
                    .with_group(bn.clone(), cfg(0.0), None)
                    .with_group(biases.clone(), cfg(0.0), None)
            }
            _ => {
                let sgd = |wd: f64| NesterovSgd {
                    weight_decay: wd,
                    momentum: momentum.clone(),
                };
                ModuleOptimizer::from(sgd(weight_decay))
                    .with_group(bn.clone(), sgd(0.0), None)
                    .with_group(biases.clone(), sgd(0.0), None)
            }
        };
        Self {
            inner,
            bn,
            biases,
            momentum,
            choice,
            weight_decay,
        }
    }

    /// Sets the momentum used by SGD from the next step on (no effect on AdamW).
    pub fn set_momentum(&self, momentum: f64) {
        self.momentum.set(momentum);
    }

    /// One optimizer step with LR `lr[g]` for group `g`.
    pub fn step<M: Module>(&mut self, lr: [f64; 3], model: M, grads: GradientsParams) -> M {
        let lrs = ModuleLrScheduler::new(ConstantLr::from(lr[0]))
            .with_group(self.bn.clone(), ConstantLr::from(lr[1]))
            .with_group(self.biases.clone(), ConstantLr::from(lr[2]))
            .step();
        self.inner.step(lrs, model, grads)
    }

    /// The Burn optimizer.
    pub fn module_optimizer(&self) -> &ModuleOptimizer {
        &self.inner
    }

    /// The optimizer state (momentum buffers or Adam moments, per parameter id) as burnpack
    /// bytes.
    pub fn state_bytes(&self) -> Result<Vec<u8>, String> {
        self.inner
            .into_bytes()
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    /// Restores a state from [`state_bytes`](Self::state_bytes) of an optimizer built for the
    /// same parameters (same ids), its tensors on `device` (the model's).
    ///
    /// Burn's loader also builds `Device::default()`, which panics on a `BURN_DEVICE` that Burn
    /// does not read (see [`burn_reads_device_env`]): that is an error here.
    pub fn load_state_bytes(&mut self, bytes: Vec<u8>, device: &Device) -> Result<(), String> {
        burn_reads_device_env(std::env::var("BURN_DEVICE").ok().as_deref())?;
        let inner = std::mem::replace(&mut self.inner, ModuleOptimizer::from(NesterovSgd {
            weight_decay: 0.0,
            momentum: self.momentum.clone(),
        }));
        /// Clears [`LOAD_DEVICE`] when the load ends, a panic included.
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                LOAD_DEVICE.with(|d| *d.borrow_mut() = None);
            }
        }
        LOAD_DEVICE.with(|d| *d.borrow_mut() = Some(device.clone().without_autodiff()));
        let _reset = Reset;
        self.inner = inner
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Whether Burn 0.22.1's `Device::default()` takes `burn_device` (the value of `BURN_DEVICE`):
/// unset, or a compiled backend's name in any case, not trimmed (Burn only lowercases it and
/// panics on anything else, a blank value or our `cpu` included; `yolo-train` rewrites those
/// first, [`yolo_core::backend::canonical_device_env`]).
pub fn burn_reads_device_env(burn_device: Option<&str>) -> Result<(), String> {
    let Some(name) = burn_device else {
        return Ok(());
    };
    let known = yolo_core::backend::compiled_backends();
    if known.contains(&name.to_lowercase().as_str()) {
        return Ok(());
    }
    Err(format!(
        "BURN_DEVICE={name:?}: Burn's optimizer loader reads it and takes only {}; unset it or \
         set one of those (yolo-train rewrites `cpu` and blanks itself)",
        known.join(", ")
    ))
}

/// Scales gradients so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, clamped to 1).
/// Returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(model: &M, grads: GradientsParams, max_norm: f64) -> (GradientsParams, f64) {
    let Some(norm) = grad_norm(model, &grads) else {
        return (grads, 0.0);
    };
    let coef = max_norm / (norm + 1e-6);
    if coef >= 1.0 {
        return (grads, norm);
    }
    (scale_grads(model, grads, coef), norm)
}

/// Ultralytics' `optimizer_step` from the clipping on, given the gradients: without a loss
/// scaler, `clip_grad_norm_(max_norm)` and `step`; with one (mixed precision),
/// `scaler.unscale_` and the clipping ([`unscale_clip_grad_norm`]), `scaler.step` (`step`, or
/// nothing when a gradient overflowed) and `scaler.update`. Returns the model and whether
/// `step` ran.
pub fn clip_and_step<M: Module>(
    model: M,
    grads: GradientsParams,
    max_norm: f64,
    scaler: Option<&mut GradScaler>,
    step: impl FnOnce(M, GradientsParams) -> M,
) -> (M, bool) {
    let Some(scaler) = scaler else {
        let (grads, _norm) = clip_grad_norm(&model, grads, max_norm);
        return (step(model, grads), true);
    };
    match unscale_clip_grad_norm(&model, grads, max_norm, scaler.scale) {
        Ok((grads, _norm)) => {
            scaler.update(false);
            (step(model, grads), true)
        }
        Err(_) => {
            scaler.update(true);
            (model, false)
        }
    }
}

/// For gradients of a loss multiplied by `loss_scale` (mixed precision): divides them by it
/// and clips their global norm to `max_norm` in one pass, as Ultralytics'
/// `scaler.unscale_(optimizer)` followed by `clip_grad_norm_`. Returns the unscaled norm
/// before clipping, or `Err(norm)` when a gradient overflowed (the norm is inf or NaN): the
/// optimizer step is then skipped, as `scaler.step` does.
pub fn unscale_clip_grad_norm<M: Module>(
    model: &M,
    grads: GradientsParams,
    max_norm: f64,
    loss_scale: f32,
) -> Result<(GradientsParams, f64), f64> {
    let Some(scaled) = grad_norm(model, &grads) else {
        return Ok((grads, 0.0));
    };
    if !scaled.is_finite() {
        return Err(scaled);
    }
    let inv = 1.0 / loss_scale as f64;
    let norm = scaled * inv;
    let coef = inv * (max_norm / (norm + 1e-6)).min(1.0);
    Ok((if coef == 1.0 { grads } else { scale_grads(model, grads, coef) }, norm))
}

/// The global L2 norm of the model's gradients (`None`: there are none).
fn grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> Option<f64> {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
        /// The squares summed on the CPU backend in one parallel pass (f64 across chunks).
        cpu_sum: Option<f64>,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                if let Some(s) = yolo_core::ops::sgd::sum_squares(&g) {
                    self.cpu_sum = Some(self.cpu_sum.unwrap_or(0.0) + s);
                    return;
                }
                let s = g.powi_scalar(2).sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut n = Norm { grads, sum: None, cpu_sum: None };
    model.visit(&mut n);
    if n.sum.is_none() && n.cpu_sum.is_none() {
        return None;
    }
    let sum = n.sum.map_or(0.0, |s| s.into_scalar::<f32>() as f64) + n.cpu_sum.unwrap_or(0.0);
    Some(sum.sqrt())
}

/// Every gradient of `model`'s parameters multiplied by `coef`.
pub fn scale_grads<M: Module>(model: &M, grads: GradientsParams, coef: f64) -> GradientsParams {
    struct Scale {
        grads: GradientsParams,
        coef: f64,
    }
    impl ModuleMapper for Scale {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let g = yolo_core::ops::sgd::scale(&g, self.coef).unwrap_or_else(|| g.mul_scalar(self.coef));
                self.grads.register(param.id, g);
            }
            param
        }
    }
    let mut s = Scale { grads, coef };
    let _ = model.clone().map(&mut s);
    s.grads
}

/// Gradients accumulated but not stepped when the state was saved, carried to a resumed run:
/// they hold the loss scale they were computed at (`saved`'s, 1 without AMP), and the next
/// step divides by the scale now in force (`now`'s), so where AMP was turned on or off since
/// (a run resumed on another device, say) they are brought to it.
pub fn rescale_pending<M: Module>(
    model: &M,
    pending: GradientsParams,
    saved: Option<&GradScaler>,
    now: Option<&GradScaler>,
) -> GradientsParams {
    let scale_of = |s: Option<&GradScaler>| s.map_or(1.0, |s| s.scale as f64);
    let (saved, now) = (scale_of(saved), scale_of(now));
    if saved == now {
        pending
    } else {
        scale_grads(model, pending, now / saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yolo_core::{backend, ModelConfig, Scale};

    /// What Burn's `Device::default()` would panic on is refused before the load.
    #[test]
    fn burn_device_names_burn_would_panic_on_are_refused() {
        assert!(burn_reads_device_env(None).is_ok());
        assert!(burn_reads_device_env(Some("flex")).is_ok());
        assert!(burn_reads_device_env(Some("FLEX")).is_ok());
        for bad in ["cpu", "", " flex", "flex\n", "tpu"] {
            let err = burn_reads_device_env(Some(bad)).unwrap_err();
            assert!(err.starts_with(&format!("BURN_DEVICE={bad:?}")), "{err}");
        }
    }

    /// Pending gradients across an AMP switch at resume: saved at scale 4096 and resumed
    /// without AMP they are divided by 4096; saved without AMP and resumed with it, multiplied
    /// by the new scale; unchanged where the scale is the same.
    #[test]
    fn pending_gradients_follow_the_loss_scale() {
        let device = backend::cpu_device().autodiff();
        let cfg = ModelConfig::custom(yolo_core::Multiples { depth: 0.33, width: 0.0625, max_channels: 1024 }, 2);
        let model = cfg.init_seeded(&device, 0).unwrap();
        let x = Tensor::<4>::ones([1, 3, 32, 32], &device);
        let grads = |m: &yolo_core::YoloV8| {
            let out = m.forward(x.clone());
            let loss = out.levels.iter().map(|l| l.scores.clone().sum() + l.boxes.clone().sum() * 0.5).reduce(|a, b| a + b).unwrap();
            GradientsParams::from_grads(loss.backward(), m)
        };
        let values = |g: &GradientsParams, m: &yolo_core::YoloV8| -> Vec<f32> {
            let w = &m.backbone.stem.conv.weight;
            g.get::<4>(w.id).expect("the stem has a gradient").into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
        };
        let base = values(&grads(&model), &model);
        assert!(base.iter().any(|v| *v != 0.0));
        let at = |scale: f32| GradScaler { scale, ..GradScaler::default() };
        for (saved, now, coef) in [
            (Some(at(4096.0)), None, 1.0 / 4096.0),
            (None, Some(at(65536.0)), 65536.0),
            (Some(at(1024.0)), Some(at(2048.0)), 2.0),
            (Some(at(512.0)), Some(at(512.0)), 1.0),
        ] {
            let g = rescale_pending(&model, grads(&model), saved.as_ref(), now.as_ref());
            let got = values(&g, &model);
            // Powers of two: exact.
            let want: Vec<f32> = base.iter().map(|v| v * coef).collect();
            assert_eq!(got, want, "saved {:?}, now {:?}", saved.map(|s| s.scale), now.map(|s| s.scale));
        }
    }

    #[test]
    fn auto_rule() {
        // 100 images, batch 16, 100 epochs: ceil(100 / 64) * 100 = 200 iterations -> AdamW
        let c = resolve_optimizer(OptimizerKind::Auto, 0.01, 0.937, 0.1, 80, 100, 16, 64, 100);
        assert_eq!(c.kind, OptimizerKind::AdamW);
        assert_eq!(c.lr0, 0.000119); // round(0.01 / 84, 6)
        assert_eq!(c.momentum, 0.9);
        assert_eq!(c.warmup_bias_lr, 0.0);
        let c = resolve_optimizer(OptimizerKind::Auto, 0.01, 0.937, 0.1, 3, 10, 16, 64, 10);
        assert_eq!(c.lr0, 0.001429); // round(0.01 / 7, 6)
        // 118287 images (COCO), 100 epochs: 1849 * 100 > 10000 -> SGD-like
        let c = resolve_optimizer(OptimizerKind::Auto, 0.01, 0.937, 0.1, 80, 118_287, 16, 64, 100);
        assert_eq!(c.kind, OptimizerKind::Sgd);
        assert_eq!((c.lr0, c.momentum, c.warmup_bias_lr), (0.01, 0.9, 0.0));
        // exactly 10000 stays AdamW
        let c = resolve_optimizer(OptimizerKind::Auto, 0.01, 0.937, 0.1, 80, 6400, 16, 64, 100);
        assert_eq!(c.kind, OptimizerKind::AdamW);
        let c = resolve_optimizer(OptimizerKind::Sgd, 0.02, 0.9, 0.1, 80, 1, 1, 64, 1);
        assert_eq!((c.kind, c.lr0, c.momentum, c.warmup_bias_lr), (OptimizerKind::Sgd, 0.02, 0.9, 0.1));
    }

    /// Ultralytics 8.4.190 `build_optimizer` on `DetectionModel('yolov8n.yaml', nc=80)` puts
    /// 64 params in g0 (63 conv weights + the DFL projection), 57 in g1, 63 in g2.
    #[test]
    fn yolov8n_group_counts_match_ultralytics() {
        let model = ModelConfig::new(Scale::N, 80).init(&backend::cpu_device()).unwrap();
        let g = ParamGroups::of(&model);
        assert_eq!(g.counts(), [64, 57, 63], "{:?}", g.weights.iter().take(3).collect::<Vec<_>>());
        assert!(g.bn.iter().all(|(_, p)| p.ends_with("bn.gamma")));
    }

    /// One SGD step against hand-computed PyTorch numbers: p = 1, grad = 0.5, wd = 0.1,
    /// m = 0.9, lr = 0.1: g = 0.6, buf = 0.6, update = 0.6 + 0.54 = 1.14, p = 0.886; second
    /// step (same grad): g = 0.5 + 0.0886 = 0.5886, buf = 0.54 + 0.5886 = 1.1286,
    /// update = 0.5886 + 1.01574 = 1.60434, p = 0.886 - 0.160434 = 0.725566.
    #[test]
    fn nesterov_sgd_matches_pytorch() {
        let device = backend::cpu_device();
        let sgd = NesterovSgd {
            weight_decay: 0.1,
            momentum: SharedMomentum::new(0.9),
        };
        let p = Tensor::<1>::from_floats([1.0], &device);
        let g = Tensor::<1>::from_floats([0.5], &device);
        let (p, s) = sgd.step(0.1, p, g.clone(), None);
        let v: f32 = p.clone().into_scalar();
        assert!((v - 0.886).abs() < 1e-6, "{v}");
        let (p, _) = sgd.step(0.1, p, g, s);
        let v: f32 = p.into_scalar();
        assert!((v - 0.725566).abs() < 1e-6, "{v}");
    }
}

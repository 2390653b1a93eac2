//! Model exponential moving average (Ultralytics `ModelEMA`).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use yolo_core::{burn, YoloV8};

/// Ultralytics' decay ramp: `decay * (1 - exp(-updates / tau))` with decay 0.9999, tau 2000.
pub fn ema_decay(updates: u64, decay: f64, tau: f64) -> f64 {
    decay * (1.0 - (-(updates as f64) / tau).exp())
}

/// An EMA copy of the model, on a plain (non-autodiff) device, in eval mode.
pub struct ModelEma {
    pub model: YoloV8,
    pub updates: u64,
    pub decay: f64,
    pub tau: f64,
}

impl ModelEma {
    /// Starts from `model`, which must be the `valid()` snapshot of the training model: that
    /// gives the EMA its own BatchNorm running states (`clone()` shares them: Burn's
    /// `RunningState` is shared between clones and `map` writes into it).
    pub fn new(model: YoloV8) -> Self {
        Self {
            model,
            updates: 0,
            decay: 0.9999,
            tau: 2000.0,
        }
    }

    /// `updates += 1; d = decay(updates); ema = d * ema + (1 - d) * model` over every float
    /// tensor of the module: parameters and BatchNorm running statistics (all floating-point
    /// `state_dict` entries, as Ultralytics). `model` must have the same structure (a
    /// `valid()` snapshot of the training model). Returns the decay used.
    pub fn update(&mut self, model: &YoloV8) -> f64 {
        self.updates += 1;
        let d = ema_decay(self.updates, self.decay, self.tau);
        let mut collect = Collect(vec![]);
        model.visit(&mut collect);
        let mut blend = Blend {
            src: collect.0.into_iter(),
            d,
        };
        self.model = self.model.clone().map(&mut blend);
        assert!(blend.src.next().is_none(), "EMA: model structures differ");
        d
    }
}

struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().flatten(0, D - 1));
    }
}

struct Blend {
    src: std::vec::IntoIter<Tensor<1>>,
    d: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let src = self.src.next().expect("EMA: model structures differ");
        let d = self.d;
        param.map(|ema| {
            let shape = ema.shape();
            let src = src.to_device(&ema.device()).reshape(shape);
            // One parallel pass on the CPU backend (the same bits as the tensor ops).
            yolo_core::ops::sgd::blend(&ema, &src, d, 1.0 - d).unwrap_or_else(|| ema.mul_scalar(d) + src.mul_scalar(1.0 - d))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yolo_core::{backend, ModelConfig, Multiples};

    #[test]
    fn decay_formula() {
        // 0.9999 * (1 - exp(-1 / 2000)) = 4.99850...e-4
        let d1 = ema_decay(1, 0.9999, 2000.0);
        assert!((d1 - 0.9999 * (1.0 - (-0.0005f64).exp())).abs() < 1e-15);
        assert!((d1 - 4.99825033e-4).abs() < 1e-12, "{d1}");
        let d2000 = ema_decay(2000, 0.9999, 2000.0);
        assert!((d2000 - 0.9999 * (1.0 - (-1.0f64).exp())).abs() < 1e-15);
        assert!((ema_decay(1_000_000, 0.9999, 2000.0) - 0.9999).abs() < 1e-12);
    }

    #[test]
    fn update_blends_params_and_running_stats() {
        let device = backend::cpu_device();
        let cfg = ModelConfig::custom(
            Multiples {
                depth: 0.33,
                width: 0.0625,
                max_channels: 1024,
            },
            2,
        );
        let a = cfg.init(&device).unwrap();
        // `valid()` gives independent BatchNorm running states (`clone()` would share them).
        let zero = a.valid().map(&mut Zero);
        let mut ema = ModelEma::new(a.valid());
        let d = ema.update(&zero);
        // every float tensor is now d * a
        let wa: Vec<f32> = a.head.dfl.conv.weight.val().into_data().try_to_vec().unwrap();
        let we: Vec<f32> = ema.model.head.dfl.conv.weight.val().into_data().try_to_vec().unwrap();
        for (x, y) in wa.iter().zip(&we) {
            assert!((*x as f64 * d - *y as f64).abs() < 1e-6);
        }
        // running_var starts at ones: it is blended too
        let rv: Vec<f32> = ema.model.backbone.stem.bn.running_var.value().into_data().try_to_vec().unwrap();
        assert!(rv.iter().all(|v| (*v as f64 - d).abs() < 1e-6), "{rv:?}");
    }

    struct Zero;
    impl ModuleMapper for Zero {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| t.zeros_like())
        }
    }
}

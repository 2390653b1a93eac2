//! The YOLOv8 detection model: backbone + neck + Detect head.

use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::nn::backbone::Backbone;
use crate::nn::neck::Neck;
use crate::nn::{decode, Detect, DetectConfig, HeadMeta, HeadOutput};
use crate::scale::{Multiples, Scale};

/// Largest stride of the model: input sides must be multiples of it.
pub const MAX_STRIDE: usize = 32;

/// The largest input side the tools take (`imgsz`): a sanity limit, so that a mistyped size is
/// an error instead of an allocation that aborts (16384² RGB in f32 is 3.2 GB per image).
pub const MAX_IMGSZ: u32 = 16384;

/// The most classes a model or a dataset may have: a sanity limit (LVIS has 1203), so that a
/// corrupt `nc` is an error instead of an allocation that aborts.
pub const MAX_CLASSES: usize = 100_000;

/// Everything needed to build a model; saved in checkpoints' metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The published scale this model follows, or `None` for custom multiples.
    pub scale: Option<Scale>,
    pub multiples: Multiples,
    /// Number of classes.
    pub nc: usize,
    /// DFL bins (16 in YOLOv8).
    pub reg_max: usize,
}

impl ModelConfig {
    /// A published scale with `nc` classes.
    pub fn new(scale: Scale, nc: usize) -> Self {
        Self {
            scale: Some(scale),
            multiples: scale.multiples(),
            nc,
            reg_max: 16,
        }
    }

    /// Custom `(depth, width, max_channels)`, e.g. reduced-width test models.
    pub fn custom(multiples: Multiples, nc: usize) -> Self {
        Self {
            scale: None,
            multiples,
            nc,
            reg_max: 16,
        }
    }

    /// Checks the values a user can set.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: &str| {
            Err(CoreError::Config {
                field: field.into(),
                message: message.into(),
            })
        };
        // The upper bounds are sanity limits far above any YOLOv8 (x: depth 1, width 1.25,
        // 512 channels, reg_max 16; LVIS has 1203 classes): a corrupt checkpoint's metadata
        // gets an error instead of an allocation that aborts or a build that never ends.
        if !(1..=MAX_CLASSES).contains(&self.nc) {
            return bad("nc", "must be between 1 and 100000");
        }
        if !(2..=64).contains(&self.reg_max) {
            return bad("reg_max", "must be between 2 and 64");
        }
        let m = &self.multiples;
        if !(m.depth > 0.0 && m.width > 0.0 && m.depth <= 4.0 && m.width <= 4.0) {
            return bad("multiples", "depth and width must be above 0 and at most 4");
        }
        if !(8..=8192).contains(&m.max_channels) {
            return bad("multiples.max_channels", "must be between 8 and 8192");
        }
        Ok(())
    }

    /// Builds the model with fresh weights (PyTorch default initialisation, Ultralytics'
    /// head biases).
    pub fn init(&self, device: &Device) -> Result<YoloV8> {
        self.validate()?;
        let (backbone, ch) = Backbone::new(&self.multiples, device);
        let (neck, ch) = Neck::new(&self.multiples, ch, device);
        let head = DetectConfig::new(self.nc, ch.to_vec())
            .with_reg_max(self.reg_max)
            .init(device);
        Ok(YoloV8 {
            backbone,
            neck,
            head,
        })
    }

    /// [`init`](Self::init) with the backend's RNG seeded by `seed`: the same seed gives the
    /// same initial weights (on a given backend). Burn's RNG is global and parameters are
    /// initialised lazily, so this holds a process-wide lock while it seeds, builds and
    /// materialises every parameter.
    pub fn init_seeded(&self, device: &Device, seed: u64) -> Result<YoloV8> {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(seed);
        let model = self.init(device)?;
        struct Touch;
        impl burn::module::ModuleVisitor for Touch {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                let _ = param.val();
            }
        }
        burn::module::Module::visit(&model, &mut Touch);
        Ok(model)
    }
}

/// YOLOv8 detector. `forward` gives the raw head output; [`decode`] (or
/// [`YoloV8::predict`]) gives Ultralytics' eval-mode output.
#[derive(Module, Debug)]
pub struct YoloV8 {
    pub backbone: Backbone,
    pub neck: Neck,
    pub head: Detect,
}

impl YoloV8 {
    /// # Shapes
    /// - `x`: `[B, 3, H, W]`, RGB in `[0, 1]`, `H` and `W` multiples of 32
    /// - output: per level `l` (strides 8, 16, 32), boxes `[B, 4 * reg_max, H/s, W/s]` and
    ///   class logits `[B, nc, H/s, W/s]`
    ///
    /// The input is cast to the model's dtype where it differs (a [half-precision](Self::half)
    /// model takes an f32 input), and the head's output is handed back in f32, for the decode
    /// and the loss.
    pub fn forward(&self, x: Tensor<4>) -> HeadOutput {
        let dtype = self.dtype();
        // Burn's `cast` is a no-op where the dtype already matches.
        let out = self.forward_as_is(x.cast(dtype));
        if dtype == FloatDType::F32 { out } else { out.cast(FloatDType::F32) }
    }

    /// [`forward`](Self::forward) in the dtype of `x` (the model's).
    fn forward_as_is(&self, x: Tensor<4>) -> HeadOutput {
        let f = self.backbone.forward(x);
        if self.head.cv2.len() == 3 && crate::nn::head::concurrent(std::slice::from_ref(&f.p3)) {
            // The stride-8 head (the largest) beside the neck's bottom-up path and the other
            // two levels' heads (see `nn::head::concurrent`).
            let (o3, t4, p5) = self.neck.top_down(f);
            let (l3, (l4, l5)) = rayon::join(
                || self.head.level(0, o3.clone()),
                || {
                    let [o4, o5] = self.neck.bottom_up(o3.clone(), t4, p5);
                    rayon::join(|| self.head.level(1, o4), || self.head.level(2, o5))
                },
            );
            return HeadOutput { levels: vec![l3, l4, l5] };
        }
        self.head.forward(self.neck.forward(f))
    }

    /// `forward` then `decode`, after checking the input shape.
    ///
    /// # Shapes
    /// - `x`: `[B, 3, H, W]`
    /// - output: `[B, 4 + nc, A]` with `A = sum(H/s * W/s)`
    pub fn predict(&self, x: Tensor<4>) -> Result<Tensor<3>> {
        check_input(&x.dims())?;
        Ok(crate::backend::on_cpu_pool(|| decode(&self.forward(x), &self.head.meta())))
    }

    /// Number of parameters as PyTorch counts them (`sum(p.numel() for p in m.parameters())`):
    /// weights, biases, BatchNorm affine terms and the fixed DFL projection, but not the
    /// BatchNorm running statistics (which Burn's `num_params` includes).
    pub fn num_parameters(&self) -> usize {
        // The tensors under PyTorch's names, as `weights::expected_keys` lists them.
        self.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
            .iter()
            .filter(|t| !t.name.ends_with(".running_mean") && !t.name.ends_with(".running_var"))
            .map(|t| t.shape.iter().product::<usize>())
            .sum()
    }

    /// Head metadata (strides, reg_max, nc).
    pub fn meta(&self) -> HeadMeta {
        self.head.meta()
    }

    /// The inference model with every BatchNorm folded into its conv (Ultralytics'
    /// `model.fuse()`): same output up to float rounding, fewer ops. For inference only (a
    /// fused model cannot be trained or saved). `predict`, `val` and the benchmarks use it.
    pub fn fuse(self) -> Self {
        Self {
            backbone: self.backbone.fuse(),
            neck: self.neck.fuse(),
            head: self.head.fuse(),
        }
    }

    /// The [fused](Self::fuse) inference model in half precision (Ultralytics' `half=True`,
    /// PyTorch's `model.fuse().half()`): the weights cast to f16, so the convs, activations,
    /// pools and concatenations run in f16. [`forward`](Self::forward) casts the input to f16
    /// and the head's output back to f32, so the DFL expectation and the box decode run in f32
    /// (where Ultralytics decodes in f16, a little less precisely). For inference on a GPU
    /// backend (on `flex` f16 is emulated and slower than f32).
    pub fn half(self) -> Self {
        self.into_dtype(crate::amp::DTYPE)
    }

    /// The [fused](Self::fuse) model with its weights cast to `dtype` (f32 undoes
    /// [`half`](Self::half), but for the rounding). The BatchNorms' running statistics are
    /// left as they are: a fused model does not use them, and Burn shares them between clones
    /// of a module, so casting them would change the model this one was cloned from (the
    /// training loop's EMA, whose fused copy validates each epoch).
    pub fn into_dtype(self, dtype: FloatDType) -> Self {
        struct Cast {
            dtype: FloatDType,
            fields: Vec<String>,
        }
        impl burn::module::ModuleMapper for Cast {
            fn enter_module(&mut self, name: &str, _container_type: &str) {
                self.fields.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container_type: &str) {
                self.fields.pop();
            }
            fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
                if matches!(self.fields.last().map(String::as_str), Some("running_mean" | "running_var")) {
                    return param;
                }
                let dtype = self.dtype;
                param.map(|t| t.cast(dtype))
            }
        }
        self.fuse().map(&mut Cast { dtype, fields: Vec::new() })
    }

    /// The dtype of the parameters: f32, or f16 after [`half`](Self::half).
    pub fn dtype(&self) -> FloatDType {
        match self.backbone.stem.conv.weight.val().dtype() {
            DType::F16 => FloatDType::F16,
            DType::BF16 => FloatDType::BF16,
            _ => FloatDType::F32,
        }
    }

    /// Whether [`fuse`](Self::fuse) was applied.
    pub fn is_fused(&self) -> bool {
        self.backbone.stem.is_fused()
    }
}

/// Checks that an input is `[B, 3, H, W]` with sides that are positive multiples of 32.
pub fn check_input(dims: &[usize; 4]) -> Result<()> {
    let [b, c, h, w] = *dims;
    if b == 0 || c != 3 || h == 0 || w == 0 || h % MAX_STRIDE != 0 || w % MAX_STRIDE != 0 {
        return Err(CoreError::Input(format!(
            "expected [B, 3, H, W] with B > 0 and H, W positive multiples of {MAX_STRIDE}, got {dims:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata no YOLOv8 has is refused before anything is allocated; the published scales
    /// (x: depth 1, width 1.25, 512 channels) and LVIS' 1203 classes are not.
    #[test]
    fn config_bounds() {
        for scale in [Scale::N, Scale::X] {
            assert!(ModelConfig::new(scale, 1203).validate().is_ok());
        }
        let field = |c: ModelConfig| match c.validate() {
            Err(CoreError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let n = || ModelConfig::new(Scale::N, 3);
        assert_eq!(field(ModelConfig { nc: 0, ..n() }), "nc");
        assert_eq!(field(ModelConfig { nc: MAX_CLASSES + 1, ..n() }), "nc");
        assert_eq!(field(ModelConfig { reg_max: 1, ..n() }), "reg_max");
        assert_eq!(field(ModelConfig { reg_max: 65, ..n() }), "reg_max");
        let m = |depth: f64, width: f64, max_channels: usize| ModelConfig::custom(Multiples { depth, width, max_channels }, 3);
        assert_eq!(field(m(0.33, 1000.0, 1024)), "multiples");
        assert_eq!(field(m(1e6, 0.25, 1024)), "multiples");
        assert_eq!(field(m(0.33, f64::NAN, 1024)), "multiples");
        assert_eq!(field(m(0.33, 0.25, 9000)), "multiples.max_channels");
    }
}

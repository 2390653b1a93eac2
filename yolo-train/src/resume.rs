//! The training state written after every epoch (`weights/last.state`), from which `--resume`
//! continues exactly where the run stopped.
//!
//! Ultralytics resumes from `last.pt`, whose `model` is the EMA in half precision, so its
//! resumed run differs from an uninterrupted one. Here the state holds everything the loop
//! carries from one epoch to the next, in full precision: the training model (parameters and
//! BatchNorm running statistics), the EMA and its update count, the optimizer state (momentum
//! buffers or Adam moments), gradients accumulated but not yet applied, the warmup-driven
//! momentum and accumulation, and the best fitness so far. The data order and augmentation are
//! seeded by `(seed, epoch)`, so they need no saved RNG.
//!
//! The file is one safetensors file written atomically: `model/{key}` and `ema/{key}`
//! (Ultralytics keys), `grad/{param id}` (pending gradients), `optimizer` (Burn's burnpack
//! bytes as U8) and the JSON [`TrainState`] in the metadata. Burn keys optimizer state by
//! parameter id, so the training model gets ids derived from the parameter paths
//! ([`stable_param_ids`]): a resumed process rebuilds the same ids.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use yolo_core::weights::{self, CheckpointMeta};
use yolo_core::{burn, YoloV8};

use crate::error::{Result, TrainError};

/// Format tag of the state file.
pub const STATE_FORMAT: &str = "yolo-rs-train-state/1";

/// Scalars of the training loop after an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed (the next epoch to run, 0-based).
    pub epoch: usize,
    pub best_fitness: f64,
    pub best_epoch: usize,
    /// What fitness was computed from (`trainer::FITNESS_MAP`, `"val loss"`, `"train loss"`).
    pub fitness_from: String,
    pub ema_updates: u64,
    /// Global iteration of the last optimizer step (-1: none yet).
    pub last_opt_step: i64,
    /// Accumulation steps in force (warmup ramps it up).
    pub accumulate: usize,
    /// SGD momentum in force (warmup ramps it up).
    pub momentum: f64,
    /// The loss scaler of mixed precision training (`amp`); absent without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_scaler: Option<crate::amp::GradScaler>,
}

/// Everything [`load_state`] restores.
pub struct Restored {
    pub state: TrainState,
    /// How to rebuild the model (from the checkpoint metadata).
    pub meta: CheckpointMeta,
    /// The training model, on the device given to [`load_state`], with stable ids.
    pub model: YoloV8,
    /// The EMA model (plain device).
    pub ema: YoloV8,
    /// Burn's optimizer record (burnpack bytes).
    pub optimizer: Vec<u8>,
    /// Gradients accumulated since the last optimizer step.
    pub pending: GradientsParams,
}

/// FNV-1a of the parameter path: the id a parameter gets in every process.
fn path_id(path: &str) -> ParamId {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in path.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    ParamId::from(h)
}

/// Gives every parameter an id derived from its module path, so that optimizer state saved by
/// one process applies to the same parameters in another.
pub fn stable_param_ids<M: Module>(module: M) -> M {
    struct Ids(Vec<String>);
    impl ModuleMapper for Ids {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.0.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (_, value, mapper) = param.consume();
            Param::from_mapped_value(path_id(&self.0.join(".")), value, mapper)
        }
    }
    module.map(&mut Ids(vec![]))
}

fn f32_bytes(data: TensorData) -> Vec<u8> {
    let v: Vec<f32> = data.convert::<f32>().try_into_vec().expect("float tensor converts to f32");
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Pending gradients as `(param id, shape, f32 bytes)`.
fn grad_entries(model: &YoloV8, grads: &GradientsParams) -> Vec<(u64, Vec<usize>, Vec<u8>)> {
    struct G<'a> {
        grads: &'a GradientsParams,
        out: Vec<(u64, Vec<usize>, Vec<u8>)>,
    }
    impl ModuleVisitor for G<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let shape = g.dims().to_vec();
                self.out.push((param.id.val(), shape, f32_bytes(g.into_data())));
            }
        }
    }
    let mut v = G { grads, out: vec![] };
    model.visit(&mut v);
    v.out
}

/// Writes the state atomically to `path`.
pub fn save_state(
    path: &Path,
    state: &TrainState,
    meta: &CheckpointMeta,
    model: &YoloV8,
    ema: &YoloV8,
    optimizer: &[u8],
    pending: &GradientsParams,
) -> Result<()> {
    let model_bytes = weights::to_bytes(&model.valid(), meta)?;
    let ema_bytes = weights::to_bytes(ema, meta)?;
    let grads = grad_entries(model, pending);
    let parse_err = |e: safetensors::SafeTensorError| TrainError::State {
        path: path.into(),
        message: e.to_string(),
    };
    let m = safetensors::SafeTensors::deserialize(&model_bytes).map_err(parse_err)?;
    let e = safetensors::SafeTensors::deserialize(&ema_bytes).map_err(parse_err)?;
    let mut views: Vec<(String, TensorView<'_>)> = vec![];
    for (prefix, st) in [("model", &m), ("ema", &e)] {
        for (k, t) in st.tensors() {
            views.push((format!("{prefix}/{k}"), t));
        }
    }
    let bad = |e: safetensors::SafeTensorError| TrainError::State {
        path: path.into(),
        message: e.to_string(),
    };
    for (id, shape, bytes) in &grads {
        views.push((format!("grad/{id}"), TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(bad)?));
    }
    views.push((
        "optimizer".into(),
        TensorView::new(Dtype::U8, vec![optimizer.len()], optimizer).map_err(bad)?,
    ));
    let mut md: HashMap<String, String> = HashMap::new();
    md.insert("format".into(), STATE_FORMAT.into());
    md.insert("state".into(), serde_json::to_string(state).expect("state serialises"));
    md.insert("meta".into(), serde_json::to_string(meta).expect("meta serialises"));
    let bytes = safetensors::serialize(views, Some(md)).map_err(bad)?;
    yolo_core::files::write_atomic(path, &bytes)?;
    Ok(())
}

/// Reads a state written by [`save_state`]; the training model is built on `device` (an
/// autodiff device), the EMA on `plain`.
pub fn load_state(path: &Path, device: &Device, plain: &Device) -> Result<Restored> {
    let err = |message: String| TrainError::State {
        path: path.into(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
    let md = header.metadata().clone().unwrap_or_default();
    match md.get("format").map(String::as_str) {
        Some(STATE_FORMAT) => {}
        other => return Err(err(format!("format {other:?} is not {STATE_FORMAT:?}"))),
    }
    let field = |name: &str| md.get(name).ok_or_else(|| err(format!("metadata `{name}` missing")));
    let state: TrainState = serde_json::from_str(field("state")?).map_err(|e| err(format!("state: {e}")))?;
    let meta: CheckpointMeta = serde_json::from_str(field("meta")?).map_err(|e| err(format!("meta: {e}")))?;

    // Rebuild a plain checkpoint for each model prefix and load it with the normal checks.
    let sub = |prefix: &str| -> Result<Vec<u8>> {
        let views: Vec<(String, TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .filter_map(|(k, t)| Some((k.strip_prefix(&format!("{prefix}/"))?.to_string(), t)))
            .collect();
        safetensors::serialize(views, None).map_err(|e| err(e.to_string()))
    };
    let build = |prefix: &str, device: &Device| -> Result<YoloV8> {
        let mut model = meta.model.init(device)?;
        weights::load_weights_from_bytes(&mut model, &path.join(prefix), sub(prefix)?)?;
        Ok(model)
    };
    let model = stable_param_ids(build("model", device)?);
    let ema = build("ema", plain)?;

    let optimizer = st
        .tensor("optimizer")
        .map_err(|e| err(format!("optimizer: {e}")))?
        .data()
        .to_vec();

    // Pending gradients by parameter id.
    let mut by_id: BTreeMap<u64, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (k, t) in st.tensors() {
        if let Some(id) = k.strip_prefix("grad/") {
            let id: u64 = id.parse().map_err(|_| err(format!("bad gradient key `{k}`")))?;
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            by_id.insert(id, (t.shape().to_vec(), v));
        }
    }
    struct Reg<'a> {
        by_id: &'a mut BTreeMap<u64, (Vec<usize>, Vec<f32>)>,
        grads: GradientsParams,
        device: Device,
    }
    impl ModuleVisitor for Reg<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some((shape, v)) = self.by_id.remove(&param.id.val()) {
                let t = Tensor::<D>::from_data(TensorData::new(v, shape), &self.device);
                self.grads.register(param.id, t.inner());
            }
        }
    }
    let mut reg = Reg {
        by_id: &mut by_id,
        grads: GradientsParams::new(),
        device: device.clone(),
    };
    model.visit(&mut reg);
    let pending = reg.grads;
    if let Some(id) = by_id.keys().next() {
        return Err(err(format!("pending gradient for unknown parameter id {id}")));
    }
    Ok(Restored {
        state,
        meta,
        model,
        ema,
        optimizer,
        pending,
    })
}

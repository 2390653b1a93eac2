//! Reading and writing weights in the Ultralytics state_dict layout (safetensors).
//!
//! A checkpoint is a safetensors file whose tensor names are Ultralytics' (`model.0.conv.weight`
//! … `model.22.dfl.conv.weight`; BatchNorm as `weight`/`bias`/`running_mean`/`running_var`;
//! `num_batches_tracked` ignored on load). Our own checkpoints add metadata (model config,
//! class names, image size), so a checkpoint written here and one converted from Ultralytics by
//! `tools/convert_ultralytics.py` are interchangeable.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use burn::tensor::Device;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result, WeightProblem};
use crate::model::{ModelConfig, YoloV8};

/// Kept here for existing callers; it lives in [`crate::files`], where new code finds it.
use crate::files::write_atomic;

/// The one mapping from Ultralytics' `model.{i}` rows to our module tree. Rows 10, 11, 13, 14,
/// 17 and 20 (Upsample, Concat) hold no parameters.
pub const LAYER_TABLE: [(usize, &str); 17] = [
    (0, "backbone.stem"),
    (1, "backbone.down1"),
    (2, "backbone.c2f1"),
    (3, "backbone.down2"),
    (4, "backbone.c2f2"),
    (5, "backbone.down3"),
    (6, "backbone.c2f3"),
    (7, "backbone.down4"),
    (8, "backbone.c2f4"),
    (9, "backbone.sppf"),
    (12, "neck.top_p4"),
    (15, "neck.top_p3"),
    (16, "neck.down_p3"),
    (18, "neck.out_p4"),
    (19, "neck.down_p4"),
    (21, "neck.out_p5"),
    (22, "head"),
];

/// Format tag written in the metadata of our checkpoints.
pub const FORMAT: &str = "yolo-rs/1";

/// Our module path → Ultralytics key (`backbone.stem.conv.weight` → `model.0.conv.weight`).
pub fn to_ultralytics_key(path: &str) -> Option<String> {
    LAYER_TABLE.iter().find_map(|(i, ours)| {
        path.strip_prefix(ours)
            .filter(|rest| rest.starts_with('.'))
            .map(|rest| format!("model.{i}{rest}"))
    })
}

/// Ultralytics key → our module path (`model.0.conv.weight` → `backbone.stem.conv.weight`).
pub fn from_ultralytics_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("model.")?;
    let (index, rest) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    LAYER_TABLE
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, ours)| format!("{ours}.{rest}"))
}

fn remapper(to_ours: bool) -> KeyRemapper {
    let pairs = LAYER_TABLE.iter().map(|(i, ours)| {
        let theirs = format!("model.{i}.");
        if to_ours {
            (format!("^{}", regex_escape(&theirs)), format!("{ours}."))
        } else {
            (format!("^{}", regex_escape(&format!("{ours}."))), theirs)
        }
    });
    KeyRemapper::from_pattern_iter(pairs).expect("layer table patterns are valid regexes")
}

fn regex_escape(s: &str) -> String {
    s.replace('.', r"\.")
}

/// Metadata stored beside the tensors of our checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// How to build the model.
    pub model: ModelConfig,
    /// Class names, `nc` of them.
    pub names: Vec<String>,
    /// Training / nominal inference image size.
    pub imgsz: usize,
    /// Anything else (training epoch, fitness, provenance).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

impl CheckpointMeta {
    fn to_strings(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("format".to_string(), FORMAT.to_string()),
            (
                "model".to_string(),
                serde_json::to_string(&self.model).expect("config serialises"),
            ),
            (
                "names".to_string(),
                serde_json::to_string(&self.names).expect("names serialise"),
            ),
            ("imgsz".to_string(), self.imgsz.to_string()),
        ];
        v.extend(self.extra.iter().map(|(k, v)| (format!("extra.{k}"), v.clone())));
        v
    }

    fn from_strings(path: &Path, m: &HashMap<String, String>) -> Result<Self> {
        let field = |name: &str| {
            m.get(name).ok_or_else(|| CoreError::Metadata {
                path: path.into(),
                field: name.into(),
                message: "missing (is this a plain state_dict? convert it with tools/convert_ultralytics.py)".into(),
            })
        };
        let bad = |name: &str, e: &dyn std::fmt::Display| CoreError::Metadata {
            path: path.into(),
            field: name.into(),
            message: e.to_string(),
        };
        let model: ModelConfig =
            serde_json::from_str(field("model")?).map_err(|e| bad("model", &e))?;
        let names: Vec<String> =
            serde_json::from_str(field("names")?).map_err(|e| bad("names", &e))?;
        let imgsz: usize = field("imgsz")?.parse().map_err(|e| bad("imgsz", &e))?;
        if names.len() != model.nc {
            return Err(bad(
                "names",
                &format!("{} names for nc = {}", names.len(), model.nc),
            ));
        }
        let extra = m
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("extra.").map(|k| (k.to_string(), v.clone())))
            .collect();
        Ok(Self {
            model,
            names,
            imgsz,
            extra,
        })
    }
}

/// Reads a checkpoint's metadata without loading tensors.
pub fn read_meta(path: impl AsRef<Path>) -> Result<CheckpointMeta> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    let (_, header) = parse_header(path, &bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    CheckpointMeta::from_strings(path, &meta)
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<(usize, safetensors::tensor::Metadata)> {
    safetensors::SafeTensors::read_metadata(bytes).map_err(|e| CoreError::Safetensors {
        path: path.into(),
        message: e.to_string(),
    })
}

/// Shapes of every parameter and buffer of `model`, by Ultralytics key.
pub fn expected_keys(model: &YoloV8) -> BTreeMap<String, Vec<usize>> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| {
            let key = to_ultralytics_key(&t.name)
                .unwrap_or_else(|| panic!("module path `{}` is not in LAYER_TABLE", t.name));
            (key, t.shape.to_vec())
        })
        .collect()
}

/// Checks every tensor of a safetensors file against the model, by Ultralytics key.
fn check_fit(
    model: &YoloV8,
    header: &safetensors::tensor::Metadata,
) -> Vec<WeightProblem> {
    let expected = expected_keys(model);
    let found: BTreeMap<String, (Dtype, Vec<usize>)> = header
        .tensors()
        .into_iter()
        .map(|(k, info)| (k, (info.dtype, info.shape.clone())))
        .collect();
    let mut problems = Vec::new();
    for (key, shape) in &expected {
        match found.get(key) {
            None => problems.push(WeightProblem::Missing {
                key: key.clone(),
                expected: shape.clone(),
            }),
            Some((_, s)) if s != shape => problems.push(WeightProblem::Shape {
                key: key.clone(),
                expected: shape.clone(),
                found: s.clone(),
            }),
            Some((dtype, _)) if *dtype != Dtype::F32 => problems.push(WeightProblem::DType {
                key: key.clone(),
                dtype: format!("{dtype:?}"),
            }),
            Some(_) => {}
        }
    }
    for (key, (_, shape)) in &found {
        if !expected.contains_key(key) && !key.ends_with(".num_batches_tracked") {
            problems.push(WeightProblem::Unexpected {
                key: key.clone(),
                found: shape.clone(),
            });
        }
    }
    problems
}

/// Loads weights (Ultralytics layout) into `model`. Fails, naming every key, if any tensor is
/// missing, unexpected, mis-shaped or not F32; the model is unchanged then.
pub fn load_weights(model: &mut YoloV8, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    load_weights_from_bytes(model, path, bytes)
}

/// [`load_weights`] from the bytes of a safetensors file; `path` names its origin in errors.
pub fn load_weights_from_bytes(model: &mut YoloV8, path: &Path, bytes: Vec<u8>) -> Result<()> {
    let (_, header) = parse_header(path, &bytes)?;
    let problems = check_fit(model, &header);
    if !problems.is_empty() {
        return Err(CoreError::Weights {
            path: path.into(),
            problems,
        });
    }
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .remap(remapper(true))
        .with_from_adapter(PyTorchToBurnAdapter)
        .skip_enum_variants(true)
        .map_indices_contiguous(false)
        .allow_partial(true)
        .validate(false);
    let result = model.load_from(&mut store).map_err(|e| CoreError::Safetensors {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut problems: Vec<WeightProblem> = result
        .errors
        .iter()
        .map(|e| WeightProblem::Other {
            key: String::new(),
            message: e.to_string(),
        })
        .collect();
    problems.extend(result.missing.iter().map(|(p, _)| WeightProblem::Missing {
        key: to_ultralytics_key(p).unwrap_or_else(|| p.clone()),
        expected: vec![],
    }));
    if !problems.is_empty() {
        return Err(CoreError::Weights {
            path: path.into(),
            problems,
        });
    }
    model.head.freeze_dfl();
    Ok(())
}

/// Builds a model from a checkpoint with metadata and loads its weights.
pub fn load_model(path: impl AsRef<Path>, device: &Device) -> Result<(YoloV8, CheckpointMeta)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    let (_, header) = parse_header(path, &bytes)?;
    let meta = CheckpointMeta::from_strings(path, &header.metadata().clone().unwrap_or_default())?;
    let mut model = meta.model.init(device).map_err(|e| match e {
        CoreError::Config { field, message } => CoreError::Metadata {
            path: path.into(),
            field: format!("model.{field}"),
            message,
        },
        other => other,
    })?;
    load_weights_from_bytes(&mut model, path, bytes)?;
    Ok((model, meta))
}

/// The safetensors bytes of `model` in the Ultralytics layout, with `meta`.
pub fn to_bytes(model: &YoloV8, meta: &CheckpointMeta) -> Result<Vec<u8>> {
    if model.is_fused() {
        return Err(CoreError::Safetensors {
            path: PathBuf::from("<memory>"),
            message: "a fused (inference-only) model cannot be saved: save it before `fuse()`".into(),
        });
    }
    let mut store = SafetensorsStore::from_bytes(None)
        .clear_metadata()
        .remap(remapper(false))
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true)
        .map_indices_contiguous(false);
    for (k, v) in meta.to_strings() {
        store = store.metadata(k, v);
    }
    let err = |e: &dyn std::fmt::Display| CoreError::Safetensors {
        path: PathBuf::from("<memory>"),
        message: e.to_string(),
    };
    model.save_into(&mut store).map_err(|e| err(&e))?;
    store.get_bytes().map_err(|e| err(&e))
}

/// Saves `model` with `meta` atomically (temporary file in the same folder, then rename).
pub fn save_model(model: &YoloV8, meta: &CheckpointMeta, path: impl AsRef<Path>) -> Result<()> {
    let bytes = to_bytes(model, meta)?;
    write_atomic(path.as_ref(), &bytes)
}

//! Training settings with Ultralytics 8.4.190 defaults (`cfg/default.yaml`), saved as
//! `args.yaml` in every run folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use yolo_core::{Multiples, Scale};

use crate::error::{Result, TrainError};

/// Which optimizer to use (`optimizer=` in Ultralytics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum OptimizerKind {
    /// Ultralytics' rule: AdamW with a fitted LR for short runs, SGD for long ones.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// SGD with Nesterov momentum.
    #[serde(rename = "SGD")]
    Sgd,
    /// AdamW with betas `(momentum, 0.999)`.
    #[serde(rename = "AdamW")]
    AdamW,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "sgd" => Ok(Self::Sgd),
            "adamw" => Ok(Self::AdamW),
            other => Err(format!("unknown optimizer `{other}` (auto, SGD, AdamW)")),
        }
    }
}

/// Every training setting. Field names follow Ultralytics' `args.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Path of the data.yaml.
    pub data: PathBuf,
    /// Published scale (ignored when `multiples` is set or `weights` is given).
    pub scale: Scale,
    /// Custom `(depth, width, max_channels)` instead of a published scale.
    pub multiples: Option<Multiples>,
    /// Start from these weights (our safetensors checkpoint layout).
    pub weights: Option<PathBuf>,
    pub epochs: usize,
    pub batch: usize,
    pub imgsz: usize,
    pub seed: u64,
    pub optimizer: OptimizerKind,
    pub lr0: f64,
    pub lrf: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    pub warmup_momentum: f64,
    pub warmup_bias_lr: f64,
    #[serde(rename = "box")]
    pub box_gain: f64,
    pub cls: f64,
    pub dfl: f64,
    pub nbs: usize,
    pub cos_lr: bool,
    /// Epochs at the end without mosaic (Ultralytics' `close_mosaic`).
    pub close_mosaic: usize,
    /// Training augmentations under `aug:` (Ultralytics' keys and defaults: hsv_h, hsv_s,
    /// hsv_v, degrees, translate, scale, shear, perspective, flipud, fliplr, mosaic, mixup;
    /// nested because the model's `scale` takes the top-level key).
    #[serde(default)]
    pub aug: crate::augment::AugConfig,
    /// Keep decoded, resized training images in memory after first use (Ultralytics'
    /// `cache=ram`; `true` means ram).
    pub cache: bool,
    /// Stop after this many epochs without improvement (0 disables).
    pub patience: usize,
    /// Validate every epoch.
    pub val: bool,
    pub project: PathBuf,
    pub name: String,
    /// Reuse `project/name` instead of incrementing the name.
    pub exist_ok: bool,
    /// Mixed precision (Ultralytics' `amp`): convs in f16 under autocast, the loss scaled by a
    /// `GradScaler`, parameters and optimizer in f32. Off by default here (Ultralytics: on, and
    /// off on the CPU). `yolo-train` turns it off on `flex`, where f16 is emulated and slower;
    /// the library honours it on every backend (on `flex` for checking).
    pub amp: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            scale: Scale::N,
            multiples: None,
            weights: None,
            epochs: 100,
            batch: 16,
            imgsz: 640,
            seed: 0,
            optimizer: OptimizerKind::Auto,
            lr0: 0.01,
            lrf: 0.01,
            momentum: 0.937,
            weight_decay: 5e-4,
            warmup_epochs: 3.0,
            warmup_momentum: 0.8,
            warmup_bias_lr: 0.1,
            box_gain: 7.5,
            cls: 0.5,
            dfl: 1.5,
            nbs: 64,
            cos_lr: false,
            close_mosaic: 10,
            aug: crate::augment::AugConfig::default(),
            cache: false,
            patience: 100,
            val: true,
            project: PathBuf::from("runs/train"),
            name: "train".into(),
            exist_ok: false,
            amp: false,
        }
    }
}

impl TrainConfig {
    /// The model multiples this config asks for.
    pub fn model_multiples(&self) -> Multiples {
        self.multiples.unwrap_or_else(|| self.scale.multiples())
    }

    /// Checks values a user can get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(TrainError::config("epochs", "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(TrainError::config("batch", "must be at least 1"));
        }
        if self.imgsz == 0 || self.imgsz % yolo_core::model::MAX_STRIDE != 0 {
            return Err(TrainError::config(
                "imgsz",
                format!("{} is not a positive multiple of 32", self.imgsz),
            ));
        }
        if self.imgsz > yolo_core::model::MAX_IMGSZ as usize {
            return Err(TrainError::config(
                "imgsz",
                format!("{} is more than {}", self.imgsz, yolo_core::model::MAX_IMGSZ),
            ));
        }
        if self.nbs == 0 {
            return Err(TrainError::config("nbs", "must be at least 1"));
        }
        // Ultralytics' `check_cfg`: these are fractions (lr0 and lrf included).
        let fractions = [
            ("lr0", self.lr0),
            ("lrf", self.lrf),
            ("momentum", self.momentum),
            ("weight_decay", self.weight_decay),
            ("warmup_momentum", self.warmup_momentum),
            ("warmup_bias_lr", self.warmup_bias_lr),
        ];
        for (field, v) in fractions {
            if !(0.0..=1.0).contains(&v) {
                return Err(TrainError::config(field, format!("{v} is not between 0 and 1")));
            }
        }
        let gains = [
            ("warmup_epochs", self.warmup_epochs),
            ("box", self.box_gain),
            ("cls", self.cls),
            ("dfl", self.dfl),
        ];
        for (field, v) in gains {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TrainError::config(field, format!("{v} is not a non-negative number")));
            }
        }
        self.aug
            .check()
            .map_err(|(field, message)| TrainError::config(&field, message))?;
        Ok(())
    }

    /// Writes the config as YAML.
    pub fn save_yaml(&self, path: &Path) -> Result<()> {
        let text = serde_yaml::to_string(self).map_err(|e| TrainError::Yaml {
            path: path.into(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
    }

    /// Reads a config written by [`save_yaml`](Self::save_yaml).
    pub fn load_yaml(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        serde_yaml::from_str(&text).map_err(|e| TrainError::Yaml {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trip_keeps_ultralytics_names() {
        let c = TrainConfig {
            multiples: Some(Multiples {
                depth: 0.33,
                width: 0.0625,
                max_channels: 1024,
            }),
            ..Default::default()
        };
        let text = serde_yaml::to_string(&c).unwrap();
        assert!(text.contains("box: 7.5"), "{text}");
        assert!(text.contains("optimizer: auto"), "{text}");
        let back: TrainConfig = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    /// Ultralytics' `check_cfg` ranges: the error names the setting.
    #[test]
    fn out_of_range_settings_are_named() {
        assert!(TrainConfig::default().validate().is_ok());
        let field = |c: TrainConfig| match c.validate() {
            Err(TrainError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let d = TrainConfig::default;
        assert_eq!(field(TrainConfig { weight_decay: f64::NAN, ..d() }), "weight_decay");
        assert_eq!(field(TrainConfig { lr0: 2.0, ..d() }), "lr0");
        assert_eq!(field(TrainConfig { warmup_epochs: f64::NAN, ..d() }), "warmup_epochs");
        assert_eq!(field(TrainConfig { box_gain: -1.0, ..d() }), "box");
        assert_eq!(field(TrainConfig { imgsz: 32768, ..d() }), "imgsz");
        let aug = |a: crate::augment::AugConfig| field(TrainConfig { aug: a, ..d() });
        let a = crate::augment::AugConfig::default;
        assert_eq!(aug(crate::augment::AugConfig { mosaic: 2.0, ..a() }), "aug.mosaic");
        assert_eq!(aug(crate::augment::AugConfig { fliplr: 7.0, ..a() }), "aug.fliplr");
        assert_eq!(aug(crate::augment::AugConfig { degrees: f64::NAN, ..a() }), "aug.degrees");
        assert_eq!(aug(crate::augment::AugConfig { scale: f64::INFINITY, ..a() }), "aug.scale");
    }
}

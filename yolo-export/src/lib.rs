//! yolo-export: writes YOLOv8 checkpoints as ONNX that onnxruntime, Ultralytics' `YOLO(...)`
//! and TensorRT-style consumers run.
//!
//! Stands on `yolo-core` only. The protobuf messages are hand-written `prost` structs
//! ([`proto`]), so building never needs `protoc`.
//!
//! ```no_run
//! use yolo_export::{export_checkpoint, ExportOptions};
//! let mut opts = ExportOptions::new([640, 640]);
//! opts.dynamic = true;
//! let written = export_checkpoint("best.safetensors".as_ref(), "best.onnx".as_ref(), &opts).unwrap();
//! println!("{} bytes, sha256 {}", written.exported.bytes.len(), written.exported.sha256());
//! ```

pub mod error;
pub mod export;
pub mod graph;
pub mod metadata;
pub mod proto;

use std::path::{Path, PathBuf};

pub use error::{ExportError, Result};
pub use export::{
    export_model, ir_version, ExportOptions, Exported, NmsOptions, TensorSummary, DEFAULT_OPSET,
    MAX_OPSET, MIN_OPSET,
};
pub use yolo_core;

/// A file written by [`export_checkpoint`].
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub exported: Exported,
}

/// Loads the checkpoint at `weights` (ours or converted from Ultralytics) on the CPU, exports
/// it with `opts` and writes `output` atomically.
pub fn export_checkpoint(weights: &Path, output: &Path, opts: &ExportOptions) -> Result<Written> {
    opts.validate()?;
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(weights), std::fs::canonicalize(output)) {
        if a == b {
            return Err(ExportError::Option {
                option: "output",
                message: format!("{} is the checkpoint being exported: the ONNX file would replace it", output.display()),
            });
        }
    }
    let device = yolo_core::backend::cpu_device();
    let (model, meta) = yolo_core::weights::load_model(weights, &device).map_err(|source| {
        ExportError::Checkpoint {
            path: weights.to_path_buf(),
            source,
        }
    })?;
    let stem = weights
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let description = format!("yolo-rs YOLOv8 model {stem} ({} classes)", meta.model.nc);
    let exported = export_model(&model, &meta.names, &description, opts)?;
    yolo_core::files::write_atomic(output, &exported.bytes).map_err(|source| ExportError::Write {
        path: output.to_path_buf(),
        source,
    })?;
    Ok(Written {
        path: output.to_path_buf(),
        exported,
    })
}

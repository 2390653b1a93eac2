//! The error type of `yolo-export`.

use std::path::PathBuf;

/// Everything a user of the exporter can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The checkpoint could not be read or does not build a model (yolo-core's error names
    /// the file).
    #[error("cannot read checkpoint: {source}")]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: yolo_core::CoreError,
    },
    /// An option value, or a combination of options, that the exporter cannot honour.
    #[error("invalid option `{option}`: {message}")]
    Option { option: &'static str, message: String },
    /// The model holds something the ONNX writer does not know how to express.
    #[error("cannot export the model: {0}")]
    Unsupported(String),
    /// The ONNX file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: yolo_core::CoreError,
    },
}

/// `Result` with [`ExportError`].
pub type Result<T, E = ExportError> = std::result::Result<T, E>;

pub(crate) fn bad_option<T>(option: &'static str, message: impl Into<String>) -> Result<T> {
    Err(ExportError::Option {
        option,
        message: message.into(),
    })
}

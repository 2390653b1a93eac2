//! The error type of yolo-train.

use std::path::PathBuf;

/// What can go wrong while configuring or running a training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A failure in yolo-core (dataset, image, weights, model config).
    #[error(transparent)]
    Core(#[from] yolo_core::CoreError),
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A training setting is invalid.
    #[error("invalid training setting `{field}`: {message}")]
    Config { field: String, message: String },
    /// A YAML file could not be written or parsed.
    #[error("{path}: {message}")]
    Yaml { path: PathBuf, message: String },
    /// Fine-tuning weights do not fit the model.
    #[error("weights {path}: {message}")]
    Weights { path: PathBuf, message: String },
    /// A training state file (`last.state`) cannot be written or read back.
    #[error("training state {path}: {message}")]
    State { path: PathBuf, message: String },
    /// Nothing to resume from.
    #[error("cannot resume {path}: {message}")]
    Resume { path: PathBuf, message: String },
    /// The loss became NaN or infinite.
    #[error("loss is not finite at epoch {epoch}, batch {batch}")]
    NonFiniteLoss { epoch: usize, batch: usize },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

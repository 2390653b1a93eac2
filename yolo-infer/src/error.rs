//! The error type of `yolo-infer`'s library.

/// What can go wrong when detecting.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Weights, images or model input (from yolo-core; names the file).
    #[error(transparent)]
    Core(#[from] yolo_core::CoreError),
    /// An option out of range.
    #[error("invalid `{field}`: {message}")]
    Options { field: String, message: String },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`InferError`].
pub type Result<T, E = InferError> = std::result::Result<T, E>;

//! The error type of `yolo-core`.

use std::path::PathBuf;

/// Everything a user of `yolo-core` can get wrong: files, weights, configs, data.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A weights file is not a readable safetensors file.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// The weights do not fit the model: every missing, unexpected or mis-shaped key.
    #[error("{path}: weights do not fit the model:\n  {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Weights {
        path: PathBuf,
        problems: Vec<WeightProblem>,
    },
    /// Metadata in a checkpoint is missing or malformed.
    #[error("{path}: metadata field `{field}`: {message}")]
    Metadata {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// A configuration value is out of range.
    #[error("invalid config `{field}`: {message}")]
    Config { field: String, message: String },
    /// An input tensor has a shape the model cannot take.
    #[error("invalid input: {0}")]
    Input(String),
    /// A dataset yaml (`data.yaml`) is missing a field or has a malformed one.
    #[error("{path}: field `{field}`: {message}")]
    DataConfig {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// A file could be read but is not an image the image crate can decode.
    #[error("{path}: cannot decode image: {message}")]
    Image { path: PathBuf, message: String },
    /// An image's header claims more pixels than allowed; refused before decoding.
    #[error("{path}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")]
    ImageTooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    /// A dataset split has no images, or none that passed the label checks.
    #[error("{path}: {message}")]
    Dataset { path: PathBuf, message: String },
    /// A device request (`via`: `BURN_DEVICE`, `--device`) names a backend that is unknown,
    /// not compiled in, or has no device on this machine.
    #[error("{via}={requested}: {message}")]
    Device {
        via: &'static str,
        requested: String,
        message: String,
    },
}

/// One way a weights file fails to fit the model; keys use the Ultralytics names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightProblem {
    #[error("missing key `{key}` (model expects shape {expected:?})")]
    Missing { key: String, expected: Vec<usize> },
    #[error("unexpected key `{key}` (shape {found:?}) has no place in the model")]
    Unexpected { key: String, found: Vec<usize> },
    #[error("key `{key}` has shape {found:?}, the model expects {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(
        "key `{key}` has dtype {dtype}; expected F32 (tools/convert_ultralytics.py writes F32)"
    )]
    DType { key: String, dtype: String },
    #[error("key `{key}`: {message}")]
    Other { key: String, message: String },
}

/// `Result` with [`CoreError`].
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// An error and its causes on one line, `a: b: c`, skipping a cause whose text a message
/// before already holds (ours print their source, `{path}: {source}`, which `{:#}` of an
/// `anyhow::Error` would print twice). What the binaries print.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        cause = c.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_skips_causes_already_printed() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = super::CoreError::io("a/b.txt", io);
        assert_eq!(super::chain(&e), "a/b.txt: no such file");
        #[derive(Debug, thiserror::Error)]
        #[error("reading the dataset")]
        struct Outer(#[source] super::CoreError);
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let outer = Outer(super::CoreError::io("a/b.txt", io));
        assert_eq!(super::chain(&outer), "reading the dataset: a/b.txt: no such file");
    }
}

//! Writing files so that readers never see a partial one: checkpoints, reports, caches, plots.

use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// Serialises a path as text, bytes that are not UTF-8 replaced by U+FFFD, for reports and
/// results (`#[serde(serialize_with = "...")]`): serde's own `Path` impl fails on such a name,
/// and one file named in Latin-1 would fail a whole report.
pub fn serialize_path_lossy<S: serde::Serializer>(path: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// [`serialize_path_lossy`] for an optional path.
pub fn serialize_opt_path_lossy<S: serde::Serializer>(
    path: &Option<PathBuf>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match path {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// [`serialize_path_lossy`] for `(path, text)` pairs.
pub fn serialize_path_pairs_lossy<S: serde::Serializer>(
    pairs: &[(PathBuf, String)],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(pairs.iter().map(|(p, t)| (p.to_string_lossy(), t)))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see a
/// partial file and a crash never destroys the previous version.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CoreError::io(path, e)
    })
}

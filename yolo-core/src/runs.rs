//! Run folders, named as Ultralytics names them.

use std::path::{Path, PathBuf};

/// `increment_path`: `project/name`, or `name2`, `name3`, ... if it exists (unless `exist_ok`).
pub fn increment_path(base: &Path, exist_ok: bool) -> PathBuf {
    if exist_ok || !base.exists() {
        return base.to_path_buf();
    }
    let name = base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (2..)
        .map(|n| base.with_file_name(format!("{name}{n}")))
        .find(|p| !p.exists())
        .expect("some name is free")
}

//! `data.yaml` parsing and image lists of a split.
//!
//! Matches Ultralytics 8.4.190: `check_det_dataset` (`ultralytics/data/utils.py`) for the yaml,
//! `BaseDataset.get_img_files` (`ultralytics/data/base.py`) for the image lists and
//! `img2label_paths` for the label paths ([`img2label_path`], which lives in
//! [`labels`](crate::data::labels) beside the scan that uses it). Deliberate differences are
//! marked "Differs".

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use serde_yaml::Value;

use crate::data::image::has_image_extension;
pub use crate::data::labels::img2label_path;
use crate::data::labels::{scan_cached, Sample, ScanReport};
use crate::error::{CoreError, Result};

/// One split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    /// The yaml key: `train`, `val` or `test`.
    pub fn key(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// A dataset description read from a `data.yaml`, with every path resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    /// The yaml file this was read from.
    pub yaml: PathBuf,
    /// Dataset root: `path` (relative to the yaml's folder), or the yaml's folder.
    pub root: PathBuf,
    /// Image sources of the training split: folders, or text files listing images.
    pub train: Vec<PathBuf>,
    /// Image sources of the validation split (`val`, or Ultralytics' alias `validation`).
    pub val: Vec<PathBuf>,
    /// Image sources of the optional test split.
    pub test: Option<Vec<PathBuf>>,
    /// Class names, index = class id.
    pub names: Vec<String>,
}

impl DataConfig {
    /// Reads and resolves a `data.yaml` as Ultralytics' `check_det_dataset` does:
    /// - `train` and `val` are required (`validation` is accepted for `val`), `test` optional;
    ///   each is a string or a list of strings, joined to the root. A string that does not
    ///   exist and starts with `../` is retried without it (as Ultralytics does).
    /// - `names` is a list or a map `{0: a, 1: b}` whose keys must be `0..n`; without `names`,
    ///   `nc` gives `class_0..`; with both, their lengths must agree.
    /// - `path` is the dataset root. Differs: a relative `path` is taken relative to the yaml's
    ///   folder (Ultralytics: the working directory, then its `datasets_dir` setting).
    ///
    /// # Errors
    /// [`CoreError::Io`] if the file cannot be read; [`CoreError::DataConfig`] naming the file
    /// and the field for a missing or malformed field.
    pub fn from_yaml(path: impl AsRef<Path>) -> Result<Self> {
        let yaml = path.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&yaml).map_err(|e| CoreError::io(&yaml, e))?;
        let bad = |field: &str, message: String| CoreError::DataConfig {
            path: yaml.clone(),
            field: field.into(),
            message,
        };
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| bad("(yaml)", e.to_string()))?;
        let map = doc.as_mapping().ok_or_else(|| {
            bad(
                "(yaml)",
                "the file is not a mapping of keys to values".into(),
            )
        })?;
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());

        let folder = yaml
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let root = match get("path") {
            None => folder.to_path_buf(),
            Some(Value::String(s)) if s.is_empty() => folder.to_path_buf(),
            Some(Value::String(s)) => folder.join(s),
            Some(v) => return Err(bad("path", format!("must be a string, not {}", kind(v)))),
        };
        let root = resolve(&root);

        let sources = |field: &str, v: &Value| -> Result<Vec<PathBuf>> {
            match v {
                Value::String(s) => {
                    let mut x = resolve(&root.join(s));
                    if !x.exists() {
                        if let Some(rest) = s.strip_prefix("../") {
                            x = resolve(&root.join(rest));
                        }
                    }
                    Ok(vec![x])
                }
                Value::Sequence(items) => items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(resolve(&root.join(s))),
                        other => Err(bad(
                            field,
                            format!("list items must be strings, not {}", kind(other)),
                        )),
                    })
                    .collect(),
                other => Err(bad(
                    field,
                    format!("must be a string or a list, not {}", kind(other)),
                )),
            }
        };
        let train = get("train").ok_or_else(|| {
            bad(
                "train",
                "missing ('train' and 'val' are required in all data YAMLs)".into(),
            )
        })?;
        let train = sources("train", train)?;
        let (val_key, val) = match (get("val"), get("validation")) {
            (Some(v), _) => ("val", v),
            (None, Some(v)) => ("validation", v),
            (None, None) => {
                return Err(bad(
                    "val",
                    "missing ('train' and 'val' are required in all data YAMLs)".into(),
                ))
            }
        };
        let val = sources(val_key, val)?;
        let test = match get("test") {
            Some(Value::String(s)) if s.is_empty() => None,
            Some(v) => Some(sources("test", v)?),
            None => None,
        };

        let nc = match get("nc") {
            None => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) => Some(n as usize),
                None => match n.as_f64() {
                    Some(f) if f >= 0.0 && f.fract() == 0.0 => Some(f as usize),
                    _ => return Err(bad("nc", format!("`{n}` must be an integer"))),
                },
            },
            Some(Value::String(s)) => Some(
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .ok_or_else(|| bad("nc", format!("`{s}` must be an integer")))?
                    as usize,
            ),
            Some(v) => return Err(bad("nc", format!("must be an integer, not {}", kind(v)))),
        };
        if let Some(n) = nc.filter(|&n| n > crate::model::MAX_CLASSES) {
            return Err(bad("nc", format!("{n} is more than {} classes", crate::model::MAX_CLASSES)));
        }
        let names = match get("names") {
            None => match nc {
                Some(nc) => (0..nc).map(|i| format!("class_{i}")).collect(),
                None => {
                    return Err(bad(
                        "names",
                        "missing (either 'names' or 'nc' is required in all data YAMLs)".into(),
                    ))
                }
            },
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|v| {
                    scalar_string(v).ok_or_else(|| bad("names", "names must be scalars".into()))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(Value::Mapping(m)) => {
                let mut pairs = Vec::with_capacity(m.len());
                for (k, v) in m {
                    let key = match k {
                        Value::Number(n) => n.as_u64(),
                        Value::String(s) => s.trim().parse::<u64>().ok(),
                        _ => None,
                    }
                    .ok_or_else(|| bad("names", format!("key {k:?} is not a class index")))?;
                    let name = scalar_string(v).ok_or_else(|| {
                        bad("names", format!("name of class {key} must be a scalar"))
                    })?;
                    pairs.push((key as usize, name));
                }
                let n = pairs.len();
                let mut names = vec![None; n];
                for (k, name) in pairs {
                    if k >= n || names[k].is_some() {
                        return Err(bad(
                            "names",
                            format!(
                                "{n}-class dataset requires class indices 0-{}, found {k}",
                                n.max(1) - 1
                            ),
                        ));
                    }
                    names[k] = Some(name);
                }
                names
                    .into_iter()
                    .map(|n| n.expect("keys 0..n are all set"))
                    .collect()
            }
            Some(v) => {
                return Err(bad(
                    "names",
                    format!("must be a list or a map, not {}", kind(v)),
                ))
            }
        };
        if let Some(nc) = nc {
            if names.len() != nc {
                return Err(bad(
                    "names",
                    format!("length {} and 'nc: {nc}' must match", names.len()),
                ));
            }
        }
        if names.is_empty() {
            return Err(bad(
                "names",
                "0-class dataset, at least one class name is required".into(),
            ));
        }
        Ok(Self {
            yaml,
            root,
            train,
            val,
            test,
            names,
        })
    }

    /// Number of classes, `names.len()`.
    pub fn nc(&self) -> usize {
        self.names.len()
    }

    /// The image sources of `split`; `None` for a test split the yaml does not give.
    pub fn sources(&self, split: Split) -> Option<&[PathBuf]> {
        match split {
            Split::Train => Some(&self.train),
            Split::Val => Some(&self.val),
            Split::Test => self.test.as_deref(),
        }
    }

    /// The sorted image files of `split` (see [`image_files`]).
    ///
    /// # Errors
    /// [`CoreError::DataConfig`] when the split is not in the yaml; the errors of [`image_files`].
    pub fn image_files(&self, split: Split) -> Result<Vec<PathBuf>> {
        let sources = self.sources(split).ok_or_else(|| CoreError::DataConfig {
            path: self.yaml.clone(),
            field: split.key().into(),
            message: "not given in the dataset yaml".into(),
        })?;
        image_files(sources, &self.root)
    }
}

/// Lists the images of one split as Ultralytics' `get_img_files` does: a folder is searched
/// recursively (`**/*.*`; like `glob`, names starting with `.` are skipped); a file is a UTF-8
/// list (a byte-order mark is allowed) of image paths, one a line, where `./x` is relative to
/// the list's folder. Only [`IMG_FORMATS`](crate::data::image::IMG_FORMATS) extensions are
/// kept, and the result is sorted as strings (byte order, as Python sorts `str`); duplicates
/// are kept. Differs: other relative lines are taken relative to `root` (Ultralytics: the
/// working directory), and lines are trimmed of surrounding whitespace.
///
/// # Errors
/// [`CoreError::Dataset`] when a source does not exist or no image is found;
/// [`CoreError::Io`] when a folder or list cannot be read.
pub fn image_files(sources: &[PathBuf], root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for source in sources {
        if source.is_dir() {
            let mut seen = HashSet::new();
            walk(source, &mut files, &mut seen)?;
        } else if source.is_file() {
            let bytes = std::fs::read(source).map_err(|e| CoreError::io(source, e))?;
            let text = String::from_utf8(bytes).map_err(|_| CoreError::Dataset {
                path: source.clone(),
                message: "an image list must be UTF-8 text".into(),
            })?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let parent = source.parent().unwrap_or(Path::new("."));
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let p = if let Some(rest) = line.strip_prefix("./") {
                    parent.join(rest)
                } else {
                    root.join(line)
                };
                files.push(p);
            }
        } else {
            return Err(CoreError::Dataset {
                path: source.clone(),
                message: "does not exist".into(),
            });
        }
    }
    files.retain(|f| has_image_extension(f));
    files.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    if files.is_empty() {
        let path = sources
            .first()
            .cloned()
            .unwrap_or_else(|| root.to_path_buf());
        return Err(CoreError::Dataset {
            path,
            message: format!(
                "no images found (extensions: {})",
                crate::data::image::IMG_FORMATS.join(", ")
            ),
        });
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> Result<()> {
    // Symlinked folders are followed (as glob does); the canonical-path set stops cycles.
    if let Ok(canonical) = dir.canonicalize() {
        if !seen.insert(canonical) {
            return Ok(());
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| CoreError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CoreError::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out, seen)?;
        } else if entry.file_name().to_string_lossy().contains('.') {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads, checks and caches the labels of one split: [`DataConfig::image_files`], then
/// [`scan_cached`] with `nc` classes. Like Ultralytics' `YOLODataset.get_labels`, a split
/// with no valid image is an error that lists the reasons.
///
/// # Errors
/// The errors of [`DataConfig::image_files`]; [`CoreError::Dataset`] when no image is valid.
pub fn load_split(config: &DataConfig, split: Split) -> Result<(Vec<Sample>, ScanReport)> {
    let images = config.image_files(split)?;
    let (samples, report) = scan_cached(&images, config.nc());
    if samples.is_empty() {
        return Err(no_valid_images(config, split, &report));
    }
    Ok((samples, report))
}

/// The error for a split in which no image passed the checks: Ultralytics' "No valid images
/// found", with every reason the scan gave.
fn no_valid_images(config: &DataConfig, split: Split, report: &ScanReport) -> CoreError {
    let mut issues: Vec<String> = report.messages.iter().map(|f| f.to_string()).collect();
    issues.sort();
    issues.dedup();
    let path = report.cache.clone().unwrap_or_else(|| {
        config
            .sources(split)
            .and_then(|s| s.first().cloned())
            .unwrap_or_default()
    });
    CoreError::Dataset {
        path,
        message: format!(
            "no valid images in the {} split ({report}):\n  {}",
            split.key(),
            if issues.is_empty() {
                "no error details".into()
            } else {
                issues.join("\n  ")
            }
        ),
    }
}

/// `Path.resolve()` without requiring the path to exist: canonical when it exists, otherwise
/// absolute with `.` and `..` removed lexically.
fn resolve(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// `str(v)` for the scalars Ultralytics accepts as class names.
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_extensions_follow_ultralytics() {
        assert!(has_image_extension(Path::new("a/b.JPEG")));
        assert!(has_image_extension(Path::new("a/b.webp")));
        assert!(!has_image_extension(Path::new("a/b.gif")));
        assert!(!has_image_extension(Path::new("a/b.txt")));
    }
}

//! Whole-dataset checks and the data report: what `yolo-train`, `yolo-infer val` and
//! `yolo-infer check-data` print and save as `data_report.json`.
//!
//! Per split, the label scan of [`labels`](crate::data::labels) (its findings and Ultralytics'
//! counters, from the cache when it is fresh). Across the dataset, three checks the per-image
//! scan cannot make:
//! - a label file whose image is not in the split (`LabelWithoutImage`: a renamed or lost
//!   image; the label is not used);
//! - a split none of whose images has a label file (`NoLabelFiles`: nearly always a wrong
//!   path; Ultralytics warns "No labels found" and trains on backgrounds);
//! - an image with the same bytes in two splits (`DuplicateImage`: train/val leakage).
//!
//! Legal oddities produce no finding: blank lines, trailing spaces, CRLF, a UTF-8 BOM, an
//! empty label file and an image without a label file (both backgrounds).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::data::dataset::{DataConfig, Split};
use crate::data::image::DEFAULT_MAX_PIXELS;
use crate::data::labels::{img2label_path, scan_cached_with, Action, Finding, FindingKind, Sample, ScanReport};
use crate::error::{CoreError, Result};

/// Layout version of `data_report.json`.
pub const REPORT_FORMAT: &str = "yolo-rs-data-report/1";

/// Findings printed before "and M more, see <report>".
pub const PRINT_FINDINGS: usize = 20;

/// What [`check_dataset`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Images whose header claims more pixels are dropped before decoding.
    pub max_pixels: u64,
    /// Hash every image of the checked splits to find the same image in two splits.
    pub leakage: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            leakage: true,
        }
    }
}

/// Counters of one split (Ultralytics' scan summary, plus what was skipped).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitSummary {
    /// `train`, `val` or `test`.
    pub split: String,
    /// Image files listed for the split.
    pub images: usize,
    /// Images that passed the checks (what training or validation uses).
    pub usable: usize,
    /// Label files found (Ultralytics' count, including empty and corrupt ones).
    pub label_files: usize,
    /// Backgrounds: images without a label file or with an empty one.
    pub backgrounds: usize,
    /// Images dropped by a check.
    pub skipped: usize,
    /// Duplicate label rows removed.
    pub duplicates_removed: usize,
    /// Whether the scan came from the cache.
    pub from_cache: bool,
    /// The scan cache.
    #[serde(serialize_with = "crate::files::serialize_opt_path_lossy")]
    pub cache: Option<PathBuf>,
}

impl SplitSummary {
    /// Skipped images over listed images (0 for an empty split).
    pub fn skipped_frac(&self) -> f64 {
        if self.images == 0 {
            0.0
        } else {
            self.skipped as f64 / self.images as f64
        }
    }
}

/// One finding of the report, with its split and what was done about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportFinding {
    /// The split whose scan or check found it.
    pub split: String,
    pub kind: FindingKind,
    #[serde(serialize_with = "crate::files::serialize_path_lossy")]
    pub file: PathBuf,
    /// 1-based line in a label file, for findings about a row.
    pub line: Option<usize>,
    pub message: String,
    pub action: Action,
}

impl ReportFinding {
    fn new(split: Split, f: Finding) -> Self {
        Self {
            split: split.key().into(),
            action: f.kind.action(),
            kind: f.kind,
            file: f.file,
            line: f.line,
            message: f.message,
        }
    }

    /// `file[:line]: message`.
    pub fn display(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{line}: {}", self.file.display(), self.message),
            None => format!("{}: {}", self.file.display(), self.message),
        }
    }
}

/// Everything found in a dataset: `data_report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataReport {
    /// [`REPORT_FORMAT`].
    pub format: String,
    /// The data.yaml.
    #[serde(serialize_with = "crate::files::serialize_path_lossy")]
    pub yaml: PathBuf,
    /// Class names.
    pub names: Vec<String>,
    /// The pixel limit the scan applied.
    pub max_pixels: u64,
    /// One entry per checked split.
    pub splits: Vec<SplitSummary>,
    /// Every finding, split by split, each split's scan findings first.
    pub findings: Vec<ReportFinding>,
}

impl DataReport {
    /// Findings of one kind.
    pub fn count(&self, kind: FindingKind) -> usize {
        self.findings.iter().filter(|f| f.kind == kind).count()
    }

    /// The printed report: per split, a summary line and that split's findings as
    /// `file[:line]: message`, `max_findings` in all; then "... and M more, see <report>"
    /// when `report_file` is given and findings were left out.
    pub fn summary(&self, max_findings: usize, report_file: Option<&Path>) -> String {
        let mut s = String::new();
        let mut budget = max_findings;
        for sp in &self.splits {
            let _ = write!(
                s,
                "{}: {} images, {} backgrounds, {} skipped",
                sp.split, sp.images, sp.backgrounds, sp.skipped
            );
            if sp.duplicates_removed > 0 {
                let _ = write!(s, ", {} duplicate labels removed", sp.duplicates_removed);
            }
            let mine: Vec<&ReportFinding> =
                self.findings.iter().filter(|f| f.split == sp.split).collect();
            let n = mine.len();
            let _ = write!(s, ", {n} finding{}", if n == 1 { "" } else { "s" });
            if let (Some(c), true) = (&sp.cache, sp.from_cache) {
                let _ = write!(s, " (scan read from {})", c.display());
            }
            s.push('\n');
            for f in mine.iter().take(budget) {
                let _ = writeln!(s, "  {}", f.display());
            }
            budget = budget.saturating_sub(n);
        }
        let more = self.findings.len().saturating_sub(max_findings);
        if more > 0 {
            match report_file {
                Some(p) => {
                    let _ = writeln!(s, "  ... and {more} more, see {}", p.display());
                }
                None => {
                    let _ = writeln!(s, "  ... and {more} more");
                }
            }
        }
        s
    }

    /// The error for a split with no usable image (Ultralytics' "No valid images found"),
    /// listing every finding of that split.
    pub fn no_valid_images(&self, split: Split) -> CoreError {
        let key = split.key();
        let mut issues: Vec<String> = self
            .findings
            .iter()
            .filter(|f| f.split == key)
            .map(ReportFinding::display)
            .collect();
        issues.sort();
        issues.dedup();
        let sp = self.splits.iter().find(|s| s.split == key);
        CoreError::Dataset {
            path: sp
                .and_then(|s| s.cache.clone())
                .unwrap_or_else(|| self.yaml.clone()),
            message: format!(
                "no valid images in the {key} split ({} images, {} skipped):\n  {}",
                sp.map_or(0, |s| s.images),
                sp.map_or(0, |s| s.skipped),
                if issues.is_empty() {
                    "no error details".into()
                } else {
                    issues.join("\n  ")
                }
            ),
        }
    }

    /// Writes the report as pretty JSON, atomically.
    ///
    /// # Errors
    /// [`CoreError::Io`] when the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("the report serialises");
        crate::files::write_atomic(path, &json)
    }
}

/// The usable samples of each checked split, in the order asked.
pub type CheckedSplits = Vec<(Split, Vec<Sample>)>;

/// Scans `splits` of `config` (with the label cache) and runs the dataset-wide checks of the
/// module docs. A split with no usable image is not an error here (the report says why);
/// callers that need images use [`DataReport::no_valid_images`].
///
/// # Errors
/// [`CoreError::DataConfig`] naming the yaml and the split's field when the split is not in the
/// yaml, its folder or list does not exist, or it lists no image.
pub fn check_dataset(
    config: &DataConfig,
    splits: &[Split],
    opts: CheckOptions,
) -> Result<(CheckedSplits, DataReport)> {
    let mut checked = Vec::with_capacity(splits.len());
    let mut report = DataReport {
        format: REPORT_FORMAT.into(),
        yaml: config.yaml.clone(),
        names: config.names.clone(),
        max_pixels: opts.max_pixels,
        splits: Vec::new(),
        findings: Vec::new(),
    };
    let mut listed: Vec<(Split, Vec<PathBuf>)> = Vec::new();
    for &split in splits {
        let images = config.image_files(split).map_err(|e| match e {
            // Already names the yaml and the field.
            e @ CoreError::DataConfig { .. } => e,
            CoreError::Dataset { path, message } => CoreError::DataConfig {
                path: config.yaml.clone(),
                field: split.key().into(),
                message: format!("{}: {message}", path.display()),
            },
            other => CoreError::DataConfig {
                path: config.yaml.clone(),
                field: split.key().into(),
                message: other.to_string(),
            },
        })?;
        let (samples, scan) = scan_cached_with(&images, config.nc(), opts.max_pixels);
        report.splits.push(summary(split, &scan, samples.len()));
        report
            .findings
            .extend(scan.messages.iter().cloned().map(|f| ReportFinding::new(split, f)));
        // The scan looks a label up only for an image that decodes: when every image is
        // corrupt `found` is 0 whether or not the labels are there.
        if scan.total > 0 && scan.found == 0 && !images.iter().any(|p| img2label_path(p).is_file()) {
            let looked = img2label_path(&images[0]);
            report.findings.push(ReportFinding::new(
                split,
                Finding {
                    file: config
                        .sources(split)
                        .and_then(|s| s.first().cloned())
                        .unwrap_or_default(),
                    line: None,
                    kind: FindingKind::NoLabelFiles,
                    message: format!(
                        "none of the {} images has a label file (the first would be {}): every image is a background; check that the labels folder mirrors the images folder; kept",
                        scan.total,
                        looked.display()
                    ),
                },
            ));
        }
        report.findings.extend(
            labels_without_images(&images)
                .into_iter()
                .map(|f| ReportFinding::new(split, f)),
        );
        listed.push((split, images));
        checked.push((split, samples));
    }
    if opts.leakage && listed.len() > 1 {
        report.findings.extend(duplicates_across_splits(&listed));
    }
    Ok((checked, report))
}

fn summary(split: Split, scan: &ScanReport, usable: usize) -> SplitSummary {
    SplitSummary {
        split: split.key().into(),
        images: scan.total,
        usable,
        label_files: scan.found,
        backgrounds: scan.missing + scan.empty,
        skipped: scan.corrupt,
        duplicates_removed: scan.duplicates_removed,
        from_cache: scan.from_cache,
        cache: scan.cache.clone(),
    }
}

/// Label files in the label folders of `images` that belong to no listed image. Only folders
/// that differ from the image folder are searched (where labels sit beside the images, other
/// `.txt` files are not labels), recursively as the image folders are.
fn labels_without_images(images: &[PathBuf]) -> Vec<Finding> {
    let expected: BTreeSet<PathBuf> = images.iter().map(|p| img2label_path(p)).collect();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for img in images {
        let l = img2label_path(img);
        if let (Some(ld), Some(id)) = (l.parent(), img.parent()) {
            if ld != id && ld.is_dir() {
                dirs.insert(ld.to_path_buf());
            }
        }
    }
    // Only the top folders: a nested label folder is reached by the walk of its parent.
    let tops: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| !dirs.iter().any(|o| o != *d && d.starts_with(o)))
        .cloned()
        .collect();
    let mut found = Vec::new();
    for d in tops {
        collect_txt(&d, &mut found, 0);
    }
    found.sort();
    found
        .into_iter()
        .filter(|p| !expected.contains(p))
        .map(|file| Finding {
            message: "label file with no image in the split (a renamed or missing image?); ignored"
                .into(),
            file,
            line: None,
            kind: FindingKind::LabelWithoutImage,
        })
        .collect()
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 32 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            collect_txt(&p, out, depth + 1);
        } else if p.extension().is_some_and(|x| x == "txt") {
            out.push(p);
        }
    }
}

/// Images whose bytes equal an image of an earlier split in `listed` (hash, then a byte
/// comparison to rule out collisions). One finding per later image, naming the earlier one.
fn duplicates_across_splits(listed: &[(Split, Vec<PathBuf>)]) -> Vec<ReportFinding> {
    let all: Vec<(usize, &PathBuf)> = listed
        .iter()
        .enumerate()
        .flat_map(|(i, (_, imgs))| imgs.iter().map(move |p| (i, p)))
        .collect();
    let hashes: Vec<Option<(u64, u64)>> = all
        .par_iter()
        .map(|(_, p)| {
            let bytes = std::fs::read(p).ok()?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(&bytes);
            Some((bytes.len() as u64, h.finish()))
        })
        .collect();
    // First image (in split order) of each content.
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    let mut out = Vec::new();
    for (k, h) in hashes.iter().enumerate() {
        let Some(h) = h else { continue };
        match first.get(h) {
            None => {
                first.insert(*h, k);
            }
            Some(&j) => {
                let (si, pi) = all[k];
                let (sj, pj) = all[j];
                if si == sj || std::fs::read(pi).ok() != std::fs::read(pj).ok() {
                    continue;
                }
                let (split, other) = (listed[si].0, listed[sj].0);
                out.push(ReportFinding::new(
                    split,
                    Finding {
                        file: pi.clone(),
                        line: None,
                        kind: FindingKind::DuplicateImage,
                        message: format!(
                            "same bytes as {} image {} ({}/{} leakage); kept",
                            other.key(),
                            pj.display(),
                            other.key(),
                            split.key()
                        ),
                    },
                ));
            }
        }
    }
    out
}

//! YOLO label files: parsing, checks with a report, fixes, and the scan cache.
//!
//! The checks follow Ultralytics 8.4.190 `verify_image_label` and `check_image`
//! (`ultralytics/data/utils.py`) and the counting of `YOLODataset.cache_labels`
//! (`ultralytics/data/dataset.py`):
//!
//! - An image that cannot be read or decoded, whose format is not one of `IMG_FORMATS`, or that
//!   is smaller than 10 px on a side is dropped (`corrupt`); its label file is not read.
//! - A label file with any bad row drops its image (`corrupt`, and `found` as Ultralytics counts
//!   it): rows that are not 5 columns (or polygons, below), text that is not a number,
//!   non-integer class ids, class ids `>= nc`, coordinates above 1.01 (Ultralytics' 1 %
//!   tolerance; non-finite values too), negative values (class, w or h below 0, or cx, cy below
//!   -0.01: Ultralytics' tolerance). Tolerated overshoots are kept unchanged, not clipped, as
//!   Ultralytics keeps them. Unlike Ultralytics, which stops at the first failed assertion,
//!   every bad row is reported with its line number.
//! - Rows of more than 6 columns are polygons `cls x1 y1 x2 y2 …` and become their bounding
//!   box (`segments2boxes`), with one finding per file saying so (Ultralytics converts them
//!   silently); a file mixing 5-column rows and polygons is corrupt.
//! - An image whose header claims more than `max_pixels` pixels (default
//!   [`DEFAULT_MAX_PIXELS`], 100 MP) is dropped before it is decoded (`ImageTooLarge`);
//!   Ultralytics has no such limit.
//! - Duplicate rows are removed with a finding; as with Ultralytics' `np.unique(axis=0)`, the
//!   remaining rows are then in sorted order.
//! - A missing label file (`missing`) or one with no rows (`empty`) is a background image.
//! - Zero-size boxes pass Ultralytics' scan; they are kept and reported (the augmentations drop
//!   zero-area boxes later, `Instances.remove_zero_area_boxes`).
//! - Differs: a JPEG that does not end with its end-of-image marker but has one earlier is kept
//!   with a finding; Ultralytics rewrites the file ("corrupt JPEG restored and saved"), we never
//!   modify a dataset. One with no end marker at all is truncated and dropped, as PIL fails
//!   to load it there. Every image is fully decoded (Ultralytics' `PIL.verify` reads less), so
//!   truncated PNGs, WebPs and TIFFs are caught too.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use image::ImageFormat;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::image::{decode_rgb8_limited, ImageSize, DEFAULT_MAX_PIXELS};

/// The label file of an image, Ultralytics' `img2label_paths`: the last `/images/` becomes
/// `/labels/` and the extension becomes `.txt` (`…/images/train/a.jpg` →
/// `…/labels/train/a.txt`).
pub fn img2label_path(image: &Path) -> PathBuf {
    let sep = std::path::MAIN_SEPARATOR;
    let s = image.to_string_lossy();
    let (sa, sb) = (format!("{sep}images{sep}"), format!("{sep}labels{sep}"));
    let swapped = match s.rfind(&sa) {
        Some(i) => format!("{}{sb}{}", &s[..i], &s[i + sa.len()..]),
        None => s.into_owned(),
    };
    let stem = match swapped.rfind('.') {
        Some(i) => &swapped[..i],
        None => &swapped[..],
    };
    PathBuf::from(format!("{stem}.txt"))
}

/// Ultralytics rejects images with a side below this many pixels (`check_image`).
pub const MIN_IMAGE_SIDE: u32 = 10;
/// Tolerance above 1 for normalised coordinates (`points.max() <= 1.01`).
pub const COORD_TOLERANCE: f32 = 0.01;
/// Version of the cache layout; a cache of another version is rebuilt.
pub const CACHE_VERSION: &str = "yolo-rs-labels/2";

/// One object: class id and a box in normalised centre format.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// Class id, `< nc`.
    pub class: usize,
    /// Box centre x, in units of the image width.
    pub cx: f32,
    /// Box centre y, in units of the image height.
    pub cy: f32,
    /// Box width, in units of the image width.
    pub w: f32,
    /// Box height, in units of the image height.
    pub h: f32,
}

/// An image that passed the checks, with its size and its (possibly empty) labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The image file.
    pub image: PathBuf,
    /// Size after EXIF orientation.
    pub size: ImageSize,
    /// Objects; empty for background images.
    pub labels: Vec<Label>,
}

/// What a finding is about. [`FindingKind::action`] says what the scan did about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FindingKind {
    /// The image file cannot be read.
    ImageUnreadable,
    /// The image does not decode (corrupt, truncated, or a format this build cannot read).
    ImageCorrupt,
    /// The image's format is not one of Ultralytics' `IMG_FORMATS` (e.g. a GIF named `.jpg`).
    ImageFormat,
    /// A side is below [`MIN_IMAGE_SIDE`] pixels.
    ImageTooSmall,
    /// The header claims more pixels than the scan's limit; refused before decoding.
    ImageTooLarge,
    /// A JPEG with bytes after its end-of-image marker; decoded and kept.
    JpegTrailingData,
    /// The label file cannot be read or is not UTF-8.
    LabelUnreadable,
    /// A row has the wrong number of columns (or a polygon an odd number of coordinates).
    ColumnCount,
    /// A value is not a number.
    Unparsable,
    /// A class id is not an integer.
    NonIntegerClass,
    /// A negative value beyond the tolerance.
    Negative,
    /// A coordinate above `1 + COORD_TOLERANCE`, or not finite.
    OutOfBounds,
    /// A class id `>= nc`.
    ClassOutOfRange,
    /// Box rows and polygon rows in one file.
    MixedRows,
    /// A row repeating an earlier one; removed.
    Duplicate,
    /// A box of zero width or height; kept.
    ZeroSize,
    /// Polygon (segment) rows, converted to their bounding boxes.
    Polygon,
    /// A label file whose image is not in the split (a renamed or lost image); not used.
    LabelWithoutImage,
    /// None of a split's images has a label file: nearly always a wrong path.
    NoLabelFiles,
    /// An image with the same bytes as an image of another split (train/val leakage).
    DuplicateImage,
    /// The scan cache could not be written; the scan result is still returned.
    CacheNotSaved,
}

/// What the scan did about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// The image was dropped from the split.
    Skipped,
    /// The label data was fixed (the file itself is untouched).
    Fixed,
    /// Kept as it is; a warning.
    Kept,
    /// The file is not used (a label file with no image).
    Ignored,
}

impl FindingKind {
    /// What the scan does about this kind of finding.
    pub fn action(self) -> Action {
        use FindingKind::*;
        match self {
            Duplicate | Polygon => Action::Fixed,
            LabelWithoutImage => Action::Ignored,
            JpegTrailingData | ZeroSize | CacheNotSaved | NoLabelFiles | DuplicateImage => {
                Action::Kept
            }
            _ => Action::Skipped,
        }
    }
}

/// One problem found by the scan, naming the file and, for label rows, the 1-based line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The image or label file the finding is about.
    #[serde(serialize_with = "crate::files::serialize_path_lossy")]
    pub file: PathBuf,
    /// Line in the label file (1-based, counting blank lines), for findings about a row.
    pub line: Option<usize>,
    /// What was found.
    pub kind: FindingKind,
    /// Human-readable detail, including what was done.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Counts and findings of one scan. The counts are Ultralytics' `cache_labels` counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanReport {
    /// Images scanned.
    pub total: usize,
    /// Label files found (Ultralytics `nf`: includes empty files and files that were corrupt).
    pub found: usize,
    /// Images without a label file (backgrounds).
    pub missing: usize,
    /// Label files without rows (backgrounds).
    pub empty: usize,
    /// Images dropped because the image or its label file failed a check.
    pub corrupt: usize,
    /// Duplicate label rows removed, over all files.
    pub duplicates_removed: usize,
    /// Every finding, in image order then line order.
    pub messages: Vec<Finding>,
    /// Whether this report was read from the cache instead of scanning.
    #[serde(skip)]
    pub from_cache: bool,
    /// The cache file used or written (`None` when there is no label folder to put it in).
    #[serde(skip)]
    pub cache: Option<PathBuf>,
}

impl fmt::Display for ScanReport {
    /// Ultralytics' `scan_summary`: "N images, M backgrounds, C corrupt".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} images, {} backgrounds, {} corrupt",
            self.found,
            self.missing + self.empty,
            self.corrupt
        )?;
        if self.duplicates_removed > 0 {
            write!(f, ", {} duplicate labels removed", self.duplicates_removed)?;
        }
        Ok(())
    }
}

/// The result of checking one label file's text.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelCheck {
    /// The labels after fixes; empty when `corrupt`.
    pub labels: Vec<Label>,
    /// Findings, with line numbers.
    pub findings: Vec<Finding>,
    /// Some row failed a check: Ultralytics drops the image.
    pub corrupt: bool,
    /// No rows (a background image).
    pub empty: bool,
    /// Duplicate rows removed.
    pub duplicates_removed: usize,
}

/// Checks the text of one label file (`file` names it in the findings) against `nc` classes,
/// as Ultralytics' `verify_image_label` does (see the module docs for the rules). A leading
/// byte-order mark is ignored. Never panics.
pub fn check_labels(text: &str, file: &Path, nc: usize) -> LabelCheck {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let finding = |line: usize, kind: FindingKind, message: String| Finding {
        file: file.to_path_buf(),
        line: Some(line),
        kind,
        message: match kind.action() {
            Action::Skipped => format!("{message}; image skipped"),
            Action::Fixed if kind == FindingKind::Duplicate => format!("{message}; removed"),
            Action::Fixed => format!("{message}; converted (the file is untouched)"),
            Action::Kept => format!("{message}; kept"),
            Action::Ignored => format!("{message}; ignored"),
        },
    };
    let rows: Vec<(usize, Vec<&str>)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split_whitespace().collect::<Vec<_>>()))
        .filter(|(_, t)| !t.is_empty())
        .collect();
    let mut out = LabelCheck {
        labels: Vec::new(),
        findings: Vec::new(),
        corrupt: false,
        empty: rows.is_empty(),
        duplicates_removed: 0,
    };
    if rows.is_empty() {
        return out;
    }
    let polygons = rows.iter().any(|(_, t)| t.len() > 6);
    // (line, [class, cx, cy, w, h]) as f32, like Ultralytics' float32 array.
    let mut parsed: Vec<(usize, [f32; 5])> = Vec::with_capacity(rows.len());
    for (line, tokens) in &rows {
        let n = tokens.len();
        if polygons && n == 5 {
            out.findings.push(finding(
                *line,
                FindingKind::MixedRows,
                "box row in a file of polygon rows (labels mix segment and detection rows)".into(),
            ));
            continue;
        }
        if !polygons && n != 5 {
            out.findings.push(finding(
                *line,
                FindingKind::ColumnCount,
                format!("labels require 5 columns, {n} columns detected"),
            ));
            continue;
        }
        if polygons && (n < 3 || n % 2 == 0) {
            out.findings.push(finding(
                *line,
                FindingKind::ColumnCount,
                format!(
                    "polygon row has {} coordinates, expected an even number",
                    n - 1
                ),
            ));
            continue;
        }
        let mut values = Vec::with_capacity(n);
        let mut ok = true;
        for (col, tok) in tokens.iter().enumerate() {
            match tok.parse::<f32>() {
                Ok(v) => values.push(v),
                Err(_) => {
                    out.findings.push(finding(
                        *line,
                        FindingKind::Unparsable,
                        format!("column {} `{tok}` is not a number", col + 1),
                    ));
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let row = if polygons {
            let (xs, ys): (Vec<f32>, Vec<f32>) =
                values[1..].chunks_exact(2).map(|p| (p[0], p[1])).unzip();
            let min = |v: &[f32]| v.iter().copied().fold(f32::INFINITY, f32::min);
            let max = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (x1, y1, x2, y2) = (min(&xs), min(&ys), max(&xs), max(&ys));
            [
                values[0],
                (x1 + x2) / 2.0,
                (y1 + y2) / 2.0,
                x2 - x1,
                y2 - y1,
            ]
        } else {
            [values[0], values[1], values[2], values[3], values[4]]
        };
        parsed.push((*line, row));
    }

    for (line, r) in &parsed {
        let [c, cx, cy, w, h] = *r;
        let coords = &r[1..];
        if let Some(v) = coords
            .iter()
            .find(|v| !(v.is_finite() && **v <= 1.0 + COORD_TOLERANCE) && !(**v < 0.0))
        {
            out.findings.push(finding(
                *line,
                FindingKind::OutOfBounds,
                format!("non-normalized or out of bounds coordinate {v} (> 1.01)"),
            ));
        }
        if c < 0.0 || w < 0.0 || h < 0.0 || cx < -COORD_TOLERANCE || cy < -COORD_TOLERANCE {
            out.findings.push(finding(
                *line,
                FindingKind::Negative,
                format!("negative label values in `{c} {cx} {cy} {w} {h}`"),
            ));
        } else if !c.is_finite() || c.fract() != 0.0 {
            out.findings.push(finding(
                *line,
                FindingKind::NonIntegerClass,
                format!("non-integer class label {c}"),
            ));
        } else if c as usize >= nc {
            out.findings.push(finding(
                *line,
                FindingKind::ClassOutOfRange,
                format!(
                    "label class {} exceeds dataset class count {nc}; possible class labels are 0-{}",
                    c as usize,
                    nc.saturating_sub(1)
                ),
            ));
        }
    }
    if !out.findings.is_empty() {
        out.corrupt = true;
        return out;
    }

    // Duplicates: equal float32 rows, as `np.unique(lb, axis=0)`; the kept rows come out sorted.
    let mut first_seen: Vec<(usize, [f32; 5])> = Vec::with_capacity(parsed.len());
    for (line, r) in &parsed {
        match first_seen.iter().find(|(_, k)| k == r) {
            Some((first, _)) => {
                out.duplicates_removed += 1;
                out.findings.push(finding(
                    *line,
                    FindingKind::Duplicate,
                    format!("duplicate of line {first}"),
                ));
            }
            None => first_seen.push((*line, *r)),
        }
    }
    if out.duplicates_removed > 0 {
        first_seen.sort_by(|(_, a), (_, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| x.total_cmp(y))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    for (line, r) in &first_seen {
        if r[3] == 0.0 || r[4] == 0.0 {
            out.findings.push(finding(
                *line,
                FindingKind::ZeroSize,
                format!("zero-size box (w {}, h {})", r[3], r[4]),
            ));
        }
    }
    if polygons {
        let first = rows.first().map_or(1, |(line, _)| *line);
        out.findings.push(finding(
            first,
            FindingKind::Polygon,
            format!(
                "{} polygon (segment) row{} turned into bounding boxes",
                parsed.len(),
                if parsed.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    out.findings.sort_by_key(|f| f.line);
    out.labels = first_seen
        .iter()
        .map(|(_, r)| Label {
            class: r[0] as usize,
            cx: r[1],
            cy: r[2],
            w: r[3],
            h: r[4],
        })
        .collect();
    out
}

/// Per-image outcome: Ultralytics' `(nm, nf, ne, nc)` counters, the sample and the findings.
struct ImageScan {
    sample: Option<Sample>,
    missing: bool,
    found: bool,
    empty: bool,
    corrupt: bool,
    duplicates_removed: usize,
    findings: Vec<Finding>,
}

/// Checks an image as Ultralytics' `check_image` does (see the module docs): its size after
/// EXIF orientation, and a kept-with-warning finding for a JPEG with trailing data. Images
/// above [`DEFAULT_MAX_PIXELS`] are refused (see [`check_image_limited`]).
///
/// # Errors
/// The finding that makes Ultralytics drop the image.
pub fn check_image(path: &Path) -> Result<(ImageSize, Option<Finding>), Finding> {
    check_image_limited(path, DEFAULT_MAX_PIXELS)
}

/// [`check_image`] with a limit on the pixel count, checked on the header before decoding.
///
/// # Errors
/// The finding that drops the image.
pub fn check_image_limited(
    path: &Path,
    max_pixels: u64,
) -> Result<(ImageSize, Option<Finding>), Finding> {
    let finding = |kind: FindingKind, message: String| Finding {
        file: path.to_path_buf(),
        line: None,
        kind,
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        finding(
            FindingKind::ImageUnreadable,
            format!("cannot read image: {e}; image skipped"),
        )
    })?;
    let decoded = decode_rgb8_limited(&bytes, path, max_pixels).map_err(|e| match e {
        crate::CoreError::ImageTooLarge {
            width,
            height,
            max_pixels,
            ..
        } => finding(
            FindingKind::ImageTooLarge,
            format!(
                "image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels (not decoded); image skipped"
            ),
        ),
        crate::CoreError::Image { message, .. } => finding(
            FindingKind::ImageCorrupt,
            format!("corrupt image: {message}; image skipped"),
        ),
        other => finding(
            FindingKind::ImageCorrupt,
            format!("corrupt image: {other}; image skipped"),
        ),
    })?;
    let format_ok = matches!(
        decoded.format,
        ImageFormat::Bmp
            | ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Tiff
            | ImageFormat::WebP
    );
    if !format_ok {
        return Err(finding(
            FindingKind::ImageFormat,
            format!("invalid image format {:?}; image skipped", decoded.format),
        ));
    }
    let size = ImageSize::of(&decoded.image);
    if size.width < MIN_IMAGE_SIDE || size.height < MIN_IMAGE_SIDE {
        return Err(finding(
            FindingKind::ImageTooSmall,
            format!(
                "image size {}x{} < {MIN_IMAGE_SIDE} pixels; image skipped",
                size.width, size.height
            ),
        ));
    }
    let mut warning = None;
    if decoded.format == ImageFormat::Jpeg && !bytes.ends_with(&[0xFF, 0xD9]) {
        if bytes.windows(2).any(|w| w == [0xFF, 0xD9]) {
            warning = Some(finding(
                FindingKind::JpegTrailingData,
                "JPEG has data after its end-of-image marker (Ultralytics rewrites such files; this one is left as it is); kept".into(),
            ));
        } else {
            return Err(finding(
                FindingKind::ImageCorrupt,
                "corrupt image: truncated JPEG (no end-of-image marker); image skipped".into(),
            ));
        }
    }
    Ok((size, warning))
}

fn scan_one(image: &Path, nc: usize, max_pixels: u64) -> ImageScan {
    let mut out = ImageScan {
        sample: None,
        missing: false,
        found: false,
        empty: false,
        corrupt: false,
        duplicates_removed: 0,
        findings: Vec::new(),
    };
    let size = match check_image_limited(image, max_pixels) {
        Ok((size, warning)) => {
            out.findings.extend(warning);
            size
        }
        Err(f) => {
            out.corrupt = true;
            out.findings.push(f);
            return out;
        }
    };
    let label_file = img2label_path(image);
    if !label_file.is_file() {
        out.missing = true;
        out.sample = Some(Sample {
            image: image.to_path_buf(),
            size,
            labels: Vec::new(),
        });
        return out;
    }
    out.found = true;
    let text = match std::fs::read(&label_file).map(String::from_utf8) {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => {
            out.corrupt = true;
            out.findings.push(Finding {
                file: label_file,
                line: None,
                kind: FindingKind::LabelUnreadable,
                message: "label file is not UTF-8 text; image skipped".into(),
            });
            return out;
        }
        Err(e) => {
            out.corrupt = true;
            out.findings.push(Finding {
                file: label_file,
                line: None,
                kind: FindingKind::LabelUnreadable,
                message: format!("cannot read label file: {e}; image skipped"),
            });
            return out;
        }
    };
    let check = check_labels(&text, &label_file, nc);
    out.findings.extend(check.findings);
    out.empty = check.empty;
    out.duplicates_removed = check.duplicates_removed;
    if check.corrupt {
        out.corrupt = true;
        return out;
    }
    out.sample = Some(Sample {
        image: image.to_path_buf(),
        size,
        labels: check.labels,
    });
    out
}

/// Scans `images` (their labels found by `img2label_path`) in parallel with rayon, without the
/// cache. Returns the valid samples in image order and the report. Never panics on bad files.
pub fn scan(images: &[PathBuf], nc: usize) -> (Vec<Sample>, ScanReport) {
    scan_with(images, nc, DEFAULT_MAX_PIXELS)
}

/// [`scan`] with a limit on the pixel count of an image (see [`check_image_limited`]).
pub fn scan_with(images: &[PathBuf], nc: usize, max_pixels: u64) -> (Vec<Sample>, ScanReport) {
    let results: Vec<ImageScan> =
        images.par_iter().map(|p| scan_one(p, nc, max_pixels)).collect();
    let mut report = ScanReport {
        total: images.len(),
        ..ScanReport::default()
    };
    let mut samples = Vec::with_capacity(images.len());
    for r in results {
        report.found += r.found as usize;
        report.missing += r.missing as usize;
        report.empty += r.empty as usize;
        report.corrupt += r.corrupt as usize;
        report.duplicates_removed += r.duplicates_removed;
        report.messages.extend(r.findings);
        samples.extend(r.sample);
    }
    (samples, report)
}

/// Where [`scan_cached`] keeps its cache: beside the first label file's folder, as Ultralytics'
/// `Path(label_files[0]).parent.with_suffix(".cache")`, but JSON (`labels/train.cache.json`).
pub fn cache_path(images: &[PathBuf]) -> Option<PathBuf> {
    let first = img2label_path(images.first()?);
    let dir = first.parent()?;
    if dir.file_name().is_none() {
        return None;
    }
    Some(dir.with_extension("cache.json"))
}

/// FNV-1a (64 bit) over every label and image path with its size and mtime (nanoseconds), and
/// the scan settings: Ultralytics' `get_hash(label_files + im_files + [scan_args])`. A file
/// that is changed, added (a label file appearing) or removed changes the key.
pub fn cache_key(images: &[PathBuf], nc: usize) -> String {
    cache_key_with(images, nc, DEFAULT_MAX_PIXELS)
}

/// [`cache_key`] for a scan with a pixel limit other than the default.
pub fn cache_key_with(images: &[PathBuf], nc: usize, max_pixels: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let labels: Vec<PathBuf> = images.iter().map(|p| img2label_path(p)).collect();
    for p in labels.iter().chain(images) {
        feed(p.as_os_str().as_encoded_bytes());
        feed(b"\0");
        match std::fs::metadata(p) {
            Ok(m) => {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                feed(format!("{}:{mtime}", m.len()).as_bytes());
                feed(b"\0");
            }
            Err(_) => feed(b"\0"),
        }
    }
    feed(format!("{CACHE_VERSION} nc={nc} max_pixels={max_pixels}").as_bytes());
    format!("{h:016x}")
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: String,
    key: String,
    report: ScanReport,
    samples: Vec<Sample>,
}

/// [`scan`] with a cache at [`cache_path`], keyed by [`cache_key`]: a cache whose key and
/// version match is read instead of scanning (`report.from_cache`); a missing, stale,
/// unreadable or corrupt cache is ignored and rewritten atomically (temp file + rename).
/// As Ultralytics, nothing is written when no sample is valid; a cache that cannot be written
/// gives a [`FindingKind::CacheNotSaved`] finding, not an error.
pub fn scan_cached(images: &[PathBuf], nc: usize) -> (Vec<Sample>, ScanReport) {
    scan_cached_with(images, nc, DEFAULT_MAX_PIXELS)
}

/// [`scan_cached`] with a limit on the pixel count of an image (part of the cache key).
pub fn scan_cached_with(
    images: &[PathBuf],
    nc: usize,
    max_pixels: u64,
) -> (Vec<Sample>, ScanReport) {
    let Some(path) = cache_path(images) else {
        return scan_with(images, nc, max_pixels);
    };
    let key = cache_key_with(images, nc, max_pixels);
    if let Some(cache) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<CacheFile>(&b).ok())
        .filter(|c| c.version == CACHE_VERSION && c.key == key)
    {
        let mut report = cache.report;
        report.from_cache = true;
        report.cache = Some(path);
        return (cache.samples, report);
    }
    let (samples, mut report) = scan_with(images, nc, max_pixels);
    if !samples.is_empty() {
        let file = CacheFile {
            version: CACHE_VERSION.into(),
            key,
            report: report.clone(),
            samples,
        };
        let written = serde_json::to_vec(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| crate::files::write_atomic(&path, &b).map_err(|e| e.to_string()));
        if let Err(e) = written {
            report.messages.push(Finding {
                file: path.clone(),
                line: None,
                kind: FindingKind::CacheNotSaved,
                message: format!("cache not saved: {e}"),
            });
        }
        report.cache = Some(path);
        return (file.samples, report);
    }
    report.cache = Some(path);
    (samples, report)
}

/// Counts of findings by kind, for summaries.
pub fn count_by_kind(findings: &[Finding]) -> HashMap<FindingKind, usize> {
    let mut m = HashMap::new();
    for f in findings {
        *m.entry(f.kind).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_path_replaces_last_images_dir_and_extension() {
        let p = Path::new("/d/images/x/images/train/a.b.JPG");
        assert_eq!(
            img2label_path(p),
            PathBuf::from("/d/images/x/labels/train/a.b.txt")
        );
        assert_eq!(
            img2label_path(Path::new("/d/imgs/a.png")),
            PathBuf::from("/d/imgs/a.txt")
        );
    }

    fn check(text: &str, nc: usize) -> LabelCheck {
        check_labels(text, Path::new("l.txt"), nc)
    }

    #[test]
    fn tolerances_follow_ultralytics() {
        // cx 1.005 and cy -0.005 are inside the 1 % tolerance and kept unchanged.
        let c = check("0 1.005 -0.005 0.2 0.2\n", 1);
        assert!(!c.corrupt, "{:?}", c.findings);
        assert_eq!(c.labels[0].cx, 1.005);
        assert!(check("0 1.02 0.5 0.2 0.2\n", 1).corrupt);
        assert!(check("0 -0.02 0.5 0.2 0.2\n", 1).corrupt);
        assert!(check("0 0.5 0.5 -0.001 0.2\n", 1).corrupt);
        assert!(check("0 nan 0.5 0.2 0.2\n", 1).corrupt);
        assert!(check("1.5 0.5 0.5 0.2 0.2\n", 2).corrupt);
        assert!(!check("1.0 0.5 0.5 0.2 0.2\n", 2).corrupt);
    }

    #[test]
    fn duplicates_removed_and_sorted_like_np_unique() {
        let c = check(
            "1 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n1 0.5 0.5 0.2 0.20\n",
            2,
        );
        assert_eq!(c.duplicates_removed, 1);
        assert_eq!(c.findings[0].line, Some(3));
        assert_eq!(
            c.labels.iter().map(|l| l.class).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn polygons_become_boxes() {
        let c = check("2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n", 3);
        assert!(!c.corrupt);
        let l = c.labels[0];
        assert_eq!(l.class, 2);
        assert!((l.cx - 0.3).abs() < 1e-6 && (l.cy - 0.4).abs() < 1e-6);
        assert!((l.w - 0.4).abs() < 1e-6 && (l.h - 0.4).abs() < 1e-6);
        assert_eq!(c.findings.len(), 1, "the conversion is reported once");
        assert_eq!(c.findings[0].kind, FindingKind::Polygon);
        assert_eq!(c.findings[0].line, Some(1));
        assert!(check("0 0.5 0.5 0.2 0.2\n", 3).findings.is_empty());
        assert!(check("2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n0 0.5 0.5 0.1 0.1\n", 3).corrupt);
    }

    #[test]
    fn bom_and_blank_lines() {
        let c = check("\u{feff}\n0 0.5 0.5 0.2 0.2\n\n0 0.5 0.5 0.2\n", 1);
        assert!(c.corrupt);
        assert_eq!(c.findings.len(), 1);
        assert_eq!(c.findings[0].line, Some(4));
        assert!(check(" \n\n", 1).empty);
    }
}

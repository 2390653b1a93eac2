//! `yolo-infer check-data`: the pipeline's data-validation step. Scans every split, prints
//! and saves the report, and passes or fails the data on thresholds.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use yolo_core::data::check::{check_dataset, CheckOptions, DataReport};
use yolo_core::data::dataset::{DataConfig, Split};
use yolo_core::data::labels::FindingKind;

use crate::gate::EXIT_GATE_FAILED;

/// What fails the data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DataGate {
    /// Largest allowed fraction of a split's images dropped by a check (0 = none may be).
    pub max_skipped_frac: f64,
    /// Images with the same bytes in two splits pass (otherwise they fail the data).
    pub allow_leakage: bool,
    /// A split with no label files at all passes (otherwise it fails: nearly always a wrong
    /// path).
    pub allow_no_labels: bool,
}

impl Default for DataGate {
    fn default() -> Self {
        Self {
            max_skipped_frac: 0.0,
            allow_leakage: false,
            allow_no_labels: false,
        }
    }
}

/// The verdict on a [`DataReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataOutcome {
    /// Images listed over all checked splits.
    pub images: usize,
    /// Images dropped over all checked splits.
    pub skipped: usize,
    pub passed: bool,
    /// One line per failed threshold.
    pub failures: Vec<String>,
}

impl DataGate {
    /// Applies the thresholds to a report.
    pub fn check(&self, report: &DataReport) -> DataOutcome {
        let mut failures = Vec::new();
        for s in &report.splits {
            if !(s.skipped_frac() <= self.max_skipped_frac) {
                failures.push(format!(
                    "{}: {} of {} images skipped ({:.2}%), more than the allowed {:.2}% (--max-skipped-frac {})",
                    s.split,
                    s.skipped,
                    s.images,
                    100.0 * s.skipped_frac(),
                    100.0 * self.max_skipped_frac,
                    self.max_skipped_frac
                ));
            }
            if s.usable == 0 {
                failures.push(format!("{}: no usable image", s.split));
            }
        }
        let leaked = report.count(FindingKind::DuplicateImage);
        if leaked > 0 && !self.allow_leakage {
            failures.push(format!(
                "{leaked} image(s) appear in two splits (leakage; --allow-leakage to accept)"
            ));
        }
        if !self.allow_no_labels {
            for f in report
                .findings
                .iter()
                .filter(|f| f.kind == FindingKind::NoLabelFiles)
            {
                failures.push(format!(
                    "{}: no label files at all (--allow-no-labels to accept)",
                    f.split
                ));
            }
        }
        DataOutcome {
            images: report.splits.iter().map(|s| s.images).sum(),
            skipped: report.splits.iter().map(|s| s.skipped).sum(),
            passed: failures.is_empty(),
            failures,
        }
    }
}

impl DataOutcome {
    /// 0 when the data passed, [`EXIT_GATE_FAILED`] otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.passed {
            0
        } else {
            EXIT_GATE_FAILED
        }
    }

    /// Tekton result files `images`, `skipped` and `passed`, each written atomically.
    pub fn write_results(&self, dir: &Path) -> yolo_core::Result<()> {
        for (name, value) in [
            ("images", self.images.to_string()),
            ("skipped", self.skipped.to_string()),
            ("passed", self.passed.to_string()),
        ] {
            yolo_core::files::write_atomic(&dir.join(name), value.as_bytes())?;
        }
        Ok(())
    }
}

/// Arguments of `check-data`.
#[derive(Debug, Clone)]
pub struct CheckDataArgs {
    /// data.yaml (or `shapes`).
    pub data: String,
    /// Splits to check; empty = every split the yaml gives.
    pub splits: Vec<Split>,
    pub gate: DataGate,
    pub max_pixels: u64,
    /// Where the JSON report goes.
    pub report: PathBuf,
    /// Findings printed before "and M more".
    pub max_print: usize,
    pub results_dir: Option<PathBuf>,
}

/// The JSON written by `check-data`: the data report and the verdict.
#[derive(Debug, Serialize)]
pub struct CheckDataJson<'a> {
    #[serde(flatten)]
    pub report: &'a DataReport,
    pub gate: DataGate,
    pub outcome: &'a DataOutcome,
}

/// Runs the check: prints the report to stdout and the verdict, writes the JSON and the
/// result files. Returns the exit code (0 or [`EXIT_GATE_FAILED`]).
///
/// # Errors
/// An unreadable or malformed data.yaml, a split whose folder is missing or has no image, a
/// report or result file that cannot be written.
pub fn run(a: &CheckDataArgs) -> anyhow::Result<i32> {
    let yaml = crate::val::resolve_data(&a.data)?;
    let data = DataConfig::from_yaml(&yaml)?;
    let splits: Vec<Split> = if a.splits.is_empty() {
        [Split::Train, Split::Val, Split::Test]
            .into_iter()
            .filter(|s| data.sources(*s).is_some())
            .collect()
    } else {
        a.splits.clone()
    };
    let (_, report) = check_dataset(
        &data,
        &splits,
        CheckOptions {
            max_pixels: a.max_pixels,
            leakage: true,
        },
    )?;
    let outcome = a.gate.check(&report);
    print!("{}", report.summary(a.max_print, Some(&a.report)));
    let json = CheckDataJson {
        report: &report,
        gate: a.gate,
        outcome: &outcome,
    };
    let bytes = serde_json::to_vec_pretty(&json).expect("the report serialises");
    yolo_core::files::write_atomic(&a.report, &bytes)
        .with_context(|| format!("writing {}", a.report.display()))?;
    if let Some(dir) = &a.results_dir {
        outcome
            .write_results(dir)
            .with_context(|| format!("writing Tekton results to {}", dir.display()))?;
    }
    if outcome.passed {
        println!(
            "data check passed: {} images, {} skipped (report: {})",
            outcome.images,
            outcome.skipped,
            a.report.display()
        );
    } else {
        for f in &outcome.failures {
            eprintln!("data check FAILED: {f}");
        }
    }
    Ok(outcome.exit_code())
}

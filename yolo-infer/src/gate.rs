//! The quality gate of `yolo-infer val`: thresholds on mAP, exit codes and Tekton result files.

use std::path::Path;

use serde::Serialize;

/// Exit code when the gate's thresholds are not met (distinct from errors, which exit 1, and
/// from usage errors, which clap reports with 2).
pub const EXIT_GATE_FAILED: i32 = 3;

/// Thresholds; `None` means not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Gate {
    pub min_map50: Option<f64>,
    pub min_map50_95: Option<f64>,
}

/// The outcome of checking measured metrics against a [`Gate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateOutcome {
    pub map50: f64,
    pub map50_95: f64,
    pub passed: bool,
    /// One line per threshold that was not met.
    pub failures: Vec<String>,
}

impl Gate {
    /// Compares measured mAP50 and mAP50-95 with the thresholds (a value equal to its threshold
    /// passes).
    pub fn check(&self, map50: f64, map50_95: f64) -> GateOutcome {
        let mut failures = Vec::new();
        if let Some(t) = self.min_map50 {
            if !(map50 >= t) {
                failures.push(format!("mAP50 {map50:.4} < required {t:.4}"));
            }
        }
        if let Some(t) = self.min_map50_95 {
            if !(map50_95 >= t) {
                failures.push(format!("mAP50-95 {map50_95:.4} < required {t:.4}"));
            }
        }
        GateOutcome {
            map50,
            map50_95,
            passed: failures.is_empty(),
            failures,
        }
    }
}

impl GateOutcome {
    /// Process exit code: 0 when passed, [`EXIT_GATE_FAILED`] otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.passed {
            0
        } else {
            EXIT_GATE_FAILED
        }
    }

    /// Writes Tekton result files `map50`, `map50-95` and `passed` into `dir`: short strings
    /// (Tekton limits results to 4 KB), each written atomically.
    pub fn write_results(&self, dir: &Path) -> yolo_core::Result<()> {
        let files = [
            ("map50", format!("{:.4}", self.map50)),
            ("map50-95", format!("{:.4}", self.map50_95)),
            ("passed", self.passed.to_string()),
        ];
        for (name, value) in files {
            yolo_core::files::write_atomic(&dir.join(name), value.as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let g = Gate {
            min_map50: Some(0.5),
            min_map50_95: Some(0.3),
        };
        assert!(g.check(0.5, 0.3).passed);
        let o = g.check(0.49, 0.31);
        assert!(!o.passed);
        assert_eq!(o.exit_code(), EXIT_GATE_FAILED);
        assert_eq!(o.failures.len(), 1);
        assert!(!g.check(f64::NAN, 0.4).passed, "NaN never passes");
        assert!(Gate::default().check(0.0, 0.0).passed);
    }

    #[test]
    fn result_files_are_short_strings() {
        let dir = tempfile::tempdir().unwrap();
        let o = Gate {
            min_map50: Some(0.9),
            min_map50_95: None,
        }
        .check(0.81234, 0.5);
        o.write_results(dir.path()).unwrap();
        let read = |n| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("map50"), "0.8123");
        assert_eq!(read("map50-95"), "0.5000");
        assert_eq!(read("passed"), "false");
    }
}

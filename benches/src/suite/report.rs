//! The report: its JSON form (what `--compare` reads back), the Markdown a person reads, the
//! latency plot, and the change against an earlier report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::machine::Machine;
use super::stats::Stats;

/// The `schema` field of every report this version writes.
pub const SCHEMA: &str = "yolo-bench/1";

/// Changes smaller than this fraction are called "same" in a comparison (the 2-core VM this
/// was written on drifts by more than that between runs).
pub const SAME_WITHIN: f64 = 0.05;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub created_unix_s: u64,
    /// The command line that made it.
    pub command: String,
    /// `smoke`, `quick` or `full`.
    pub mode: String,
    /// What the mode covers, in words.
    pub covers: String,
    /// Seconds the whole run took, and each section (`references` is the worker's start).
    pub wall_s: f64,
    #[serde(default)]
    pub sections_s: BTreeMap<String, f64>,
    pub git_revision: String,
    /// The 1-minute load average when the run started and when it ended (other work on the
    /// machine slows every figure; ratios measured in the same run are steadier).
    #[serde(default)]
    pub load_average: Option<[f64; 2]>,
    /// CPUs other processes kept busy in a short window before the run and after it
    /// (measured while yolo-bench slept; the load average counts yolo-bench itself).
    #[serde(default)]
    pub other_busy_cores: Option<[f64; 2]>,
    pub machine: Machine,
    pub backend: Backend,
    /// Our crates and the libraries that do the work (from Cargo.lock at build time).
    pub versions: BTreeMap<String, String>,
    /// The reference runtimes found by `--python` (empty without).
    pub reference_versions: BTreeMap<String, String>,
    /// Device memory as the backend reports it, per section, or the string "n/a".
    pub gpu_memory: serde_json::Value,
    pub figures: Vec<Figure>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    /// The device's backend: flex (CPU), wgpu or cuda.
    pub name: String,
    /// The device as Burn prints it.
    pub device: String,
    /// The backends compiled into this binary.
    pub compiled: Vec<String>,
    /// The inference section's precision: `f32`, or `f16` with `--half`.
    #[serde(default = "f32_name")]
    pub precision: String,
}

fn f32_name() -> String {
    "f32".into()
}

/// One measured quantity, ours and the references' measured in the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable key, e.g. `inference.latency/n/640/b1` (what `--compare` matches on).
    pub id: String,
    /// Section: inference, postprocess, preprocess, training, serving, memory.
    pub group: String,
    pub name: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub ours: Stats,
    #[serde(default)]
    pub references: Vec<Reference>,
    /// Further single values (percentiles, counts).
    #[serde(default)]
    pub extra: BTreeMap<String, f64>,
    #[serde(default)]
    pub note: Option<String>,
}

/// A reference runtime's figure beside ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub stats: Stats,
    /// ours.median / theirs.median (for times < 1 means we are faster; for rates > 1).
    pub ratio: f64,
    /// ours.min / theirs.min.
    pub ratio_min: f64,
}

impl Figure {
    pub fn new(
        id: impl Into<String>,
        group: &str,
        name: impl Into<String>,
        unit: &str,
        ours: Stats,
    ) -> Self {
        Self {
            id: id.into(),
            group: group.into(),
            name: name.into(),
            unit: unit.into(),
            higher_is_better: false,
            ours,
            references: Vec::new(),
            extra: BTreeMap::new(),
            note: None,
        }
    }

    pub fn higher_is_better(mut self) -> Self {
        self.higher_is_better = true;
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    pub fn add_reference(&mut self, name: impl Into<String>, stats: Stats) {
        let (ratio, ratio_min) = (self.ours.median / stats.median, self.ours.min / stats.min);
        self.references.push(Reference {
            name: name.into(),
            stats,
            ratio,
            ratio_min,
        });
    }

    /// Whether we are behind `r` (slower, or a lower rate), by the medians.
    pub fn behind(&self, r: &Reference) -> bool {
        if self.higher_is_better {
            r.ratio < 1.0
        } else {
            r.ratio > 1.0
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    /// `met`, `not met` or `not measured`.
    pub status: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub old_path: String,
    pub old_git_revision: String,
    pub old_created_unix_s: u64,
    pub old_machine: String,
    #[serde(default)]
    pub old_mode: String,
    pub rows: Vec<Change>,
    /// Figures only the old report has, and only the new one.
    pub only_old: Vec<String>,
    pub only_new: Vec<String>,
}

/// One figure in both reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub id: String,
    pub name: String,
    pub unit: String,
    pub old: f64,
    pub new: f64,
    /// new / old, by the medians.
    pub ratio: f64,
    /// `better`, `worse` or `same` (within [`SAME_WITHIN`]).
    pub verdict: String,
}

impl Report {
    /// Reads a report written by this or an earlier `yolo-bench`; errors name the file and
    /// the field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        match v.get("schema").and_then(|s| s.as_str()) {
            Some(SCHEMA) => {}
            Some(other) => anyhow::bail!(
                "{}: field `schema` is {other:?}, expected {SCHEMA:?}",
                path.display()
            ),
            None => anyhow::bail!(
                "{}: field `schema` is missing (not a yolo-bench report?)",
                path.display()
            ),
        }
        serde_path_to_error::deserialize(v).map_err(|e| {
            let field = e.path().to_string();
            anyhow::anyhow!("{}: field `{field}`: {}", path.display(), e.into_inner())
        })
    }

    pub fn figure(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }

    /// The change from `old` to this report, figure by figure (matched by id).
    pub fn compare_with(&self, old: &Report, old_path: &Path) -> Comparison {
        let mut rows = Vec::new();
        for f in &self.figures {
            let Some(o) = old.figure(&f.id) else { continue };
            let ratio = f.ours.median / o.ours.median;
            let verdict = if !ratio.is_finite() || (ratio - 1.0).abs() <= SAME_WITHIN {
                "same"
            } else if (ratio > 1.0) == f.higher_is_better {
                "better"
            } else {
                "worse"
            };
            rows.push(Change {
                id: f.id.clone(),
                name: f.name.clone(),
                unit: f.unit.clone(),
                old: o.ours.median,
                new: f.ours.median,
                ratio,
                verdict: verdict.into(),
            });
        }
        Comparison {
            old_path: old_path.display().to_string(),
            old_git_revision: old.git_revision.clone(),
            old_created_unix_s: old.created_unix_s,
            old_machine: old.machine.summary(),
            old_mode: old.mode.clone(),
            rows,
            only_old: old
                .figures
                .iter()
                .filter(|f| self.figure(&f.id).is_none())
                .map(|f| f.id.clone())
                .collect(),
            only_new: self
                .figures
                .iter()
                .filter(|f| old.figure(&f.id).is_none())
                .map(|f| f.id.clone())
                .collect(),
        }
    }

    /// The latency chart: every `inference.latency/…` figure, ours and each reference.
    pub fn latency_chart(&self) -> Option<yolo_core::plots::BarChart> {
        use yolo_core::plots::{Bar, BarChart, BarSeries};
        let figs: Vec<&Figure> = self
            .figures
            .iter()
            .filter(|f| f.id.starts_with("inference.latency/"))
            .collect();
        if figs.is_empty() {
            return None;
        }
        let bar = |s: &Stats| {
            Some(Bar {
                value: s.median,
                low: s.min,
                high: s.max,
            })
        };
        let mut names: Vec<String> = Vec::new();
        for f in &figs {
            for r in &f.references {
                if !names.contains(&r.name) {
                    names.push(r.name.clone());
                }
            }
        }
        let mut series = vec![BarSeries {
            name: format!("yolo-rs ({})", self.backend.name),
            bars: figs.iter().map(|f| bar(&f.ours)).collect(),
        }];
        for n in names {
            series.push(BarSeries {
                bars: figs
                    .iter()
                    .map(|f| {
                        f.references
                            .iter()
                            .find(|r| r.name == n)
                            .and_then(|r| bar(&r.stats))
                    })
                    .collect(),
                name: n,
            });
        }
        Some(BarChart {
            title: "YOLOv8 forward latency (median, min-max)".into(),
            y_label: "ms per forward (log scale)".into(),
            groups: figs.iter().map(|f| short_label(&f.id)).collect(),
            series,
            log_y: true,
        })
    }

    /// The Markdown report; `plot` is the PNG's file name beside it, if one was written.
    pub fn markdown(&self, plot: Option<&str>) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# yolo-bench report\n");
        let _ = writeln!(w, "`{}`\n", self.command);
        let _ = writeln!(
            w,
            "- mode: **{}** ({}); whole run {:.0} s{}{}\n- machine: {}\n- memory: {} MiB; GPUs: {}\n- backend: {} (`{}`; compiled: {}); inference in {}\n- git revision: {}\n- versions: {}",
            self.mode,
            self.covers,
            self.wall_s,
            if self.sections_s.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    self.sections_s.iter().map(|(k, v)| format!("{k} {v:.0} s")).collect::<Vec<_>>().join(", ")
                )
            },
            self.other_busy_cores.map_or(String::new(), |[a, b]| format!(
                "; other processes kept {a:.2} CPUs busy before the run, {b:.2} after it"
            )),
            self.machine.summary(),
            self.machine.memory_mib,
            if self.machine.gpus.is_empty() {
                "none found (nvidia-smi)".to_string()
            } else {
                self.machine
                    .gpus
                    .iter()
                    .map(|g| format!("{} (driver {}, {} MiB)", g.name, g.driver, g.memory_mib.map_or("?".into(), |m| m.to_string())))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.backend.name,
            self.backend.device,
            self.backend.compiled.join(", "),
            self.backend.precision,
            self.git_revision,
            join_map(&self.versions),
        );
        let _ = writeln!(
            w,
            "- references: {}\n",
            if self.reference_versions.is_empty() {
                "none (no `--python`)".to_string()
            } else {
                join_map(&self.reference_versions)
            }
        );
        let _ = writeln!(
            w,
            "Each figure: median (min-max) over the runs; a reference's column is its figure measured in this run \
             and the ratio ours / theirs by the medians (for times < 1 means yolo-rs is faster; for rates, > 1).\n"
        );
        if !self.targets.is_empty() {
            let _ = writeln!(
                w,
                "## Targets\n\n| target | status | measured |\n|---|---|---|"
            );
            for t in &self.targets {
                let _ = writeln!(w, "| {} | **{}** | {} |", t.name, t.status, t.detail);
            }
            let _ = writeln!(w);
        }
        let behind = self.behind_lines();
        if !behind.is_empty() {
            let _ = writeln!(w, "## Where yolo-rs is behind\n");
            for b in &behind {
                let _ = writeln!(w, "- {b}");
            }
            let _ = writeln!(w);
        }
        // The sections in the order they run, memory last; any other group after them.
        let mut groups: Vec<&str> = [
            "inference",
            "postprocess",
            "preprocess",
            "training",
            "serving",
            "memory",
        ]
        .into_iter()
        .filter(|g| self.figures.iter().any(|f| f.group == *g))
        .collect();
        for f in &self.figures {
            if !groups.contains(&f.group.as_str()) {
                groups.push(&f.group);
            }
        }
        for g in groups {
            let figs: Vec<&Figure> = self.figures.iter().filter(|f| f.group == g).collect();
            let _ = writeln!(w, "## {}\n", title_case(g));
            let mut refs: Vec<&str> = Vec::new();
            for f in &figs {
                for r in &f.references {
                    if !refs.contains(&r.name.as_str()) {
                        refs.push(&r.name);
                    }
                }
            }
            let mut head = "| figure | unit | yolo-rs |".to_string();
            let mut rule = "|---|---|---|".to_string();
            for r in &refs {
                head += &format!(" {r} | ours / theirs |");
                rule += "---|---|";
            }
            let _ = writeln!(w, "{head}\n{rule}");
            for f in &figs {
                let mut row = format!("| {} | {} | {} |", f.name, f.unit, stats_cell(&f.ours));
                for r in &refs {
                    match f.references.iter().find(|x| x.name == *r) {
                        Some(x) => row += &format!(" {} | {:.2}x |", stats_cell(&x.stats), x.ratio),
                        None => row += " - | - |",
                    }
                }
                let _ = writeln!(w, "{row}");
            }
            let notes: Vec<String> = figs
                .iter()
                .filter_map(|f| {
                    let mut n = f.note.clone().unwrap_or_default();
                    if !f.extra.is_empty() {
                        if !n.is_empty() {
                            n += "; ";
                        }
                        n += &f
                            .extra
                            .iter()
                            .map(|(k, v)| format!("{k} {}", fmt_num(*v)))
                            .collect::<Vec<_>>()
                            .join(", ");
                    }
                    (!n.is_empty()).then(|| format!("- {}: {n}", f.name))
                })
                .collect();
            if !notes.is_empty() {
                let _ = writeln!(w, "\n{}", notes.join("\n"));
            }
            if g == "inference" {
                if let Some(p) = plot {
                    let _ = writeln!(w, "\n![latency by size and batch]({p})");
                }
            }
            let _ = writeln!(w);
        }
        let _ = writeln!(
            w,
            "## GPU memory\n\n{}\n",
            gpu_memory_text(&self.gpu_memory)
        );
        if let Some(c) = &self.comparison {
            let _ = writeln!(
                w,
                "## Change against `{}`\n\nEarlier report: git {}, {}; \"same\" means within {:.0}% (this machine's \
                 run-to-run drift can be larger: compare ratios against references where you can).\n",
                c.old_path,
                c.old_git_revision,
                c.old_machine,
                SAME_WITHIN * 100.0
            );
            if c.old_mode != self.mode {
                let _ = writeln!(
                    w,
                    "The earlier report is a {} run and this one {}: figures whose work depends on the mode \
                     (peak memory, whole-epoch images/s) differ for that reason too.\n",
                    c.old_mode, self.mode
                );
            }
            let _ = writeln!(
                w,
                "| figure | unit | old | new | new / old | |\n|---|---|---|---|---|---|"
            );
            for r in &c.rows {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {:.2}x | {} |",
                    r.name,
                    r.unit,
                    fmt_num(r.old),
                    fmt_num(r.new),
                    r.ratio,
                    r.verdict
                );
            }
            if !c.only_old.is_empty() {
                let _ = writeln!(w, "\nOnly in the earlier report: {}", c.only_old.join(", "));
            }
            if !c.only_new.is_empty() {
                let _ = writeln!(w, "\nNew in this report: {}", c.only_new.join(", "));
            }
            let _ = writeln!(w);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(w, "## Notes\n");
            for n in &self.notes {
                let _ = writeln!(w, "- {n}");
            }
        }
        md
    }

    /// One sentence per (figure, reference) where we are behind by the medians.
    ///
    /// Throughput figures are left out: they are their latency figure's runs.
    pub fn behind_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in self
            .figures
            .iter()
            .filter(|f| !f.id.starts_with("inference.throughput/"))
        {
            for r in f.references.iter().filter(|r| f.behind(r)) {
                let how = if f.higher_is_better {
                    format!("{:.1}% of {}'s rate", r.ratio * 100.0, r.name)
                } else {
                    format!(
                        "{:.3}x {}'s time ({:.1}% slower)",
                        r.ratio,
                        r.name,
                        (r.ratio - 1.0) * 100.0
                    )
                };
                out.push(format!(
                    "{}: yolo-rs {} {} against {} {}: {how}.",
                    f.name,
                    fmt_num(f.ours.median),
                    f.unit,
                    fmt_num(r.stats.median),
                    f.unit
                ));
            }
        }
        out
    }

    /// Writes report.json, report.md and (with inference figures) latency.png into `dir`,
    /// each atomically.
    pub fn write_all(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let plot = match self.latency_chart() {
            Some(chart) => {
                let p = dir.join("latency.png");
                yolo_core::plots::plot_grouped_bars(&p, &chart)
                    .with_context(|| format!("{}", p.display()))?;
                Some("latency.png")
            }
            None => None,
        };
        write_atomic(
            &dir.join("report.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        write_atomic(&dir.join("report.md"), self.markdown(plot).as_bytes())
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot rename to {}", tmp.display(), path.display()))
}

/// `inference.latency/n/640/b1` → `n 640 b1`.
fn short_label(id: &str) -> String {
    id.split('/').skip(1).collect::<Vec<_>>().join(" ")
}

fn title_case(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn join_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// About three significant digits; whole numbers (counts) as they are.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn stats_cell(s: &Stats) -> String {
    if s.n <= 1 {
        fmt_num(s.median)
    } else {
        format!(
            "{} ({}-{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        )
    }
}

fn gpu_memory_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("- {k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n"),
        serde_json::Value::String(s) => s.clone(),
        _ => "n/a".into(),
    }
}

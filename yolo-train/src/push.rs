//! Per-epoch training metrics for a Prometheus Pushgateway (`yolo-train --pushgateway URL`).
//!
//! After every epoch the whole group `job="yolo-train", run="<run name>"` is replaced (HTTP
//! PUT of the text exposition format to `<URL>/metrics/job/yolo-train/run/<run>`), so the
//! gateway always holds the latest epoch of each run. Metrics (gauges):
//! `yolo_train_epoch`, `yolo_train_epochs`, `yolo_train_loss{kind="box|cls|dfl"}`,
//! `yolo_train_val_loss{kind}`, `yolo_train_map50`, `yolo_train_map50_95`,
//! `yolo_train_precision`, `yolo_train_recall`, `yolo_train_fitness`, `yolo_train_lr{group="0|1|2"}`,
//! `yolo_train_images_per_second`, `yolo_train_epoch_seconds`, `yolo_train_data_wait_seconds`,
//! `yolo_train_optimizer_steps`, and with `amp` `yolo_train_amp_loss_scale` and
//! `yolo_train_amp_skipped_steps`.
//! A push that fails is a warning for the caller, never a reason to stop training.

use std::fmt::Write as _;
use std::time::Duration;

use crate::trainer::EpochStats;

/// Where to push.
#[derive(Debug, Clone)]
pub struct Pushgateway {
    url: String,
}

impl Pushgateway {
    /// `base` is the gateway's address (`http://host:9091`); `run` names the run (its label
    /// value: characters outside `[A-Za-z0-9_.-]` become `_`).
    ///
    /// # Errors
    /// A URL that is not `http://` (the client is built without TLS; a Pushgateway is
    /// normally reached inside the cluster).
    pub fn new(base: &str, job: &str, run: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(format!(
                "--pushgateway `{base}`: expected http://host:port (https is not supported)"
            ));
        }
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        Ok(Self {
            url: format!("{base}/metrics/job/{}/run/{}", clean(job), clean(run)),
        })
    }

    /// The URL the group is pushed to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Replaces the group with `stats` (PUT; 10 s timeout).
    ///
    /// # Errors
    /// The gateway cannot be reached or answers with an error status.
    pub fn push(&self, stats: &EpochStats) -> Result<(), String> {
        ureq::put(&self.url)
            .timeout(Duration::from_secs(10))
            .set("Content-Type", "text/plain; version=0.0.4")
            .send_string(&exposition(stats))
            .map(|_| ())
            .map_err(|e| format!("pushing to {}: {e}", self.url))
    }
}

/// The text exposition of one epoch's statistics.
pub fn exposition(s: &EpochStats) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, values: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in values {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    };
    let kinds = |v: [f64; 3]| {
        [
            ("kind=\"box\"", v[0]),
            ("kind=\"cls\"", v[1]),
            ("kind=\"dfl\"", v[2]),
        ]
    };
    gauge("yolo_train_epoch", "Epochs finished (1-based).", &[("", s.epoch as f64)]);
    gauge("yolo_train_epochs", "Epochs the run trains.", &[("", s.epochs as f64)]);
    gauge("yolo_train_loss", "Mean training loss of the epoch.", &kinds(s.train_loss));
    if let Some(v) = s.val_loss {
        gauge("yolo_train_val_loss", "Validation loss of the EMA model.", &kinds(v));
    }
    if let Some(m) = &s.metrics {
        gauge("yolo_train_map50", "Validation mAP50 of the EMA model.", &[("", m.map50)]);
        gauge("yolo_train_map50_95", "Validation mAP50-95 of the EMA model.", &[("", m.map50_95)]);
        gauge("yolo_train_precision", "Validation precision.", &[("", m.precision)]);
        gauge("yolo_train_recall", "Validation recall.", &[("", m.recall)]);
    }
    gauge("yolo_train_fitness", "Fitness the best checkpoint is chosen by.", &[("", s.fitness)]);
    gauge(
        "yolo_train_lr",
        "Learning rate per parameter group at the end of the epoch.",
        &[("group=\"0\"", s.lr[0]), ("group=\"1\"", s.lr[1]), ("group=\"2\"", s.lr[2])],
    );
    gauge("yolo_train_images_per_second", "Training images per second in the epoch.", &[("", s.images_per_s)]);
    gauge("yolo_train_epoch_seconds", "Wall time of the epoch.", &[("", s.seconds)]);
    gauge(
        "yolo_train_data_wait_seconds",
        "Seconds of the epoch's training loop spent waiting for the data loader.",
        &[("", s.data_wait_s)],
    );
    gauge("yolo_train_optimizer_steps", "Optimizer steps so far.", &[("", s.steps as f64)]);
    if let Some(a) = &s.amp {
        gauge("yolo_train_amp_loss_scale", "Mixed precision loss scale at the end of the epoch.", &[("", a.loss_scale as f64)]);
        gauge(
            "yolo_train_amp_skipped_steps",
            "Optimizer steps of the epoch skipped for a gradient overflow in half precision.",
            &[("", a.skipped_steps as f64)],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::DetMetrics;

    fn stats() -> EpochStats {
        EpochStats {
            epoch: 3,
            epochs: 20,
            train_loss: [1.5, 2.25, 1.125],
            val_loss: Some([1.0, 2.0, 3.0]),
            metrics: Some(DetMetrics {
                precision: 0.5,
                recall: 0.25,
                map50: 0.625,
                map50_95: 0.375,
            }),
            lr: [0.01, 0.02, 0.03],
            momentum: 0.9,
            images_per_s: 123.5,
            seconds: 4.5,
            data_wait_s: 0.25,
            fitness: 0.4,
            steps: 77,
            amp: Some(crate::trainer::AmpStats {
                loss_scale: 32768.0,
                skipped_steps: 2,
            }),
        }
    }

    #[test]
    fn exposition_holds_every_value_once() {
        let text = exposition(&stats());
        let rows: Vec<(&str, f64)> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k, v.parse().unwrap())
            })
            .collect();
        let get = |k: &str| rows.iter().filter(|(n, _)| *n == k).map(|(_, v)| *v).collect::<Vec<_>>();
        assert_eq!(get("yolo_train_epoch"), [3.0]);
        assert_eq!(get("yolo_train_loss{kind=\"cls\"}"), [2.25]);
        assert_eq!(get("yolo_train_val_loss{kind=\"dfl\"}"), [3.0]);
        assert_eq!(get("yolo_train_map50_95"), [0.375]);
        assert_eq!(get("yolo_train_lr{group=\"2\"}"), [0.03]);
        assert_eq!(get("yolo_train_optimizer_steps"), [77.0]);
        assert_eq!(get("yolo_train_data_wait_seconds"), [0.25]);
        assert_eq!(get("yolo_train_amp_loss_scale"), [32768.0]);
        assert_eq!(get("yolo_train_amp_skipped_steps"), [2.0]);
        // Every sample has its TYPE line, once.
        for name in ["yolo_train_epoch", "yolo_train_loss", "yolo_train_lr"] {
            assert_eq!(text.matches(&format!("# TYPE {name} gauge")).count(), 1);
        }
        // Without validation there are no validation metrics.
        let mut s = stats();
        s.metrics = None;
        s.val_loss = None;
        s.amp = None;
        let t = exposition(&s);
        assert!(!t.contains("yolo_train_map50") && !t.contains("yolo_train_val_loss"));
        assert!(!t.contains("yolo_train_amp"));
    }

    #[test]
    fn urls() {
        let p = Pushgateway::new("http://gw:9091/", "yolo-train", "my run/1").unwrap();
        assert_eq!(p.url(), "http://gw:9091/metrics/job/yolo-train/run/my_run_1");
        assert!(Pushgateway::new("https://gw", "j", "r").is_err());
        assert!(Pushgateway::new("gw:9091", "j", "r").is_err());
    }
}

//! What each mode measures: `--smoke` (seconds, for the test), `--quick` (under 2 minutes on
//! 2 cores) and the full run.

use std::time::Duration;

use yolo_core::Scale;

/// The work of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: &'static str,
    /// Inference: every scale at every (image size, batch).
    pub scales: Vec<Scale>,
    pub infer: Vec<(usize, usize)>,
    /// Interleaved rounds (ours, then each reference) per inference config.
    pub rounds: usize,
    pub warmup: usize,
    /// Timed runs per round at batch 1, and at larger batches.
    pub iters_b1: usize,
    pub iters_batch: usize,
    /// Decode (yolov8n, batch 1) at this size; NMS always at 640 (8400 anchors).
    pub decode_imgsz: usize,
    pub post_iters: usize,
    pub nms_iters: usize,
    /// Letterbox: a shapes image of this long side (sides 0.75-1x) to 640.
    pub letterbox_src: u32,
    pub letterbox_iters: usize,
    /// Training transform: sizes, generated samples, timed single samples and batches.
    pub transform_sizes: Vec<usize>,
    pub transform_samples: usize,
    pub transform_iters: usize,
    /// Train step: (imgsz, batch), rounds x iters after warm-up.
    pub step: (usize, usize),
    pub step_rounds: usize,
    pub step_iters: usize,
    /// Whole epochs: generated train / val images, size, batch, epochs.
    pub epoch_train: usize,
    pub epoch_val: usize,
    pub epoch_imgsz: usize,
    pub epoch_batch: usize,
    pub epochs: usize,
    /// Serving: the server's size, warm-up and measured window.
    pub serve_imgsz: usize,
    pub serve_warmup: Duration,
    pub serve_window: Duration,
    pub connections: usize,
}

impl Plan {
    pub fn full() -> Self {
        Self {
            mode: "full",
            scales: vec![Scale::N, Scale::S],
            infer: vec![(320, 1), (640, 1), (320, 8), (640, 8)],
            rounds: 3,
            warmup: 2,
            iters_b1: 10,
            iters_batch: 4,
            decode_imgsz: 640,
            post_iters: 30,
            nms_iters: 200,
            letterbox_src: 1920,
            letterbox_iters: 30,
            transform_sizes: vec![320, 640],
            transform_samples: 64,
            transform_iters: 8,
            step: (320, 8),
            step_rounds: 3,
            step_iters: 3,
            epoch_train: 64,
            epoch_val: 8,
            epoch_imgsz: 320,
            epoch_batch: 16,
            epochs: 3,
            serve_imgsz: 640,
            serve_warmup: Duration::from_secs(3),
            serve_window: Duration::from_secs(15),
            connections: 8,
        }
    }

    pub fn quick() -> Self {
        Self {
            mode: "quick",
            scales: vec![Scale::N],
            rounds: 2,
            warmup: 1,
            iters_b1: 5,
            iters_batch: 2,
            post_iters: 20,
            nms_iters: 100,
            letterbox_iters: 10,
            transform_sizes: vec![320],
            transform_samples: 32,
            transform_iters: 4,
            step_rounds: 1,
            epoch_train: 32,
            epoch_val: 4,
            epochs: 2,
            serve_warmup: Duration::from_secs(2),
            serve_window: Duration::from_secs(5),
            ..Self::full()
        }
    }

    /// The least work that still runs every section, at 64 px: for the test, in seconds.
    pub fn smoke() -> Self {
        Self {
            mode: "smoke",
            scales: vec![Scale::N],
            infer: vec![(64, 1), (64, 2)],
            rounds: 1,
            warmup: 1,
            iters_b1: 2,
            iters_batch: 2,
            decode_imgsz: 64,
            post_iters: 2,
            nms_iters: 3,
            letterbox_src: 640,
            letterbox_iters: 2,
            transform_sizes: vec![64],
            transform_samples: 4,
            transform_iters: 2,
            step: (64, 2),
            step_rounds: 1,
            step_iters: 2,
            epoch_train: 4,
            epoch_val: 2,
            epoch_imgsz: 64,
            epoch_batch: 2,
            epochs: 1,
            serve_imgsz: 64,
            serve_warmup: Duration::from_millis(300),
            serve_window: Duration::from_secs(1),
            connections: 8,
        }
    }

    /// What this plan covers, in words (the report's `covers`).
    pub fn covers(&self) -> String {
        let scales: Vec<String> = self.scales.iter().map(|s| format!("yolov8{s}")).collect();
        let configs: Vec<String> = self
            .infer
            .iter()
            .map(|(s, b)| format!("{s} b{b}"))
            .collect();
        format!(
            "inference {} at {} ({} round(s) of {} runs at batch 1, {} at larger batches, {} warm-up); \
             decode at {} and NMS at 640 (8400 anchors, 80 classes; {} / {} runs); letterbox {} px to 640 ({} runs); \
             training transform at {} ({} samples); train step yolov8n {} b{} ({} x {} steps); \
             {} epoch(s) of {} shapes images at {} batch {}; serve at {} with {} connections ({} s measured after {} s)",
            scales.join(", "),
            configs.join(", "),
            self.rounds,
            self.iters_b1,
            self.iters_batch,
            self.warmup,
            self.decode_imgsz,
            self.post_iters,
            self.nms_iters,
            self.letterbox_src,
            self.letterbox_iters,
            self.transform_sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
            self.transform_samples,
            self.step.0,
            self.step.1,
            self.step_rounds,
            self.step_iters,
            self.epochs,
            self.epoch_train,
            self.epoch_imgsz,
            self.epoch_batch,
            self.serve_imgsz,
            self.connections,
            self.serve_window.as_secs_f64(),
            self.serve_warmup.as_secs_f64(),
        )
    }

    /// Progress steps of the sections not in `skip`: one per inference config; decode and
    /// two NMS; the letterbox and a transform per size; the train step and the epochs; serve.
    pub fn steps(&self, skip: &[String]) -> u64 {
        let on = |s: &str| !skip.iter().any(|x| x == s);
        let mut n = 0;
        for (section, steps) in [
            ("inference", self.scales.len() * self.infer.len()),
            ("postprocess", 3),
            ("preprocess", 1 + self.transform_sizes.len()),
            ("training", 2),
            ("serving", 1),
        ] {
            if on(section) {
                n += steps;
            }
        }
        n as u64
    }
}

//! SLOW end-to-end check of training quality at Ultralytics' default recipe, on generated data
//! nothing was tuned on (see docs/training-quality.md).

use yolo_core::data::shapes::{generate, ShapesConfig};
use yolo_core::{backend, Multiples};
use yolo_train::{train, Report, TrainConfig};

/// SLOW (a few minutes on 2 cores in the test profile): cluttered shapes (256 train / 64 val at
/// 160 px, up to 6 unlabelled distractors per image), a width-0.125 YOLOv8 from scratch, 20
/// epochs, batch 16 and everything else Ultralytics' default: nominal batch 64 (accumulation
/// of 4), `optimizer=auto` (AdamW), warmup, mosaic closed for the last 10 epochs.
///
/// Ultralytics 8.4.190 on the same files and settings (`benches/train_compare.py --data <this
/// data> --imgsz 160 --width 0.125 --epochs 20 --seeds 0,1,2`, 2-core Xeon) reached a best
/// mAP50-95 of 0.162 / 0.112 / 0.106 (mean 0.127) and mAP50 0.297 / 0.226 / 0.213; yolo-train
/// 0.112 / 0.124 / 0.143 (mean 0.126). The bound is 0.085 mAP50-95 (two thirds of Ultralytics'
/// mean, below its worst seed by 0.02, room for another CPU's rounding) and 0.15 mAP50 for
/// seed 0: a trainer that learns clearly less than Ultralytics with the default recipe (as
/// #26 feared: 0.10 against 0.28) fails it.
#[test]
fn default_recipe_reaches_ultralytics_map_on_cluttered_shapes() {
    quality_run(false);
}

/// VERY SLOW, not in CI (332 s on 2 cores, against 100 s in f32: f16 is emulated on the CPU):
/// the same run with `amp` (convs in f16 under autocast, the loss scaled), held to the same
/// bounds: mixed precision must not cost the accuracy Ultralytics reaches (issue #31's
/// accuracy check of AMP; on a GPU backend it runs at GPU speed). Measured: best mAP50-95
/// 0.108 and mAP50 0.224, against 0.112 and 0.217 in f32.
#[test]
#[ignore = "~6 min on 2 cores: run with --include-ignored"]
fn amp_recipe_reaches_the_same_map() {
    let s = quality_run(true);
    let last = s.epochs.last().unwrap().amp.expect("amp stats");
    eprintln!("amp: final loss scale {}, {} skipped steps in the last epoch", last.loss_scale, last.skipped_steps);
}

fn quality_run(amp: bool) -> yolo_train::TrainSummary {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(
        &ShapesConfig {
            train: 256,
            val: 64,
            imgsz: 160,
            seed: 0,
            clutter: 6,
        },
        &dir.path().join("clutter"),
    )
    .unwrap();
    let cfg = TrainConfig {
        data: data.data_yaml,
        multiples: Some(Multiples {
            depth: 0.33,
            width: 0.125,
            max_channels: 1024,
        }),
        epochs: 20,
        batch: 16,
        imgsz: 160,
        seed: 0,
        project: dir.path().join("runs"),
        name: "quality".into(),
        amp,
        ..TrainConfig::default()
    };
    assert_eq!(cfg.nbs, 64, "the default nominal batch");
    let t = std::time::Instant::now();
    let s = train(&cfg, &backend::cpu_device(), Report::Quiet).unwrap();
    let best = s
        .epochs
        .iter()
        .filter_map(|e| e.metrics)
        .max_by(|a, b| a.map50_95.total_cmp(&b.map50_95))
        .unwrap();
    eprintln!(
        "amp {amp}: best mAP50 {:.4} mAP50-95 {:.4} (epoch {}); {:.0} s, last epoch {:.1} images/s",
        best.map50,
        best.map50_95,
        s.best_epoch,
        t.elapsed().as_secs_f64(),
        s.epochs.last().unwrap().images_per_s
    );
    assert!(best.map50_95 >= 0.085, "best mAP50-95 {:.4} < 0.085", best.map50_95);
    assert!(best.map50 >= 0.15, "best mAP50 {:.4} < 0.15", best.map50);
    s
}

//! NMS on a seeded synthetic yolov8 output (`[84, 8400]`, 80 classes, 12 objects: the input of
//! `yolo-bench`'s `postprocess.nms` figures, where Ultralytics' `non_max_suppression` is timed
//! beside it) at predict thresholds (conf 0.25) and val thresholds (conf 0.001, multi-label).
//!
//! `cargo bench -p yolo-benches --bench postprocess`

use criterion::{criterion_group, criterion_main, Criterion};
use yolo_benches::suite::synth;
use yolo_core::nms::{non_max_suppression, NmsConfig};

fn postprocess(c: &mut Criterion) {
    let syn = synth::prediction(80, 640, 12, 0);
    let mut g = c.benchmark_group("nms");
    for (name, cfg) in [("predict", NmsConfig::predict()), ("val", NmsConfig::val())] {
        g.bench_function(format!("{name}_8400x80"), |b| b.iter(|| non_max_suppression(&syn.pred, 80, &cfg)));
    }
    g.finish();
}

criterion_group!(benches, postprocess);
criterion_main!(benches);

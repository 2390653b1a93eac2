//! One yolov8n training step at 320x320, batch 8, on the default backend's autodiff twin:
//! forward in train mode, the real v8 loss (assigner included), backward, global-norm
//! clipping and a grouped Nesterov SGD step, as `yolo-train` runs it (the "train step").
//!
//! `cargo bench -p yolo-benches --bench train_step`

use criterion::{criterion_group, criterion_main, Criterion};
use yolo_benches::TrainStep;
use yolo_core::{backend, Scale};

fn train_step(c: &mut Criterion) {
    let (batch, size) = (8, 320);
    let mut step = TrainStep::new(Scale::N, batch, size, &backend::default_device());
    let mut g = c.benchmark_group("yolov8n_train_step");
    g.sample_size(10);
    g.bench_function(format!("{size}x{size}_b{batch}_sgd"), |b| {
        b.iter(|| step.step())
    });
    g.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);

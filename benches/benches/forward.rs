//! yolov8n forward (decode included) at 640x640 and 320x320, batch 1 (plain and fused) and
//! batch 8 (fused), on the default backend.
//! Weights are a fresh init: speed does not depend on their values.

use criterion::{criterion_group, criterion_main, Criterion};
use yolo_benches::input;
use yolo_core::{backend, ModelConfig, Scale};

fn forward(c: &mut Criterion) {
    let device = backend::default_device();
    let model = ModelConfig::new(Scale::N, 80).init(&device).unwrap();
    let fused = model.clone().fuse();
    let mut g = c.benchmark_group("yolov8n_forward");
    g.sample_size(10);
    for size in [320, 640] {
        let x = input(1, size, &device);
        g.bench_function(format!("{size}x{size}_b1"), |b| {
            b.iter(|| {
                let y = model.predict(x.clone()).unwrap();
                y.into_data()
            })
        });
        g.bench_function(format!("{size}x{size}_b1_fused"), |b| {
            b.iter(|| {
                let y = fused.predict(x.clone()).unwrap();
                y.into_data()
            })
        });
        let x8 = input(8, size, &device);
        g.bench_function(format!("{size}x{size}_b8_fused"), |b| {
            b.iter(|| {
                let y = fused.predict(x8.clone()).unwrap();
                y.into_data()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);

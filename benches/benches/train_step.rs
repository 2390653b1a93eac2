//! One yolov8n training step at 320x320, batch 8, on the default backend's autodiff twin:
//! forward in train mode, the real v8 loss (assigner included), backward, global-norm
//! clipping and a grouped Nesterov SGD step, as `yolo-train` runs it (the "train step").
//!
//! `cargo bench -p yolo-benches --bench train_step`

use criterion::{criterion_group, criterion_main, Criterion};
use yolo_benches::input;
use yolo_core::burn::optim::GradientsParams;
use yolo_core::{backend, ModelConfig, Scale};
use yolo_train::optim::{clip_grad_norm, OptimizerChoice, YoloOptimizer};
use yolo_train::{v8_detection_loss, LossConfig, OptimizerKind, Target, Targets};

fn train_step(c: &mut Criterion) {
    let device = backend::default_device().autodiff();
    let mut model = Some(ModelConfig::new(Scale::N, 80).init_seeded(&device, 0).unwrap());
    let meta = model.as_ref().unwrap().meta();
    let choice = OptimizerChoice {
        kind: OptimizerKind::Sgd,
        lr0: 0.01,
        momentum: 0.937,
        warmup_bias_lr: 0.0,
    };
    let mut optim = YoloOptimizer::new(model.as_ref().unwrap(), choice, 5e-4);
    let (batch, size) = (8, 320);
    let x = input(batch, size, &device);
    // Three boxes per image, spread over the image and the size range.
    let targets = Targets {
        boxes: (0..batch)
            .flat_map(|b| {
                (0..3).map(move |k| Target {
                    batch_idx: b,
                    cls: (b * 3 + k) % 80,
                    xywh: [0.2 + 0.3 * k as f32, 0.3 + 0.05 * b as f32, 0.1 + 0.1 * k as f32, 0.15],
                })
            })
            .collect(),
    };
    let cfg = LossConfig::default();
    let mut g = c.benchmark_group("yolov8n_train_step");
    g.sample_size(10);
    g.bench_function(format!("{size}x{size}_b{batch}_sgd"), |b| {
        b.iter(|| {
            let m = model.take().unwrap();
            let out = m.forward(x.clone());
            let loss = v8_detection_loss(&out, &meta, &targets, &cfg);
            let grads = GradientsParams::from_grads(loss.total.backward(), &m);
            let (grads, _) = clip_grad_norm(&m, grads, 10.0);
            model = Some(optim.step([0.01; 3], m, grads));
        })
    });
    g.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);

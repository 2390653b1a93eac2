//! Images/second of the full training transform (Ultralytics' `v8_transforms` defaults:
//! Mosaic, RandomPerspective, HSV, flips) at 320 and 640, through the loader that training
//! uses: one sample on one thread, and a batch of 16 decoded and augmented on all cores.
//!
//! `cargo bench -p yolo-benches --bench augment`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use yolo_core::data::dataset::{load_split, DataConfig, Split};
use yolo_core::data::shapes::{generate, ShapesConfig};
use yolo_train::augment::AugConfig;
use yolo_train::loader::Loader;

fn augment(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("yolo-bench-augment-{}", std::process::id()));
    for imgsz in [320usize, 640] {
        let root = dir.join(imgsz.to_string());
        let summary = generate(
            &ShapesConfig {
                train: 64,
                val: 1,
                imgsz: imgsz as u32,
                seed: 0,
                clutter: 0,
            },
            &root,
        )
        .expect("generate shapes");
        let data = DataConfig::from_yaml(&summary.data_yaml).expect("data.yaml");
        let (samples, _) = load_split(&data, Split::Train).expect("train split");
        let loader = Arc::new(Loader {
            samples,
            imgsz,
            batch: 16,
            seed: 0,
            shuffle: true,
            augment: Some((AugConfig::default(), usize::MAX)),
            cache: None,
        });
        let mut g = c.benchmark_group(format!("train_transform_{imgsz}"));
        g.sample_size(10);
        let mut epoch = 0;
        g.throughput(Throughput::Elements(1));
        g.bench_function("one_sample_one_thread", |b| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            b.iter(|| {
                epoch += 1;
                pool.install(|| loader.load_host(&[epoch % 64], epoch).unwrap())
            })
        });
        g.throughput(Throughput::Elements(16));
        g.bench_function("batch16_all_cores", |b| {
            b.iter(|| {
                epoch += 1;
                let idx: Vec<usize> = (0..16).map(|i| (epoch * 16 + i) % 64).collect();
                loader.load_host(&idx, epoch).unwrap()
            })
        });
        g.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, augment);
criterion_main!(benches);

//! Inference preprocessing: the letterbox of a camera-size image to 640 (cv2-exact bilinear
//! resize and padding, one thread), the image `yolo-bench`'s `preprocess.letterbox/640` figure
//! uses (shapes render, seed 0, 1920 px class: 1562x1586), where Ultralytics' cv2 LetterBox is
//! timed beside it. Also a same-size letterbox (padding only) and an upscale.
//!
//! `cargo bench -p yolo-benches --bench preprocess`

use criterion::{criterion_group, criterion_main, Criterion};
use yolo_core::data::letterbox::LetterBox;
use yolo_core::data::shapes::{self, ShapesConfig};

fn preprocess(c: &mut Criterion) {
    let render = |imgsz| {
        let cfg = ShapesConfig { train: 0, val: 1, imgsz, seed: 0, clutter: 4 };
        shapes::render(&cfg, shapes::Split::Val, 0).image
    };
    let big = render(1920);
    let small = render(320);
    let lb = LetterBox::square(640);
    let mut g = c.benchmark_group("letterbox");
    g.bench_function(format!("{}x{}_to_640", big.width(), big.height()), |b| b.iter(|| lb.apply(&big)));
    g.bench_function(format!("{}x{}_to_640", small.width(), small.height()), |b| b.iter(|| lb.apply(&small)));
    let same = LetterBox::square(small.width().max(small.height()));
    g.bench_function(format!("{}x{}_pad_only", small.width(), small.height()), |b| b.iter(|| same.apply(&small)));
    g.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);

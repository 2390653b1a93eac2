//! Shared helpers for the benchmarks: building inputs and timing on any backend.

use std::time::Instant;

use yolo_core::burn::tensor::{Device, Tensor, TensorData};

/// A deterministic input in `[0, 1]`.
pub fn input(batch: usize, size: usize, device: &Device) -> Tensor<4> {
    let n = batch * 3 * size * size;
    let data: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    Tensor::from_data(TensorData::new(data, [batch, 3, size, size]), device)
}

/// Wall time of each of `iters` runs of `f` (after `warmup` runs), in milliseconds.
pub fn times_ms(warmup: usize, iters: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    (0..iters.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// Median and minimum wall time of `f` in milliseconds over `iters` runs after `warmup` runs.
pub fn time_ms(warmup: usize, iters: usize, f: impl FnMut()) -> (f64, f64) {
    let mut t = times_ms(warmup, iters, f);
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

//! Backend selection. Burn 0.22 dispatches on the device at run time; the cargo features
//! decide which backends are compiled in:
//!
//! - `flex` (default): Burn's CPU backend, what CI tests.
//! - `wgpu`: GPUs through Vulkan / Metal / DX12.
//! - `cuda`: NVIDIA GPUs through CUDA.
//!
//! Without an override the fastest compiled backend is chosen (CUDA, then wgpu, then flex);
//! `BURN_DEVICE=flex|wgpu|cuda` picks one explicitly.

use burn::tensor::Device;

/// The device chosen by the compiled features and `BURN_DEVICE`.
pub fn default_device() -> Device {
    Device::default()
}

/// The CPU device (flex).
pub fn cpu_device() -> Device {
    Device::flex()
}

/// Runs `f` on a thread of rayon's global pool, where the CPU backend's parallel kernels run
/// (inline when already on one). [`YoloV8::predict`](crate::YoloV8::predict) runs there.
///
/// Called from another thread, each parallel region of a conv is handed to the pool and the
/// caller sleeps until it ends: two thread switches per region, ~100 regions per yolov8n
/// forward, about 1 ms per forward on the 2-core CI machine (a quarter of a 64x64 forward,
/// ~5% at 320). On a pool thread the regions run inline, shared with idle workers by work
/// stealing. `f` must not block on work that itself needs the pool (a worker waiting on a
/// channel fed by pool jobs would hold one of its threads). The trainer does not use it yet:
/// with its steps on the pool, a resumed run's validation losses differed from an
/// uninterrupted run's in the fourth digit (`yolo-train/tests/train.rs`), not yet understood.
pub fn on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

/// The compiled backends, by name.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["flex"];
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

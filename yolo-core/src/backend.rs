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

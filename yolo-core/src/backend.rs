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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The device chosen by the compiled features and `BURN_DEVICE`.
pub fn default_device() -> Device {
    Device::default()
}

/// Keeps memory freed by the CPU backend in the process for its next buffers (glibc on Linux;
/// elsewhere nothing): buffers up to 1 GB come from the heap instead of fresh `mmap`s, and
/// the heap is not trimmed. A training step or a forward pass frees and allocates the same
/// large activation and scratch buffers again and again; by default glibc maps the larger
/// ones afresh each time (its threshold adapts only up to the sizes it has seen freed) and
/// returns freed memory, so every reuse costs a page fault and a kernel zero-fill per 4 KB
/// page. Measured on yolov8n's 320 px, batch-8 train step (`train-time`): minor page faults
/// 185k -> 104k per run, peak RSS unchanged (383 -> 388 MB), median step 0.88-1.0x over 7
/// interleaved pairs. The memory stays with the process until it exits, so the binaries
/// call this at start (a long-running server's RSS stays at its peak); a library user
/// decides for their own process. Call it before starting threads. `YOLO_RS_KEEP_FREED=0`
/// leaves glibc's defaults (for a process that must give memory back, and for A/B runs).
pub fn keep_freed_memory() {
    if std::env::var("YOLO_RS_KEEP_FREED").is_ok_and(|v| v == "0") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters (glibc takes its own lock).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// The CPU device (flex).
pub fn cpu_device() -> Device {
    Device::flex()
}

/// The CPU device, and the default device too when that is another one: the devices to check
/// a computation on. The parity tests run on each, so that a build with `--features wgpu` run
/// with `BURN_DEVICE=wgpu` tests the GPU code too (on a GPU or, without one, on a software
/// Vulkan such as Mesa's lavapipe).
pub fn cpu_and_default() -> Vec<Device> {
    let (cpu, default) = (cpu_device(), default_device());
    if default == cpu {
        vec![cpu]
    } else {
        vec![cpu, default]
    }
}

/// Runs `f` on a thread of rayon's global pool, where the CPU backend's parallel kernels run
/// (inline when already on one). [`YoloV8::predict`](crate::YoloV8::predict) runs there.
///
/// Called from another thread, each parallel region of a conv is handed to the pool and the
/// caller sleeps until it ends: two thread switches per region, ~100 regions per yolov8n
/// forward, about 1 ms per forward on the 2-core CI machine (a quarter of a 64x64 forward,
/// ~5% at 320). On a pool thread the regions run inline, shared with idle workers by work
/// stealing. `f` must not block on work that itself needs the pool (a worker waiting on a
/// channel fed by pool jobs would hold one of its threads). The trainer runs each step here
/// too. `f` runs on whichever worker takes it: state kept per thread must not leak into
/// results (Burn's `RunningState` does, unless each update is read back on its own thread at
/// once, as the BatchNorm op does).
///
/// While `f` runs, the other workers are kept awake (see [`keep_awake`]): between two parallel
/// regions a sleeping rayon worker has to be woken by a futex, which on a VM with idle vCPUs
/// takes tens of microseconds per region, about as long as the small regions of a 320 px
/// forward themselves (onnxruntime's pool spins between ops for the same reason).
pub fn on_cpu_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // Only the first caller at a time keeps workers awake: two callers' helpers could each
    // wait, on another's thread, for the other's work to end.
    static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let first = IN_FLIGHT.fetch_add(1, Ordering::AcqRel) == 0;
    let _leave = Leave;
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let body = rayon::current_thread_index();
        if first {
            for _ in 1..rayon::current_num_threads() {
                let done = &done;
                s.spawn(move |_| keep_awake(done, body));
            }
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// A helper job of [`on_cpu_pool`]: runs the pool's pending work (rayon's `yield_now`, which
/// also steals) and spins while there is none, until `done`, or after 2 ms without work (a
/// long serial stretch: the worker may sleep then), or at once on `body`'s own thread (popped
/// there beneath the caller's closure, it would wait on itself).
fn keep_awake(done: &AtomicBool, body: Option<usize>) {
    if rayon::current_thread_index() == body {
        return;
    }
    let mut idle_since: Option<std::time::Instant> = None;
    let mut spins = 0u32;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = None;
            continue;
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins % 64 == 0 {
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > std::time::Duration::from_millis(2) {
                return;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    /// Callers on several threads at once, each running parallel work (and a nested call) on
    /// the pool while the first keeps workers awake: every call returns its own result.
    #[test]
    fn concurrent_pool_calls_finish() {
        let handles: Vec<_> = (0..6u64)
            .map(|t| {
                std::thread::spawn(move || {
                    (0..20u64)
                        .map(|round| {
                            super::on_cpu_pool(|| {
                                let n = 1000 * (t + 1) + round;
                                let inner = super::on_cpu_pool(|| (0..n).into_par_iter().map(|i| i % 7).sum::<u64>());
                                inner + (0..n).into_par_iter().map(|i| i * 2).sum::<u64>()
                            })
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            for (round, got) in h.join().unwrap().into_iter().enumerate() {
                let n = 1000 * (t as u64 + 1) + round as u64;
                let want = (0..n).map(|i| i % 7).sum::<u64>() + n * (n - 1);
                assert_eq!(got, want, "thread {t}, round {round}");
            }
        }
    }
}

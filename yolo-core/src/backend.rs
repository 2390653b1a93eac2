//! Backend selection. Burn 0.22 dispatches on the device at run time; the cargo features
//! decide which backends are compiled in:
//!
//! - `flex` (default): Burn's CPU backend, what CI tests.
//! - `wgpu`: GPUs through Vulkan / Metal / DX12.
//! - `cuda`: NVIDIA GPUs through CUDA.
//!
//! [`select_device`] picks one. `BURN_DEVICE=flex|cpu|wgpu|cuda` names it (`cpu` is `flex`;
//! [`select_device_for`] takes the name from elsewhere, e.g. `yolo-train --device`);
//! otherwise the fastest compiled backend that has a device on this machine is chosen: CUDA
//! when the NVIDIA driver reports a device, then wgpu when it finds an adapter that is not a
//! software rasterizer (Mesa's lavapipe is slower than `flex`, so it is used only when named),
//! then `flex`. That is Ultralytics' `device=''` (`cuda:0` when CUDA is available, else the
//! CPU). So one GPU build runs on CPU-only nodes too, and a named backend that is not
//! compiled in or has no device is a [`CoreError::Device`] saying so, not a panic inside
//! a GPU runtime (Burn's own `Device::default()` hands out CUDA whenever it is compiled in,
//! and the first kernel then panics where no driver is installed).

use crate::{CoreError, Result};
use burn::tensor::Device;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A backend, as `BURN_DEVICE` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Burn's CPU backend.
    Flex,
    /// wgpu: Vulkan, Metal or DX12.
    Wgpu,
    /// CUDA.
    Cuda,
}

impl BackendKind {
    /// In the order an unasked choice tries them.
    const PREFERENCE: [BackendKind; 3] = [BackendKind::Cuda, BackendKind::Wgpu, BackendKind::Flex];

    /// The name `BURN_DEVICE` uses.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether this build has it (its cargo feature).
    pub fn compiled(self) -> bool {
        match self {
            BackendKind::Flex => true,
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backend's first (default) device.
    fn device(self) -> Device {
        match self {
            BackendKind::Flex => Device::flex(),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Device::cuda(0),
            #[allow(unreachable_patterns)]
            _ => unreachable!("{} is not compiled in", self.name()),
        }
    }

    /// What this machine has for it: probes the driver (CUDA) or the graphics APIs (wgpu).
    fn probe(self) -> Presence {
        match self {
            BackendKind::Flex => Presence::Hardware,
            BackendKind::Wgpu => probe_wgpu(),
            BackendKind::Cuda => probe_cuda(),
        }
    }
}

/// What a machine has for a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    /// No device (no driver, no adapter, or the backend is not compiled in).
    None,
    /// Only a software device (a wgpu CPU adapter such as lavapipe): usable when named.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    Software,
    /// A device worth choosing unasked.
    Hardware,
}

/// CUDA's presence: a driver that loads and reports a device (compiled out: none).
fn probe_cuda() -> Presence {
    #[cfg(feature = "cuda")]
    {
        use cubecl_runtime::runtime::Runtime;
        // Loads libcuda only if it is there (cudarc's own loader panics when it is not).
        if cubecl::cuda::CudaRuntime::is_available() {
            return Presence::Hardware;
        }
    }
    Presence::None
}

/// wgpu's presence: an adapter that is not a software rasterizer, else any adapter (compiled
/// out: none).
fn probe_wgpu() -> Presence {
    #[cfg(feature = "wgpu")]
    {
        use cubecl_runtime::runtime::Runtime;
        type Wgpu = cubecl::wgpu::WgpuRuntime;
        if Wgpu::is_available() {
            return Presence::Hardware;
        }
        if !Wgpu::enumerate_all_devices().is_empty() {
            return Presence::Software;
        }
    }
    Presence::None
}

/// The device [`select_device`] chose, and why.
#[derive(Clone, Debug)]
pub struct Selected {
    /// The device to run on.
    pub device: Device,
    /// Its backend.
    pub backend: BackendKind,
    /// What named it (`"BURN_DEVICE"`, `"--device"`), or `None`: chosen by what the machine has.
    pub via: Option<&'static str>,
}

impl std::fmt::Display for Selected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = self.via.unwrap_or("auto");
        write!(f, "{} ({how}; compiled: {})", self.backend.name(), compiled_backends().join(", "))
    }
}

/// The backend for `requested` (named through `via`), given what is compiled in and what
/// `probe` finds on the machine; `None` or blank: the first compiled backend with hardware.
/// Pure: the policy, testable without the hardware.
fn choose(requested: Option<&str>, via: &'static str, probe: &dyn Fn(BackendKind) -> Presence) -> Result<(BackendKind, bool)> {
    let Some(raw) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
        let kind = BackendKind::PREFERENCE
            .into_iter()
            .find(|&k| k.compiled() && probe(k) == Presence::Hardware)
            .unwrap_or(BackendKind::Flex);
        return Ok((kind, false));
    };
    let err = |message: String| CoreError::Device { via, requested: raw.to_string(), message };
    let kind = match raw.to_ascii_lowercase().as_str() {
        "flex" | "cpu" => BackendKind::Flex,
        "wgpu" => BackendKind::Wgpu,
        "cuda" => BackendKind::Cuda,
        _ => {
            return Err(err(format!(
                "unknown backend; this build has {} (leave it empty to choose automatically)",
                compiled_backends().join(", ")
            )))
        }
    };
    if !kind.compiled() {
        return Err(err(format!(
            "this build has no `{0}` backend (it has {1}); rebuild with `--features {0}`",
            kind.name(),
            compiled_backends().join(", ")
        )));
    }
    if probe(kind) == Presence::None {
        let why = match kind {
            BackendKind::Cuda => {
                "no CUDA device: the NVIDIA driver's libcuda could not be loaded or reports no \
                 GPU (in a container: run with the NVIDIA container runtime and request a GPU, \
                 e.g. the `nvidia.com/gpu` resource on Kubernetes)"
            }
            _ => "no adapter: no Vulkan, Metal or DX12 driver answered (on Linux: a Vulkan ICD, \
                  e.g. the GPU vendor's or Mesa's)",
        };
        return Err(err(why.to_string()));
    }
    Ok((kind, true))
}

/// What this machine has for `kind`, probed once per process (a compiled-out backend: none).
fn presence(kind: BackendKind) -> Presence {
    static PROBED: [OnceLock<Presence>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match kind {
        BackendKind::Flex => 0,
        BackendKind::Wgpu => 1,
        BackendKind::Cuda => 2,
    };
    *PROBED[slot].get_or_init(|| if kind.compiled() { kind.probe() } else { Presence::None })
}

/// Chooses the device: the backend `requested` names (`flex`, `cpu` = `flex`, `wgpu`, `cuda`)
/// or, when it is `None` or blank, the fastest compiled backend with hardware on this machine
/// (see the module docs). `via` is what named it, for the messages (`"--device"`).
///
/// # Errors
///
/// [`CoreError::Device`] when `requested` names an unknown backend, one this build lacks, or
/// one with no device on this machine.
pub fn select_device_for(requested: Option<&str>, via: &'static str) -> Result<Selected> {
    let (backend, named) = choose(requested, via, &presence)?;
    Ok(Selected { device: backend.device(), backend, via: named.then_some(via) })
}

/// [`select_device_for`] a command line's `--device` when it names something (not `None`, not
/// blank), else [`select_device`]: the flag wins over `BURN_DEVICE`.
///
/// # Errors
///
/// As [`select_device_for`].
pub fn select_device_flag(flag: Option<&str>) -> Result<Selected> {
    match flag.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => select_device_for(Some(d), "--device"),
        None => select_device(),
    }
}

/// [`select_device_for`] what `BURN_DEVICE` names (nothing when it is unset).
///
/// # Errors
///
/// As [`select_device_for`].
pub fn select_device() -> Result<Selected> {
    select_device_for(std::env::var("BURN_DEVICE").ok().as_deref(), "BURN_DEVICE")
}

/// The device [`select_device`] chooses.
///
/// # Panics
///
/// Where [`select_device`] fails (a bad `BURN_DEVICE`); binaries call that and report.
pub fn default_device() -> Device {
    select_device().unwrap_or_else(|e| panic!("{e}")).device
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

/// Rewrites `BURN_DEVICE` into the form Burn itself reads where it builds `Device::default()`
/// (its optimizer loader does, on `yolo-train --resume`): trimmed and lower case, `cpu` (our
/// name for `flex`) as `flex`, and removed when blank (our "choose"). Burn only lowercases it,
/// and panics on any other name. `yolo-train` calls it first thing in `main`: setting the
/// environment while other threads read it is a data race.
pub fn canonical_device_env() {
    let Ok(value) = std::env::var("BURN_DEVICE") else {
        return;
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "" => std::env::remove_var("BURN_DEVICE"),
        "cpu" => std::env::set_var("BURN_DEVICE", "flex"),
        name if name != value => std::env::set_var("BURN_DEVICE", name),
        _ => {}
    }
}

/// The compiled backends, by name (flex, then wgpu, then cuda).
pub fn compiled_backends() -> Vec<&'static str> {
    [BackendKind::Flex, BackendKind::Wgpu, BackendKind::Cuda]
        .into_iter()
        .filter(|k| k.compiled())
        .map(BackendKind::name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{choose, BackendKind, Presence};
    use crate::CoreError;
    use rayon::prelude::*;

    fn machine(cuda: Presence, wgpu: Presence) -> impl Fn(BackendKind) -> Presence {
        move |k| match k {
            BackendKind::Flex => Presence::Hardware,
            BackendKind::Wgpu if k.compiled() => wgpu,
            BackendKind::Cuda if k.compiled() => cuda,
            _ => Presence::None,
        }
    }

    /// Unasked: the first compiled backend with hardware, in the order CUDA, wgpu, flex; a
    /// software adapter (lavapipe) is never chosen unasked; nothing found means flex.
    #[test]
    fn auto_prefers_hardware_gpus_and_falls_back_to_flex() {
        use Presence::*;
        let auto = |cuda, wgpu| choose(Option::None, "BURN_DEVICE", &machine(cuda, wgpu)).unwrap();
        assert_eq!(auto(None, None), (BackendKind::Flex, false));
        assert_eq!(auto(None, Software), (BackendKind::Flex, false));
        let want_wgpu = if cfg!(feature = "wgpu") { BackendKind::Wgpu } else { BackendKind::Flex };
        assert_eq!(auto(None, Hardware), (want_wgpu, false));
        let want_cuda = if cfg!(feature = "cuda") { BackendKind::Cuda } else { want_wgpu };
        assert_eq!(auto(Hardware, Hardware), (want_cuda, false));
        // An empty or blank variable is no request.
        assert_eq!(choose(Some(" "), "--device", &machine(None, None)).unwrap(), (BackendKind::Flex, false));
    }

    /// A command line's `--device` wins when it names something; blank falls back to
    /// `BURN_DEVICE` / the machine (whatever this test process has, never `--device`).
    #[test]
    fn a_device_flag_names_the_backend_or_defers() {
        let flex = super::select_device_flag(Some("cpu")).unwrap();
        assert_eq!((flex.backend, flex.via), (BackendKind::Flex, Some("--device")));
        assert_eq!(flex.device, super::cpu_device());
        let e = super::select_device_flag(Some("tpu")).unwrap_err().to_string();
        assert!(e.starts_with("--device=tpu: unknown backend"), "{e}");
        for blank in [None, Some(""), Some("  ")] {
            if let Ok(s) = super::select_device_flag(blank) {
                assert_ne!(s.via, Some("--device"));
            }
        }
    }

    /// Named: taken when compiled and present (a software adapter counts), else an error
    /// that names the variable and says what is wrong.
    #[test]
    fn a_named_backend_is_used_or_refused_with_the_reason() {
        use Presence::*;
        let named = |r: &str, cuda, wgpu| choose(Some(r), "BURN_DEVICE", &machine(cuda, wgpu));
        assert_eq!(named("flex", None, None).unwrap(), (BackendKind::Flex, true));
        assert_eq!(named("CPU", Hardware, Hardware).unwrap(), (BackendKind::Flex, true));
        let message = |r: Result<(BackendKind, bool), CoreError>| match r {
            Err(e @ CoreError::Device { .. }) => e.to_string(),
            other => panic!("expected a device error, got {other:?}"),
        };
        let unknown = message(named("tpu", Hardware, Hardware));
        assert!(unknown.starts_with("BURN_DEVICE=tpu: unknown backend"), "{unknown}");
        let flag = message(choose(Some("tpu"), "--device", &machine(Hardware, Hardware)));
        assert!(flag.starts_with("--device=tpu: "), "{flag}");
        if cfg!(feature = "cuda") {
            assert_eq!(named("cuda", Hardware, None).unwrap(), (BackendKind::Cuda, true));
            let e = message(named("cuda", None, Hardware));
            assert!(e.contains("no CUDA device") && e.contains("nvidia.com/gpu"), "{e}");
        } else {
            let e = message(named("cuda", Hardware, Hardware));
            assert!(e.contains("no `cuda` backend") && e.contains("--features cuda"), "{e}");
        }
        if cfg!(feature = "wgpu") {
            assert_eq!(named("wgpu", None, Software).unwrap(), (BackendKind::Wgpu, true));
            let e = message(named("wgpu", None, None));
            assert!(e.contains("no adapter"), "{e}");
        } else {
            let e = message(named("wgpu", Hardware, Hardware));
            assert!(e.contains("no `wgpu` backend"), "{e}");
        }
    }

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

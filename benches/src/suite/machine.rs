//! What the report says about the machine and the build: CPU model and the instruction-set
//! features the kernels pick at run time, cores, memory, GPUs (nvidia-smi), the git revision.

use std::collections::BTreeMap;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The machine a report was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    /// `avx2`, `fma`, `avx512f` (x86_64) and `neon` (aarch64): true/false, `null` where the
    /// feature does not exist on this architecture.
    pub cpu_flags: BTreeMap<String, Option<bool>>,
    /// Logical CPUs this process may use.
    pub cores: usize,
    /// Threads of rayon's pool (the CPU backend's kernels; `RAYON_NUM_THREADS`).
    pub threads: usize,
    pub arch: String,
    pub os: String,
    /// MemTotal of /proc/meminfo, in MiB (0 where unknown).
    pub memory_mib: u64,
    /// The board (`/proc/device-tree/model`, e.g. a Jetson), where there is one.
    pub board: Option<String>,
    /// `nvidia-smi --query-gpu`, one entry per GPU; empty without nvidia-smi.
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub name: String,
    pub driver: String,
    pub memory_mib: Option<u64>,
}

impl Machine {
    pub fn detect() -> Self {
        Self {
            cpu_model: cpu_model(),
            cpu_flags: cpu_flags(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            threads: rayon::current_num_threads(),
            arch: std::env::consts::ARCH.into(),
            os: std::env::consts::OS.into(),
            memory_mib: meminfo_total_kib().map_or(0, |k| k / 1024),
            board: std::fs::read_to_string("/proc/device-tree/model")
                .ok()
                .map(|s| s.trim_end_matches('\0').trim().to_string())
                .filter(|s| !s.is_empty()),
            gpus: nvidia_gpus(),
        }
    }

    /// One line: `AMD EPYC ... (2 cores; avx2, fma, avx512f)`.
    pub fn summary(&self) -> String {
        let flags: Vec<String> = self
            .cpu_flags
            .iter()
            .filter_map(|(k, v)| v.map(|on| if on { k.clone() } else { format!("no {k}") }))
            .collect();
        let mut s = format!(
            "{} ({} cores, {} threads; {})",
            self.cpu_model,
            self.cores,
            self.threads,
            flags.join(", ")
        );
        if let Some(b) = &self.board {
            s += &format!("; board {b}");
        }
        s
    }
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // x86: "model name"; arm64 boards: "Model" or "Hardware" (else the CPU part number).
    for key in ["model name", "Model", "Hardware", "CPU part"] {
        if let Some(v) = info.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        }) {
            if !v.is_empty() {
                return v;
            }
        }
    }
    "unknown".into()
}

#[allow(unused_mut)]
fn cpu_flags() -> BTreeMap<String, Option<bool>> {
    let mut f: BTreeMap<String, Option<bool>> = ["avx2", "fma", "avx512f", "neon"]
        .into_iter()
        .map(|k| (k.to_string(), None))
        .collect();
    #[cfg(target_arch = "x86_64")]
    {
        f.insert(
            "avx2".into(),
            Some(std::arch::is_x86_feature_detected!("avx2")),
        );
        f.insert(
            "fma".into(),
            Some(std::arch::is_x86_feature_detected!("fma")),
        );
        f.insert(
            "avx512f".into(),
            Some(std::arch::is_x86_feature_detected!("avx512f")),
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        f.insert(
            "neon".into(),
            Some(std::arch::is_aarch64_feature_detected!("neon")),
        );
    }
    f
}

fn meminfo_total_kib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn nvidia_gpus() -> Vec<Gpu> {
    let Ok(out) = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split(',').map(str::trim).collect();
            (parts.len() == 3).then(|| Gpu {
                name: parts[0].into(),
                driver: parts[1].into(),
                memory_mib: parts[2].parse().ok(),
            })
        })
        .collect()
}

/// `git rev-parse HEAD` in the current folder, else `$YOLO_RS_REVISION` (set it where the
/// binary runs without the repository, e.g. in a container), else "unknown".
pub fn git_revision() -> String {
    let git = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    git.or_else(|| {
        std::env::var("YOLO_RS_REVISION")
            .ok()
            .filter(|s| !s.is_empty())
    })
    .unwrap_or_else(|| "unknown".into())
}

/// Peak resident set size of this process so far, in KiB (`VmHWM`), or of process `pid`.
pub fn peak_rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets this process's peak RSS to its current RSS (Linux: `5` into /proc/self/clear_refs),
/// so that the next [`peak_rss_kib`] is the peak of what runs in between. False where that
/// is not possible (the peak is then the process's peak so far).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many CPUs other processes kept busy during `window`, while this one sleeps: from
/// /proc/stat (busy = all but idle and iowait; time the hypervisor stole counts as busy).
pub fn busy_cores(window: std::time::Duration) -> Option<f64> {
    fn sample() -> Option<(u64, u64, usize)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut lines = stat.lines();
        let v: Vec<u64> = lines
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let cpus = lines.filter(|l| l.starts_with("cpu")).count();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((total - idle, total, cpus))
    }
    let (b0, t0, cpus) = sample()?;
    std::thread::sleep(window);
    let (b1, t1, _) = sample()?;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * cpus as f64)
}

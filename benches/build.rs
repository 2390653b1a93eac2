//! Puts the versions the report names into the binary: Burn's (from the workspace's Cargo.lock,
//! which pins it) and rustc's.

use std::process::Command;

fn main() {
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    for (krate, var) in [
        ("burn", "YOLO_BENCH_BURN"),
        ("burn-flex", "YOLO_BENCH_BURN_FLEX"),
    ] {
        println!(
            "cargo:rustc-env={var}={}",
            locked_version(&text, krate).unwrap_or_else(|| "unknown".into())
        );
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("rustc ")
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=YOLO_BENCH_RUSTC={version}");
}

/// The version of `name` in a Cargo.lock (its first `[[package]]` of that name).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{name}\"") {
            let v = lines
                .next()?
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"')?;
            return Some(v.to_string());
        }
    }
    None
}

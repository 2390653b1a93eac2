//! The reference runtimes (onnxruntime, PyTorch / Ultralytics) through `benches/bench_refs.py`,
//! run as a worker process by the `--python` interpreter and asked for one measurement at a
//! time, so that ours and theirs take turns in the same run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

/// The worker script, embedded so the binary runs it without the repository.
pub const SCRIPT: &str = include_str!("../../bench_refs.py");

/// Seconds a reference's timed runs of one request may take before it stops early (after at
/// least 3 runs): a reference far slower than ours must not stall the suite.
pub const BUDGET_S: f64 = 30.0;

pub struct Refs {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: PathBuf,
    /// Importable runtimes and their versions (python, numpy, onnxruntime, torch, ...).
    pub versions: BTreeMap<String, String>,
    /// Whether torch sees a CUDA GPU.
    pub cuda: bool,
}

impl Refs {
    /// Writes the worker into `work` and starts it with `python`; waits for its hello.
    pub fn start(python: &Path, work: &Path) -> anyhow::Result<Self> {
        let script = work.join("bench_refs.py");
        std::fs::write(&script, SCRIPT)
            .with_context(|| format!("{}: cannot write", script.display()))?;
        let log = work.join("refs.log");
        let err = std::fs::File::create(&log)
            .with_context(|| format!("{}: cannot create", log.display()))?;
        let mut child = Command::new(python)
            .arg(&script)
            .current_dir(work)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("--python {}: cannot start", python.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut refs = Self {
            child,
            stdin,
            lines,
            log,
            versions: BTreeMap::new(),
            cuda: false,
        };
        let hello = refs
            .answer(Duration::from_secs(180))
            .with_context(|| format!("--python {}", python.display()))?;
        if let Some(v) = hello["versions"].as_object() {
            refs.versions = v
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("?").to_string()))
                .collect();
        }
        refs.cuda = hello["cuda"].as_bool().unwrap_or(false);
        Ok(refs)
    }

    /// Whether `module` (onnxruntime, torch, ultralytics, safetensors) was importable.
    pub fn has(&self, module: &str) -> bool {
        self.versions.contains_key(module)
    }

    /// Sends one request and waits up to `timeout` for its answer; the worker's error comes
    /// back as an error (the worker goes on).
    pub fn request(&mut self, req: Value, timeout: Duration) -> anyhow::Result<Value> {
        let op = req["op"].as_str().unwrap_or("?").to_string();
        writeln!(self.stdin, "{req}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| self.died(&e.to_string()))?;
        let ans = self.answer(timeout)?;
        if ans["ok"].as_bool() == Some(true) {
            Ok(ans)
        } else {
            bail!(
                "reference worker, {op}: {}",
                ans["error"].as_str().unwrap_or("no error message")
            )
        }
    }

    /// Times of `iters` runs (ms) of the prepared `runtime` for `key` after `warmup` runs.
    /// Fewer runs (at least 3) when they would take more than [`BUDGET_S`].
    pub fn time(
        &mut self,
        key: &str,
        runtime: &str,
        warmup: usize,
        iters: usize,
    ) -> anyhow::Result<Vec<f64>> {
        let ans = self.request(
            json!({"op": "time", "key": key, "runtime": runtime, "warmup": warmup, "iters": iters, "budget_s": BUDGET_S}),
            Duration::from_secs(600),
        )?;
        times(&ans)
    }

    fn answer(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line)
                .with_context(|| format!("reference worker sent {line:?}")),
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                Err(self.died(&format!(
                    "no answer within {} s (stopped)",
                    timeout.as_secs()
                )))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.died("exited")),
        }
    }

    fn died(&self, what: &str) -> anyhow::Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow!(
            "reference worker {what}; the end of {}:\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

/// The `times_ms` list of an answer.
pub fn times(ans: &Value) -> anyhow::Result<Vec<f64>> {
    ans["times_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .ok_or_else(|| anyhow!("reference worker: answer without times_ms: {ans}"))
}

impl Drop for Refs {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A real Prometheus (Debian's `prometheus`) scrapes a running `yolo-infer serve` and a real
//! Pushgateway (`prometheus-pushgateway`) that a `yolo-train --pushgateway` run pushed to; its
//! HTTP API then finds the requests made and the epoch trained, and every metric that
//! deploy/prometheusrule.yaml and the Grafana dashboard query.
//!
//! Skipped (with a line saying so) where the two programs are not installed, unless
//! `YOLO_RS_REQUIRE_PROMETHEUS=1` (CI) makes that a failure.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use yolo_core::data::shapes::{generate, ShapesConfig};
use yolo_infer::serve::{self, ServeConfig};

mod common;
use common::weights;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn wait_http(url: &str) {
    let t0 = Instant::now();
    while ureq::get(url).call().is_err() {
        assert!(t0.elapsed() < Duration::from_secs(60), "{url} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The samples of an instant query.
fn query(prom: &str, q: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = ureq::get(&format!("{prom}/api/v1/query"))
        .query("query", q)
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

/// Metric names an expression uses (`yolo_…` and kube-state-metrics' `kube_…` are told apart by
/// the caller), without the histogram suffixes.
fn metric_names(text: &str, out: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("yolo_") {
        let start = i + pos;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(n) = name.strip_suffix(suffix) {
                    name = n;
                }
            }
            out.insert(name.to_string());
        }
        i = end;
    }
}

#[test]
fn prometheus_scrapes_serve_and_the_pushgateway() {
    let (Some(prometheus), Some(pushgateway)) = (which("prometheus"), which("prometheus-pushgateway"))
    else {
        assert!(
            !std::env::var("YOLO_RS_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1"),
            "YOLO_RS_REQUIRE_PROMETHEUS=1 but prometheus or prometheus-pushgateway is not on PATH"
        );
        println!("skipped: prometheus and prometheus-pushgateway are not installed (Debian packages)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();

    // The service, with a few requests: three detections and one bad request.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = ServeConfig::new(weights(), "127.0.0.1:0".parse().unwrap());
    cfg.imgsz = 160;
    let started = rt.block_on(serve::start(cfg)).unwrap();
    let serve_addr = started.addr;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        rt.block_on(started.serve(async {
            let _ = stopped.await;
        }))
    });
    let base = format!("http://{serve_addr}");
    wait_http(&format!("{base}/healthz"));
    let shapes = generate(
        &ShapesConfig {
            train: 8,
            val: 4,
            imgsz: 64,
            seed: 2,
            clutter: 0,
        },
        &tmp.path().join("shapes"),
    )
    .unwrap();
    let image = std::fs::read(tmp.path().join("shapes/images/val/000000.png")).unwrap();
    let t0 = Instant::now();
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        ureq::post(&format!("{base}/v1/detect")).send_bytes(&image).unwrap();
    }
    assert!(ureq::post(&format!("{base}/v1/detect")).send_bytes(b"not an image").is_err());

    // The Pushgateway and a training run that pushes to it.
    let gw_addr = format!("127.0.0.1:{}", free_port());
    let _gw = Kill(
        Command::new(&pushgateway)
            .arg(format!("--web.listen-address={gw_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_http(&format!("http://{gw_addr}/-/ready"));
    let train = PathBuf::from(env!("CARGO_BIN_EXE_yolo-infer")).with_file_name("yolo-train");
    assert!(train.exists(), "{} missing: cargo test --workspace builds it", train.display());
    let out = Command::new(&train)
        .arg("--data")
        .arg(&shapes.data_yaml)
        .args(["--epochs", "1", "--imgsz", "64", "--batch", "4", "--nbs", "4", "--quiet"])
        .args(["--width-multiple", "0.0625", "--depth-multiple", "0.33", "--name", "live"])
        .arg("--project")
        .arg(tmp.path().join("runs"))
        .arg("--pushgateway")
        .arg(format!("http://{gw_addr}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning: pushing"));

    // Prometheus scraping both every second.
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: yolo-infer\n    static_configs:\n      - targets: ['{serve_addr}']\n  - job_name: pushgateway\n    honor_labels: true\n    static_configs:\n      - targets: ['{gw_addr}']\n"
        ),
    )
    .unwrap();
    let _prom = Kill(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://{prom_addr}");
    wait_http(&format!("{prom}/-/ready"));
    let t0 = Instant::now();
    let (served, epoch) = loop {
        let served = query(&prom, r#"yolo_http_requests_total{job="yolo-infer",route="/v1/detect",status="200"}"#);
        let epoch = query(&prom, r#"yolo_train_epoch{job="yolo-train",run="live"}"#);
        if !served.is_empty() && !epoch.is_empty() {
            break (served, epoch);
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "Prometheus found nothing in 60 s");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(value(&served[0]), 3.0, "the three detections made");
    assert_eq!(value(&epoch[0]), 1.0, "the epoch trained");
    let bad = query(&prom, r#"yolo_http_requests_total{route="/v1/detect",status="400"}"#);
    assert_eq!(bad.iter().map(value).sum::<f64>(), 1.0);

    // Every yolo_* metric the alert rules and the dashboard query is in Prometheus.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names = BTreeSet::new();
    metric_names(&std::fs::read_to_string(root.join("deploy/prometheusrule.yaml")).unwrap(), &mut names);
    for e in std::fs::read_dir(root.join("deploy/grafana")).unwrap() {
        metric_names(&std::fs::read_to_string(e.unwrap().path()).unwrap(), &mut names);
    }
    assert!(names.len() >= 12, "{names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| query(&prom, &format!(r#"count({{__name__=~"{n}(_bucket|_sum|_count)?"}})"#)).is_empty())
        .collect();
    assert!(missing.is_empty(), "queried by deploy/ but not exposed: {missing:?}");

    let _ = stop.send(());
    server.join().unwrap().unwrap();
}

//! `yolo-infer serve` over loopback with a real HTTP client: detections equal `predict`'s,
//! health, readiness and metrics, batching of concurrent requests, every kind of bad input
//! answered with a JSON 4xx while the service keeps serving, 429 on a full queue, the OpenAPI
//! file against the real routes, and SIGTERM draining a request in flight.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};
use yolo_core::data::shapes::{generate, ShapesConfig};
use yolo_infer::serve::{self, ServeConfig, ROUTES};

mod common;
use common::{bmp_header, weights};

/// Starts a server on a free port in a background runtime; the returned sender stops it.
fn start(cfg: impl FnOnce(&mut ServeConfig)) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut c = ServeConfig::new(weights(), "127.0.0.1:0".parse().unwrap());
    c.imgsz = 160;
    cfg(&mut c);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = rt.block_on(serve::start(c)).unwrap();
    let base = format!("http://{}", started.addr);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        rt.block_on(started.serve(async {
            let _ = rx.await;
        }))
        .unwrap()
    });
    wait_ready(&base);
    (base, tx)
}

fn wait_ready(base: &str) {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = ureq::get(&format!("{base}/readyz")).call() {
            if r.status() == 200 {
                return;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "not ready within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status, body as JSON (or `Null`) and the Retry-After header of any response.
fn call(r: Result<ureq::Response, ureq::Error>) -> (u16, serde_json::Value, Option<String>) {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let retry = resp.header("retry-after").map(str::to_string);
    let text = resp.into_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null), retry)
}

fn post(base: &str, query: &str, ctype: Option<&str>, body: &[u8]) -> (u16, serde_json::Value) {
    let mut req = ureq::post(&format!("{base}/v1/detect{query}"));
    if let Some(c) = ctype {
        req = req.set("Content-Type", c);
    }
    let (s, v, _) = call(req.send_bytes(body));
    (s, v)
}

/// A request over a raw connection whose response is read while the body is still being
/// written: a server that refuses a body over its limit answers before reading it all, and
/// closes the connection under a writing client (which plain clients report as a broken pipe).
fn raw_post(base: &str, ctype: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    use std::io::Write;
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let head = format!(
        "POST /v1/detect HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let w = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = w.join();
    let text = String::from_utf8_lossy(&got);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

fn multipart(field: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "yolo-rs-test-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `name{labels} value` rows of the Prometheus text format.
fn metrics(base: &str) -> HashMap<String, f64> {
    let text = ureq::get(&format!("{base}/metrics")).call().unwrap().into_string().unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            (k.to_string(), v.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {l}")))
        })
        .collect()
}

fn detect_count(m: &HashMap<String, f64>, status: u16) -> f64 {
    m.get(&format!(
        "yolo_http_requests_total{{method=\"POST\",route=\"/v1/detect\",status=\"{status}\"}}"
    ))
    .copied()
    .unwrap_or(0.0)
}

fn shapes_image(dir: &Path) -> PathBuf {
    let cfg = ShapesConfig {
        train: 1,
        val: 2,
        imgsz: 160,
        seed: 0,
        clutter: 0,
    };
    generate(&cfg, dir).unwrap();
    dir.join("images/val/000000.png")
}

#[test]
fn detections_health_metrics_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let img_path = shapes_image(&tmp.path().join("shapes"));
    let bytes = std::fs::read(&img_path).unwrap();
    let (base, stop) = start(|c| {
        c.max_body_bytes = 1 << 20;
        c.max_wait = Duration::from_millis(50);
        c.max_batch = 16;
    });

    // Same detections as `predict` on the same file (letterbox, batch of one, NMS).
    let out = Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .args(["predict", "--imgsz", "160", "--weights"])
        .arg(weights())
        .arg("--source")
        .arg(&img_path)
        .arg("--project")
        .arg(tmp.path().join("runs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let predicted: serde_json::Value =
        serde_json::from_slice(String::from_utf8_lossy(&out.stdout).lines().next().unwrap().as_bytes())
            .unwrap();
    let (s, raw) = post(&base, "", Some("image/png"), &bytes);
    assert_eq!(s, 200, "{raw}");
    assert_eq!(raw["detections"], predicted["detections"]);
    assert!(!raw["detections"].as_array().unwrap().is_empty());
    assert_eq!((raw["width"].clone(), raw["height"].clone()), (predicted["width"].clone(), predicted["height"].clone()));
    // No content type and multipart give the same answer.
    assert_eq!(post(&base, "", None, &bytes).1, raw);
    let (ctype, body) = multipart("image", &bytes);
    assert_eq!(post(&base, "", Some(&ctype), &body).1, raw);
    // Query overrides.
    let (s, strict) = post(&base, "?conf=0.99", Some("image/png"), &bytes);
    assert_eq!(s, 200);
    assert!(strict["detections"].as_array().unwrap().is_empty());
    let (_, only1) = post(&base, "?classes=1&conf=0.01", Some("image/png"), &bytes);
    assert!(only1["detections"].as_array().unwrap().iter().all(|d| d["class_id"] == 1));

    // Bad input: a JSON 4xx each, and the service keeps serving.
    let mut truncated = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut truncated)
        .encode_image(&RgbImage::from_pixel(64, 48, Rgb([9, 99, 199])))
        .unwrap();
    truncated.truncate(truncated.len() / 2);
    let huge_body = vec![7u8; 3 << 19];
    let (huge_mp_type, huge_mp) = multipart("image", &huge_body);
    let cases: Vec<(&str, &str, Option<&str>, Vec<u8>, u16)> = vec![
        ("not an image", "", Some("image/png"), b"hello, world".to_vec(), 400),
        ("truncated JPEG", "", Some("image/jpeg"), truncated, 400),
        ("empty body", "", Some("image/png"), Vec::new(), 400),
        ("50000x50000 header", "", Some("image/bmp"), bmp_header(50_000, 50_000), 413),
        ("wrong content type", "", Some("text/plain"), bytes.clone(), 415),
        ("multipart without parts", "", Some("multipart/form-data; boundary=x"), b"--x--\r\n".to_vec(), 400),
        ("conf out of range", "?conf=2", Some("image/png"), bytes.clone(), 400),
        ("iou not a number", "?iou=abc", Some("image/png"), bytes.clone(), 400),
        ("class out of range", "?classes=9", Some("image/png"), bytes.clone(), 400),
        ("max_det zero", "?max_det=0", Some("image/png"), bytes.clone(), 400),
        ("unknown parameter", "?confidence=0.5", Some("image/png"), bytes.clone(), 400),
        ("malformed query", "?conf=%ZZ%", Some("image/png"), bytes.clone(), 400),
    ];
    let mut bad = 0;
    for (what, q, ctype, body, want) in &cases {
        let (s, v) = post(&base, q, *ctype, body);
        assert_eq!(s, *want, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: JSON error body, got {v}");
        bad += 1;
        let (s, again) = post(&base, "", Some("image/png"), &bytes);
        assert_eq!((s, &again), (200, &raw), "served after {what}");
    }
    for (what, ctype, body) in [
        ("body over the limit", "image/png", huge_body),
        ("huge multipart", huge_mp_type.as_str(), huge_mp),
    ] {
        let (s, v) = raw_post(&base, ctype, body);
        assert_eq!(s, 413, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: JSON error body, got {v}");
        bad += 1;
        let (s, again) = post(&base, "", Some("image/png"), &bytes);
        assert_eq!((s, &again), (200, &raw), "served after {what}");
    }
    let (s, v, _) = call(ureq::get(&format!("{base}/nope")).call());
    assert_eq!(s, 404);
    assert!(v["error"].is_string());

    // Health and readiness.
    assert_eq!(call(ureq::get(&format!("{base}/healthz")).call()).0, 200);
    assert_eq!(call(ureq::get(&format!("{base}/readyz")).call()).0, 200);

    // 16 concurrent requests run in fewer forward passes than requests.
    let before = metrics(&base);
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (base, bytes) = (base.clone(), bytes.clone());
            std::thread::spawn(move || post(&base, "", Some("image/png"), &bytes))
        })
        .collect();
    for h in handles {
        let (s, v) = h.join().unwrap();
        assert_eq!((s, &v), (200, &raw), "a batched request gets the single-image answer");
    }
    let after = metrics(&base);
    let passes = after["yolo_inference_batches_total"] - before["yolo_inference_batches_total"];
    assert!(passes < 16.0, "16 requests took {passes} forward passes");
    assert!(after["yolo_batch_size_count"] >= 17.0);

    // The metrics count what was asked: 200s and each 4xx.
    let ok = 1 + 1 + 1 + 2 + cases.len() + 2 + 16;
    assert_eq!(detect_count(&after, 200), ok as f64, "{after:?}");
    let client_errors: f64 = [400, 413, 415].iter().map(|s| detect_count(&after, *s)).sum();
    assert_eq!(client_errors, bad as f64);
    assert!(after.keys().any(|k| k.starts_with("yolo_model_info{") && k.contains("classes=\"3\"") && k.contains("precision=\"f32\"")));
    assert!(after.contains_key("yolo_http_requests_in_flight"));
    assert!(after.contains_key("yolo_queue_depth"));
    assert!(after.keys().any(|k| k.starts_with("yolo_http_request_duration_seconds_bucket{")));
    let _ = stop.send(());
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(shapes_image(&tmp.path().join("shapes"))).unwrap();
    let (base, stop) = start(|c| {
        c.queue = 1;
        c.max_batch = 1;
        c.max_wait = Duration::ZERO;
        c.imgsz = 640;
    });
    let handles: Vec<_> = (0..24)
        .map(|_| {
            let (base, bytes) = (base.clone(), bytes.clone());
            std::thread::spawn(move || {
                call(ureq::post(&format!("{base}/v1/detect")).send_bytes(&bytes))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let rejected: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(!rejected.is_empty(), "24 requests at once on a queue of 1");
    assert!(rejected.iter().all(|r| r.2.as_deref() == Some("1") && r.1["error"].is_string()));
    assert!(results.iter().all(|r| r.0 == 200 || r.0 == 429));
    assert!(results.iter().any(|r| r.0 == 200));
    let m = metrics(&base);
    assert_eq!(m["yolo_queue_rejected_total"], rejected.len() as f64);
    // Served again once the burst is over.
    assert_eq!(call(ureq::post(&format!("{base}/v1/detect")).send_bytes(&bytes)).0, 200);
    let _ = stop.send(());
}

#[test]
fn openapi_documents_exactly_the_routes() {
    let spec: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml"))
            .unwrap(),
    )
    .unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in spec["paths"].as_mapping().unwrap() {
        for (method, _) in ops.as_mapping().unwrap() {
            documented.push((method.as_str().unwrap().into(), path.as_str().unwrap().into()));
        }
    }
    let mut real: Vec<(String, String)> =
        ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    real.sort();
    assert_eq!(documented, real);
    // And each documented route answers on a live server (not 404/405).
    let (base, stop) = start(|_| {});
    for (method, path) in &documented {
        let url = format!("{base}{path}");
        let (s, _, _) = call(match method.as_str() {
            "get" => ureq::get(&url).call(),
            "post" => ureq::post(&url).send_bytes(b""),
            other => panic!("method {other}"),
        });
        assert!(s != 404 && s != 405, "{method} {path}: {s}");
    }
    let _ = stop.send(());
}

#[test]
fn sigterm_drains_the_request_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(shapes_image(&tmp.path().join("shapes"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .args(["serve", "--addr", "127.0.0.1:0", "--imgsz", "1280", "--max-batch", "1"])
        .args(["--log-format", "json"])
        .arg("--weights")
        .arg(weights())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr: Option<SocketAddr> = None;
    let mut line = String::new();
    while addr.is_none() {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited before listening");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
        if v["fields"]["message"] == "listening" {
            addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
        }
    }
    let base = format!("http://{}", addr.unwrap());
    wait_ready(&base);
    // Eight requests queue behind one another (batches of one at 1280 px).
    let reqs: Vec<_> = (0..8)
        .map(|_| {
            let (base, bytes) = (base.clone(), bytes.clone());
            std::thread::spawn(move || {
                call(ureq::post(&format!("{base}/v1/detect")).send_bytes(&bytes))
            })
        })
        .collect();
    // Once all eight are in flight (this scrape is one more), ask the server to stop.
    let t0 = Instant::now();
    while metrics(&base)["yolo_http_requests_in_flight"] < 9.0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "requests never in flight");
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    for r in reqs {
        let (s, v, _) = r.join().unwrap();
        assert_eq!(s, 200, "every request in flight is answered: {v}");
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("draining"), "{rest}");
}

/// A port already taken: the error names the address.
#[test]
fn busy_port_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut c = ServeConfig::new(weights(), addr);
    c.imgsz = 160;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = match rt.block_on(serve::start(c)) {
        Ok(_) => panic!("served on a taken port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

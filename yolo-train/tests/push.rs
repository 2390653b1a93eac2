//! `yolo-train --pushgateway`: each epoch replaces the run's group on the gateway (HTTP PUT of
//! the text format), checked with a loopback server that records the requests; an unreachable
//! gateway is a warning and training finishes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use yolo_core::data::shapes::{generate, ShapesConfig};

fn tiny_data(dir: &Path) -> std::path::PathBuf {
    let cfg = ShapesConfig {
        train: 8,
        val: 4,
        imgsz: 64,
        seed: 1,
        clutter: 0,
    };
    generate(&cfg, dir).unwrap().data_yaml
}

fn train(data: &Path, project: &Path, gateway: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_yolo-train"))
        .arg("--data")
        .arg(data)
        .args(["--epochs", "2", "--imgsz", "64", "--batch", "4", "--nbs", "4"])
        .args(["--width-multiple", "0.0625", "--depth-multiple", "0.33", "--quiet"])
        .arg("--project")
        .arg(project)
        .args(["--name", "push run", "--pushgateway", gateway])
        .output()
        .unwrap()
}

/// Reads one HTTP request: (request line, body).
fn read_request(stream: &mut std::net::TcpStream) -> (String, String) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    (line.trim_end().to_string(), String::from_utf8(body).unwrap())
}

#[test]
fn every_epoch_is_pushed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(&tmp.path().join("shapes"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let req = read_request(&mut stream);
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            tx.send(req).unwrap();
        }
    });
    let out = train(&data, &tmp.path().join("runs"), &format!("http://{addr}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning: pushing"), "{stderr}");
    let pushes: Vec<(String, String)> = rx.try_iter().collect();
    assert_eq!(pushes.len(), 2, "one push per epoch");
    for (i, (line, body)) in pushes.iter().enumerate() {
        assert_eq!(line, "PUT /metrics/job/yolo-train/run/push_run HTTP/1.1");
        let value = |name: &str| -> f64 {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing in\n{body}"))
                .parse()
                .unwrap()
        };
        assert_eq!(value("yolo_train_epoch"), (i + 1) as f64);
        assert_eq!(value("yolo_train_epochs"), 2.0);
        assert!(value("yolo_train_images_per_second") > 0.0);
        assert!(value("yolo_train_loss{kind=\"box\"}").is_finite());
        assert!((0.0..=1.0).contains(&value("yolo_train_map50")));
    }
}

#[test]
fn an_unreachable_gateway_does_not_stop_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_data(&tmp.path().join("shapes"));
    // A port nothing listens on: bind, read the port, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = train(&data, &tmp.path().join("runs"), &format!("http://127.0.0.1:{port}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("warning: pushing to").count(), 2, "{stderr}");
    assert!(tmp.path().join("runs/push run/weights/last.safetensors").is_file());
    // A URL the client cannot use is a usage error before training starts.
    let bad = train(&data, &tmp.path().join("runs2"), "https://gateway:9091");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("https is not supported"));
    assert!(!tmp.path().join("runs2").exists());
}

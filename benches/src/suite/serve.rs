//! Load on `yolo-infer serve`: the binary started on a free loopback port with a checkpoint,
//! driven by client threads that each POST an image on one keep-alive connection, one request
//! after another.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct ServeLoad {
    /// Latency of every 200 answer in the measured window, ms.
    pub latencies_ms: Vec<f64>,
    /// 200 answers per second of each whole second of the measured window.
    pub rps_per_second: Vec<f64>,
    /// 200 answers in the window divided by its length.
    pub rps: f64,
    pub ok: usize,
    pub non_2xx: usize,
    /// Connection or protocol errors.
    pub errors: usize,
    pub window_s: f64,
    /// The server's peak RSS (VmHWM) at the end, KiB.
    pub server_peak_rss_kib: Option<u64>,
    /// Mean images per forward over the whole run (its `yolo_batch_size` histogram).
    pub mean_batch: Option<f64>,
}

/// Settings of a load run.
pub struct LoadConfig<'a> {
    pub infer: &'a Path,
    pub weights: &'a Path,
    pub imgsz: usize,
    pub body: &'a [u8],
    pub content_type: &'a str,
    pub connections: usize,
    /// Requests in this first stretch are not counted (batches of every size warm up).
    pub warmup: Duration,
    pub window: Duration,
    /// The server's stderr goes here.
    pub log: &'a Path,
}

/// Starts the server, waits until it is ready, runs the load, stops it with SIGTERM.
pub fn run(cfg: &LoadConfig) -> anyhow::Result<ServeLoad> {
    let mut server = Server::start(cfg.infer, cfg.weights, cfg.imgsz, cfg.log)?;
    let res = load(&server, cfg);
    server.stop();
    res
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(infer: &Path, weights: &Path, imgsz: usize, log: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(infer)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--imgsz",
                &imgsz.to_string(),
            ])
            .arg("--weights")
            .arg(weights)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{}: cannot start", infer.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut file = std::fs::File::create(log)
            .with_context(|| format!("{}: cannot create", log.display()))?;
        let (tx, rx) = channel();
        // Every log line goes to the file; the "listening" line's address to us.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["fields"]["message"] == "listening" {
                        if let Some(a) = v["fields"]["addr"]
                            .as_str()
                            .and_then(|a| a.parse::<SocketAddr>().ok())
                        {
                            let _ = tx.send(a);
                        }
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} serve did not report its address (log: {})",
                    infer.display(),
                    log.display()
                );
            }
        };
        let server = Self { child, addr };
        let t = Instant::now();
        loop {
            if let Ok((200, _)) =
                Conn::open(addr).and_then(|mut c| c.request("GET", "/readyz", "", &[]))
            {
                return Ok(server);
            }
            if t.elapsed() > Duration::from_secs(180) {
                let mut s = server;
                s.stop();
                bail!(
                    "{} serve was not ready within 180 s (log: {})",
                    infer.display(),
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        // SAFETY: sends a signal to our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load(server: &Server, cfg: &LoadConfig) -> anyhow::Result<ServeLoad> {
    let start = Instant::now();
    let end = cfg.warmup + cfg.window;
    let results: Vec<Vec<(Duration, f64, u16)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.connections)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    let mut conn: Option<Conn> = None;
                    while start.elapsed() < end {
                        let t = Instant::now();
                        let c = match conn.take().map_or_else(|| Conn::open(server.addr), Ok) {
                            Ok(c) => c,
                            Err(_) => {
                                out.push((start.elapsed(), 0.0, 0));
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        };
                        let mut c = c;
                        match c.request("POST", "/v1/detect", cfg.content_type, cfg.body) {
                            Ok((status, _)) => {
                                out.push((
                                    start.elapsed(),
                                    t.elapsed().as_secs_f64() * 1e3,
                                    status,
                                ));
                                if !c.closed {
                                    conn = Some(c);
                                }
                            }
                            Err(_) => out.push((start.elapsed(), 0.0, 0)),
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let in_window = |t: &Duration| *t >= cfg.warmup && *t < end;
    let all: Vec<&(Duration, f64, u16)> = results
        .iter()
        .flatten()
        .filter(|r| in_window(&r.0))
        .collect();
    let ok: Vec<&&(Duration, f64, u16)> = all.iter().filter(|r| r.2 == 200).collect();
    let seconds = cfg.window.as_secs().max(1) as usize;
    let mut per_second = vec![0f64; seconds];
    for r in &ok {
        let k = ((r.0 - cfg.warmup).as_secs_f64()) as usize;
        if k < seconds {
            per_second[k] += 1.0;
        }
    }
    let window_s = cfg.window.as_secs_f64();
    let metrics = Conn::open(server.addr)
        .and_then(|mut c| c.request("GET", "/metrics", "", &[]))
        .ok();
    let mean_batch = metrics.and_then(|(_, body)| {
        let text = String::from_utf8_lossy(&body);
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        Some(value("yolo_batch_size_sum")? / value("yolo_batch_size_count")?.max(1.0))
    });
    Ok(ServeLoad {
        latencies_ms: ok.iter().map(|r| r.1).collect(),
        rps_per_second: if cfg.window.as_secs() >= 1 {
            per_second
        } else {
            Vec::new()
        },
        rps: ok.len() as f64 / window_s,
        ok: ok.len(),
        non_2xx: all.iter().filter(|r| r.2 != 200 && r.2 != 0).count(),
        errors: all.iter().filter(|r| r.2 == 0).count(),
        window_s,
        server_peak_rss_kib: super::machine::peak_rss_kib(Some(server.child.id())),
        mean_batch,
    })
}

/// One HTTP/1.1 keep-alive connection: just what this load needs (Content-Length or chunked
/// answers).
struct Conn {
    stream: BufReader<TcpStream>,
    /// The server said `Connection: close`.
    closed: bool,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Self {
            stream: BufReader::new(s),
            closed: false,
        })
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n");
        if method == "POST" {
            head += &format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        head += "\r\n";
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        s.flush()?;
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            return Err(bad("connection closed".into()));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                return Err(bad("connection closed in the headers".into()));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => self.closed = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                let mut chunk = vec![0; n + 2];
                self.stream.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.stream.read_exact(&mut body)?;
        } else {
            self.stream.read_to_end(&mut body)?;
            self.closed = true;
        }
        Ok((status, body))
    }
}

/// The address of the first `listening` line of a JSON log, for tests of the parsing.
pub fn listening_addr(line: &str) -> anyhow::Result<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line)?;
    v["fields"]["addr"]
        .as_str()
        .ok_or_else(|| anyhow!("no fields.addr"))?
        .parse()
        .map_err(Into::into)
}

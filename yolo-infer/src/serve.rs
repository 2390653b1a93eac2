//! `yolo-infer serve`: an HTTP detection service (axum on tokio) with micro-batching behind a
//! bounded queue, Prometheus metrics, health and readiness, and graceful shutdown.
//!
//! Requests decode their image on tokio's blocking pool (the header's pixel count is checked
//! first), then enter a bounded queue; one inference thread takes up to `max_batch` queued
//! images, waiting at most `max_wait` for more after the first, and runs them in one forward
//! pass. A full queue answers 429 with `Retry-After` at once: memory stays bounded by
//! `queue` decoded images plus the requests being decoded. Bad input of any kind is a 4xx with
//! a JSON body `{"error": "..."}` and never stops the service. The API is in
//! `yolo-infer/openapi.yaml`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use image::RgbImage;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::detector::{DetectOptions, Detection, Detector};

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub weights: PathBuf,
    pub addr: SocketAddr,
    pub imgsz: u32,
    /// Images per forward pass at most.
    pub max_batch: usize,
    /// How long the inference thread waits for more images after the first of a batch.
    pub max_wait: Duration,
    /// Decoded images waiting for the inference thread at most; beyond, 429.
    pub queue: usize,
    /// Request bodies above this are refused (413).
    pub max_body_bytes: usize,
    /// Images whose header claims more pixels are refused before decoding (413).
    pub max_pixels: u64,
    /// A request not answered within this gets 503.
    pub timeout: Duration,
    /// NMS defaults; requests override `conf`, `iou`, `classes`, `max_det`, `agnostic`.
    pub defaults: DetectOptions,
    /// Backend (`--device`: cuda, wgpu, flex); `None`: `BURN_DEVICE`, else the machine's best.
    pub device: Option<String>,
    /// Half precision on a GPU backend ([`yolo_core::amp::use_half`]).
    pub half: bool,
}

impl ServeConfig {
    /// Defaults for `weights` on `addr`: 640 px, batches of up to 8 gathered for 5 ms, a
    /// queue of 32, 16 MiB bodies, 16.7 MP (4096 x 4096) images, 30 s timeout.
    pub fn new(weights: PathBuf, addr: SocketAddr) -> Self {
        Self {
            weights,
            addr,
            imgsz: 640,
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            queue: 32,
            max_body_bytes: 16 << 20,
            max_pixels: 4096 * 4096,
            timeout: Duration::from_secs(30),
            defaults: DetectOptions::default(),
            device: None,
            half: false,
        }
    }
}

/// The service's Prometheus metrics (all in one registry, served at `/metrics`).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `yolo_http_requests_total{route, method, status}`.
    pub requests: IntCounterVec,
    /// `yolo_http_request_duration_seconds{route}`.
    pub latency: HistogramVec,
    /// `yolo_http_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `yolo_queue_depth`: decoded images waiting for the inference thread.
    pub queue_depth: IntGauge,
    /// `yolo_batch_size`: images per forward pass.
    pub batch_size: Histogram,
    /// `yolo_inference_batches_total`: forward passes.
    pub batches: IntCounter,
    /// `yolo_inference_duration_seconds`: one batch's preprocess + forward + NMS.
    pub inference: Histogram,
    /// `yolo_detections_total`: detections returned.
    pub detections: IntCounter,
    /// `yolo_queue_rejected_total`: requests refused with 429.
    pub rejected: IntCounter,
    /// `yolo_model_info{weights, classes, imgsz, backend, precision, version}` = 1.
    pub model_info: IntGaugeVec,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new(max_batch: usize) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("yolo_http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("yolo_http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            &["route"],
        )
        .expect("valid metric");
        let in_flight =
            IntGauge::new("yolo_http_requests_in_flight", "HTTP requests being served")
                .expect("valid metric");
        let queue_depth = IntGauge::new(
            "yolo_queue_depth",
            "Decoded images waiting for the inference thread",
        )
        .expect("valid metric");
        let buckets: Vec<f64> = (1..=max_batch.max(1)).map(|b| b as f64).collect();
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("yolo_batch_size", "Images per forward pass").buckets(buckets),
        )
        .expect("valid metric");
        let batches = IntCounter::new("yolo_inference_batches_total", "Forward passes run")
            .expect("valid metric");
        let inference = Histogram::with_opts(
            HistogramOpts::new(
                "yolo_inference_duration_seconds",
                "Preprocess, forward pass and NMS of one batch",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .expect("valid metric");
        let detections = IntCounter::new("yolo_detections_total", "Detections returned")
            .expect("valid metric");
        let rejected = IntCounter::new(
            "yolo_queue_rejected_total",
            "Requests refused with 429 because the queue was full",
        )
        .expect("valid metric");
        let model_info = IntGaugeVec::new(
            Opts::new("yolo_model_info", "The served model (value 1)"),
            &["weights", "classes", "imgsz", "backend", "precision", "version"],
        )
        .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(in_flight.clone()),
            Box::new(queue_depth.clone()),
            Box::new(batch_size.clone()),
            Box::new(batches.clone()),
            Box::new(inference.clone()),
            Box::new(detections.clone()),
            Box::new(rejected.clone()),
            Box::new(model_info.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            latency,
            in_flight,
            queue_depth,
            batch_size,
            batches,
            inference,
            detections,
            rejected,
            model_info,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

struct Job {
    image: RgbImage,
    opts: DetectOptions,
    reply: oneshot::Sender<Result<Vec<Detection>, String>>,
}

/// Shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    tx: SyncSender<Job>,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    nc: usize,
    cfg: Arc<ServeConfig>,
}

/// A JSON error response.
struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// The body of a successful `POST /v1/detect`.
#[derive(Debug, Serialize)]
pub struct DetectResponse {
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
}

/// Applies the query string (`conf`, `iou`, `max_det`, `agnostic`, `classes=0,2`) to the
/// defaults; unknown keys and values out of range are errors naming the key.
pub fn parse_query(
    q: &HashMap<String, String>,
    defaults: &DetectOptions,
    nc: usize,
) -> Result<DetectOptions, String> {
    let mut o = defaults.clone();
    for (k, v) in q {
        let num = |what: &str| format!("query `{k}`: `{v}` is not {what}");
        match k.as_str() {
            "conf" => o.conf = v.parse().map_err(|_| num("a number"))?,
            "iou" => o.iou = v.parse().map_err(|_| num("a number"))?,
            "max_det" => o.max_det = v.parse().map_err(|_| num("a positive integer"))?,
            "agnostic" => {
                o.agnostic = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(num("true or false")),
                }
            }
            "classes" => {
                o.classes = Some(
                    v.split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| s.trim().parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| num("a comma-separated list of class ids"))?,
                )
            }
            other => {
                return Err(format!(
                    "unknown query parameter `{other}` (conf, iou, max_det, agnostic, classes)"
                ))
            }
        }
    }
    o.validate(nc).map_err(|e| e.to_string())?;
    Ok(o)
}

async fn image_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limit = state.cfg.max_body_bytes;
    let body_error = |status: StatusCode, text: String| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, format!("request body larger than {limit} bytes"))
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the body: {text}"))
        }
    };
    if ctype.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        let mut first = None;
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| body_error(e.status(), e.body_text()))?
        {
            let name = field.name().unwrap_or("").to_string();
            let data = field
                .bytes()
                .await
                .map_err(|e| body_error(e.status(), e.body_text()))?;
            if name == "image" {
                return Ok(data);
            }
            if first.is_none() {
                first = Some(data);
            }
        }
        return first.ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "multipart body has no `image` field")
        });
    }
    // The body is read before any other check answers, so that the client has finished
    // sending when the answer comes (a response before the body is read ends the connection
    // under a client still writing). Only a body over the limit is refused unread.
    let bytes = Bytes::from_request(req, state)
        .await
        .map_err(|e| body_error(e.status(), e.body_text()))?;
    if !(ctype.is_empty()
        || ctype.starts_with("image/")
        || ctype.starts_with("application/octet-stream"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type `{ctype}`: send the image as image/*, application/octet-stream or multipart/form-data"
            ),
        ));
    }
    Ok(bytes)
}

async fn detect(
    State(state): State<AppState>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    req: Request,
) -> Result<Json<DetectResponse>, ApiError> {
    let bytes = image_bytes(req, &state).await?;
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let opts = parse_query(&q, &state.cfg.defaults, state.nc)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    if bytes.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty body: send an image"));
    }
    let max_pixels = state.cfg.max_pixels;
    let image = tokio::task::spawn_blocking(move || {
        yolo_core::data::image::decode_rgb8_limited(
            &bytes,
            std::path::Path::new("request body"),
            max_pixels,
        )
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| match e {
        yolo_core::CoreError::ImageTooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        other => ApiError::new(StatusCode::BAD_REQUEST, other.to_string()),
    })?
    .image;
    let (width, height) = image.dimensions();
    let (reply, rx) = oneshot::channel();
    match state.tx.try_send(Job { image, opts, reply }) {
        Ok(()) => state.metrics.queue_depth.inc(),
        Err(TrySendError::Full(_)) => {
            state.metrics.rejected.inc();
            return Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!("queue full ({} images waiting); retry later", state.cfg.queue),
                retry_after: Some(1),
            });
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the inference thread has stopped",
            ))
        }
    }
    let detections = match tokio::time::timeout(state.cfg.timeout, rx).await {
        Ok(Ok(Ok(d))) => d,
        Ok(Ok(Err(m))) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)),
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the inference thread dropped the request",
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no answer within {:?}", state.cfg.timeout),
            ))
        }
    };
    state.metrics.detections.inc_by(detections.len() as u64);
    Ok(Json(DetectResponse {
        width,
        height,
        detections,
    }))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let m = &state.metrics;
    m.in_flight.inc();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    m.in_flight.dec();
    m.latency
        .with_label_values(&[&route])
        .observe(t0.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    let status = resp.status().as_u16();
    if status >= 500 {
        tracing::warn!(route, method, status, "request failed");
    } else {
        tracing::debug!(route, method, status, "request");
    }
    resp
}

/// Every route as (method, path); `openapi.yaml` documents exactly these (tested).
pub const ROUTES: [(&str, &str); 4] = [
    ("post", "/v1/detect"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// The routes, with the metrics middleware and the body limit.
pub fn router(state: AppState) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route(ROUTES[0].1, post(detect))
        .route(ROUTES[1].1, get(healthz))
        .route(ROUTES[2].1, get(readyz))
        .route(ROUTES[3].1, get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The inference thread: batches of up to `max_batch`, gathered for at most `max_wait` after
/// the first image; ends when every sender is gone.
fn inference_loop(det: Detector, rx: Receiver<Job>, cfg: Arc<ServeConfig>, metrics: Metrics) {
    while let Ok(first) = rx.recv() {
        metrics.queue_depth.dec();
        let mut jobs = vec![first];
        let deadline = Instant::now() + cfg.max_wait;
        while jobs.len() < cfg.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => {
                    metrics.queue_depth.dec();
                    jobs.push(j);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // A request that timed out or whose client left needs no forward pass.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let t0 = Instant::now();
        let images: Vec<&RgbImage> = jobs.iter().map(|j| &j.image).collect();
        let opts: Vec<&DetectOptions> = jobs.iter().map(|j| &j.opts).collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            det.detect_batch(&images, &opts)
        }))
        .unwrap_or_else(|_| {
            Err(crate::error::InferError::Options {
                field: "batch".into(),
                message: "the forward pass panicked".into(),
            })
        });
        metrics.inference.observe(t0.elapsed().as_secs_f64());
        metrics.batches.inc();
        metrics.batch_size.observe(jobs.len() as f64);
        match result {
            Ok((dets, _)) => {
                for (j, d) in jobs.into_iter().zip(dets) {
                    let _ = j.reply.send(Ok(d));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "batch failed");
                for j in jobs {
                    let _ = j.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// A started service: its address, its state (for tests and embedding) and the inference
/// thread.
pub struct Started {
    pub addr: SocketAddr,
    pub state: AppState,
    pub listener: tokio::net::TcpListener,
    worker: std::thread::JoinHandle<()>,
}

/// Loads the model, runs one warm-up forward, binds the address and starts the inference
/// thread. Readiness (`/readyz`) turns on once the warm-up is done.
///
/// # Errors
/// Bad weights; an address that cannot be bound.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<Started> {
    let cfg = Arc::new(cfg);
    let selected = yolo_core::backend::select_device_flag(cfg.device.as_deref())?;
    tracing::info!("device: {selected}");
    let device = selected.device.clone();
    let mut det = Detector::load(&cfg.weights, cfg.imgsz, &device)?;
    if yolo_core::amp::use_half(cfg.half, &selected, |w| tracing::warn!("{w}")) {
        det = det.half();
    }
    cfg.defaults.validate(det.names().len())?;
    let metrics = Metrics::new(cfg.max_batch);
    metrics
        .model_info
        .with_label_values(&[
            &cfg.weights.display().to_string(),
            &det.names().len().to_string(),
            &det.imgsz().to_string(),
            &format!("{:?}", device),
            det.precision(),
            env!("CARGO_PKG_VERSION"),
        ])
        .set(1);
    let nc = det.names().len();
    let (tx, rx) = sync_channel::<Job>(cfg.queue.max(1));
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.addr))?;
    let addr = listener.local_addr()?;
    let worker = {
        let (cfg, metrics, ready) = (cfg.clone(), metrics.clone(), ready.clone());
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let s = det.imgsz();
                let warm = RgbImage::new(s, s);
                match det.detect(&warm, &DetectOptions::default()) {
                    Ok(_) => ready.store(true, Ordering::Release),
                    Err(e) => tracing::error!(error = %e, "warm-up forward failed"),
                }
                inference_loop(det, rx, cfg, metrics)
            })?
    };
    let state = AppState {
        tx,
        metrics,
        ready,
        nc,
        cfg,
    };
    Ok(Started {
        addr,
        state,
        listener,
        worker,
    })
}

impl Started {
    /// Serves until `shutdown` resolves, then stops taking connections, lets the requests in
    /// flight finish, and stops the inference thread.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = router(self.state.clone());
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        drop(self.state);
        let worker = self.worker;
        tokio::task::spawn_blocking(move || worker.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the inference thread panicked"))?;
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal: draining requests in flight");
}

//! A pass-through between the proxies and the scaler that notes when each report arrives and
//! whether it was an early (surge) report, so the sandbox can split its reaction time into
//! "load step -> first surge report" and "report -> scale PATCH". It forwards every request
//! unchanged and answers with the scaler's answer (502 when the scaler cannot be reached,
//! which the filter treats like any other failed report).
//!
//! It also writes every report to a log, one JSON line each once the scaler has answered it
//! (`{"at_s":..,"report":{..}}`, when it arrived, in seconds since the tap started), so that what the scaler decided can be traced back to what
//! the proxies said: their recent windows, intervals and in-flight counts.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::pods::Endpoints;

/// One report as it passed.
#[derive(Debug, Clone)]
pub struct ReportSeen {
    /// When it arrived.
    pub at: Instant,
    /// The sending pod (`proxy.pod`).
    pub pod: String,
    /// Whether the proxy sent it early because of a surge.
    pub surge: bool,
    /// Requests the proxy held for cold destinations when it sent the report (an activation
    /// report has some).
    pub held: u64,
    /// Status the scaler answered (502: unreachable).
    pub status: u16,
    /// When the answer went back to the proxy (the scaler may keep a holding report's
    /// answer until the destination turns warm).
    pub answered: Instant,
    /// How many destinations the answer listed cold (`None`: no `cold` list read).
    pub cold: Option<usize>,
}

struct TapState {
    /// The scaler's ready endpoints (one fixed address on the embedded API; the scaler
    /// Service's EndpointSlices on the real control plane).
    scaler: Endpoints,
    next: std::sync::atomic::AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
    seen: Mutex<Vec<ReportSeen>>,
    started: Instant,
    /// The report log; `None` once a write failed (logged once: the run goes on without it).
    log: Mutex<Option<std::fs::File>>,
}

impl TapState {
    fn log(&self, at: Instant, report: &Value) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let Some(file) = log.as_mut() else {
            return;
        };
        let line = serde_json::json!({
            "at_s": (at - self.started).as_secs_f64(),
            "report": report,
        });
        // One unbuffered write per line: a run cut short keeps what came before.
        if let Err(error) = file.write_all(format!("{line}\n").as_bytes()) {
            tracing::warn!(%error, "report log not written; going on without it");
            *log = None;
        }
    }
}

/// A running tap; dropping it stops it.
pub struct Tap {
    addr: SocketAddr,
    state: Arc<TapState>,
    task: JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(state): State<Arc<TapState>>, request: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let report: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let scaler = {
        let endpoints = state.scaler.read().unwrap_or_else(|e| e.into_inner());
        let next = state
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (!endpoints.is_empty()).then(|| endpoints[next % endpoints.len()].addr)
    };
    let Some(scaler) = scaler else {
        // What a proxy answers for a cluster with no ready endpoint.
        return note(
            &state,
            at,
            &report,
            status_only(StatusCode::SERVICE_UNAVAILABLE),
            None,
        );
    };
    let mut upstream = http::Request::builder()
        .method(parts.method.clone())
        .uri(format!(
            "http://{scaler}{}",
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        ));
    for (name, value) in &parts.headers {
        upstream = upstream.header(name, value);
    }
    let reply = match upstream.body(Full::new(body)) {
        Ok(req) => {
            match tokio::time::timeout(Duration::from_secs(5), state.client.request(req)).await {
                Ok(Ok(resp)) => {
                    let (parts, body) = resp.into_parts();
                    let bytes = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let cold = serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .filter(|answer| answer.is_object())
                        .map(|answer| {
                            answer
                                .get("cold")
                                .and_then(Value::as_array)
                                .map_or(0, Vec::len)
                        });
                    return note(
                        &state,
                        at,
                        &report,
                        Response::from_parts(parts, Body::from(bytes)),
                        cold,
                    );
                }
                _ => status_only(StatusCode::BAD_GATEWAY),
            }
        }
        Err(_) => status_only(StatusCode::BAD_REQUEST),
    };
    note(&state, at, &report, reply, None)
}

/// Notes a report and what it was answered.
fn note(
    state: &TapState,
    at: Instant,
    report: &Value,
    reply: Response,
    cold: Option<usize>,
) -> Response {
    // Logged once the scaler has answered, so the write never delays a report on its way.
    state.log(at, report);
    state
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ReportSeen {
            at,
            pod: report
                .pointer("/proxy/pod")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            surge: report
                .get("surge")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            held: report
                .get("held")
                .and_then(Value::as_array)
                .map_or(0, |held| {
                    held.iter()
                        .filter_map(|h| h.get("requests").and_then(Value::as_u64))
                        .sum()
                }),
            status: reply.status().as_u16(),
            answered: Instant::now(),
            cold,
        });
    reply
}

fn status_only(code: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}

impl Tap {
    /// Starts a tap on 127.0.0.1 forwarding to the ready `scaler` endpoints (round-robin),
    /// logging every report to `log` (created, or truncated).
    pub async fn start(scaler: Endpoints, log: &Path) -> std::io::Result<Self> {
        let log = std::fs::File::create(log)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let state = Arc::new(TapState {
            scaler,
            next: std::sync::atomic::AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new()).build(connector),
            seen: Mutex::new(Vec::new()),
            started: Instant::now(),
            log: Mutex::new(Some(log)),
        });
        let router = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::warn!(%error, "report tap stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Where the proxies should send reports.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every report so far.
    pub fn seen(&self) -> Vec<ReportSeen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

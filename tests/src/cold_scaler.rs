//! The harness of the hold tests: a fake scaler that answers every report with a cold list
//! (or an older scaler's answer, or a malformed one), at once or after keeping it a while, and can be taken down and brought back on
//! the same port; an upstream that records the order requests reach it; and a client that sends
//! one request on its own connection and times its answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use surge_wire::ReportBody;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How the fake scaler answers a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Answering {
    /// `200 {"outcome":"accepted","targets":1,"cold":[...]}` with the current cold list.
    Cold = 0,
    /// `200 {"outcome":"accepted","targets":1}`: what a scaler older than holding answers.
    Older = 1,
    /// `200 not json`.
    Malformed = 2,
}

/// One report as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// The decoded body.
    pub body: ReportBody,
}

impl Received {
    /// Requests held for `cluster` in this report.
    pub fn held(&self, cluster: &str) -> u64 {
        self.body
            .held
            .iter()
            .filter(|h| h.cluster == cluster)
            .map(|h| h.requests)
            .sum()
    }
}

#[derive(Debug, Default)]
struct Shared {
    answering: AtomicU8,
    /// How long each answer is kept before it goes out, in milliseconds (the real scaler keeps
    /// a holding report's answer until the destination turns warm or its wait runs out).
    keep_ms: AtomicU64,
    /// As the real scaler does: the answer to a report holding requests is kept until the cold
    /// list changes, for at most this long in milliseconds (0: not kept).
    keep_holding_ms: AtomicU64,
    /// Signalled on every `set_cold`.
    changed: tokio::sync::Notify,
    cold: Mutex<Vec<String>>,
    reports: Mutex<Vec<Received>>,
    malformed: Mutex<Vec<String>>,
}

/// The fake scaler; stops when dropped.
#[derive(Debug)]
pub struct ColdScaler {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl ColdScaler {
    /// Binds 127.0.0.1 on a free port and answers reports with nothing cold.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let server = Mutex::new(Some(tokio::spawn(serve(listener, shared.clone()))));
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// Where it listens (or listened, while down).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers with these destinations cold from now on.
    pub fn set_cold(&self, clusters: &[&str]) {
        if let Ok(mut cold) = self.shared.cold.lock() {
            *cold = clusters.iter().map(|c| c.to_string()).collect();
        }
        self.shared.changed.notify_waiters();
    }

    /// Keeps the answer to a report that holds requests until the cold list changes, for at
    /// most `wait` (the real scaler's `--answer-wait-ms`); `Duration::ZERO`: off.
    pub fn set_keep_holding(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.shared.keep_holding_ms.store(ms, Ordering::SeqCst);
    }

    /// Switches how it answers.
    pub fn set_answering(&self, answering: Answering) {
        self.shared
            .answering
            .store(answering as u8, Ordering::SeqCst);
    }

    /// Keeps every answer this long before sending it (0: at once, the default).
    pub fn set_keep(&self, keep: Duration) {
        let ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        self.shared.keep_ms.store(ms, Ordering::SeqCst);
    }

    /// Takes it down: the listener and every open connection close, so the port refuses
    /// connections.
    pub fn stop(&self) {
        if let Some(task) = self.server.lock().ok().and_then(|mut s| s.take()) {
            task.abort();
        }
    }

    /// Brings it back on the same port.
    pub async fn restart(&self) -> Result<()> {
        self.stop();
        let listener = TcpListener::bind(self.addr).await?;
        let task = tokio::spawn(serve(listener, self.shared.clone()));
        if let Ok(mut server) = self.server.lock() {
            *server = Some(task);
        }
        Ok(())
    }

    /// Every report so far, in arrival order.
    pub fn reports(&self) -> Vec<Received> {
        self.shared
            .reports
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Bodies that were not a report body (with the decode error).
    pub fn malformed(&self) -> Vec<String> {
        self.shared
            .malformed
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Waits until `done(reports)` holds, polling, for at most `timeout`; true if it held.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.reports()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ColdScaler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts connections until aborted; aborting drops the set, which aborts every connection.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| answer(shared.clone(), request));
            let _ = server::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(
    shared: Arc<Shared>,
    request: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut holding = false;
    match serde_json::from_slice::<ReportBody>(&body) {
        Ok(body) => {
            holding = !body.held.is_empty();
            if let Ok(mut reports) = shared.reports.lock() {
                reports.push(Received { at, body });
            }
        }
        Err(e) => {
            if let Ok(mut malformed) = shared.malformed.lock() {
                malformed.push(format!("{e}: {}", String::from_utf8_lossy(&body)));
            }
        }
    }
    let keep = shared.keep_ms.load(Ordering::SeqCst);
    if keep > 0 {
        tokio::time::sleep(Duration::from_millis(keep)).await;
    }
    let keep_holding = shared.keep_holding_ms.load(Ordering::SeqCst);
    if holding && keep_holding > 0 {
        let seen = shared.cold.lock().map(|c| c.clone()).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(keep_holding);
        loop {
            // Registered before the list is read: a change in between is not missed.
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if shared.cold.lock().map(|c| *c != seen).unwrap_or(true) {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
    }
    let cold = shared.cold.lock().map(|c| c.clone()).unwrap_or_default();
    let text = match shared.answering.load(Ordering::SeqCst) {
        a if a == Answering::Older as u8 => r#"{"outcome":"accepted","targets":1}"#.to_string(),
        a if a == Answering::Malformed as u8 => "not json".to_string(),
        _ => serde_json::json!({"outcome": "accepted", "targets": 1, "cold": cold}).to_string(),
    };
    Ok(http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default())
}

/// An upstream answering `200 ok` to everything, which records the paths in the order they
/// reached it; stops when dropped.
#[derive(Debug)]
pub struct OrderedUpstream {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<(String, Instant)>>>,
    task: JoinHandle<()>,
}

impl OrderedUpstream {
    /// Binds 127.0.0.1 on a free port and serves in the background.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let paths: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let seen = paths.clone();
        let app = axum::Router::new().fallback(move |uri: http::Uri| {
            let seen = seen.clone();
            async move {
                if let Ok(mut seen) = seen.lock() {
                    seen.push((uri.path().to_string(), Instant::now()));
                }
                "ok"
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, paths, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The paths requested so far, in arrival order.
    pub fn paths(&self) -> Vec<String> {
        self.arrivals().into_iter().map(|(path, _)| path).collect()
    }

    /// The paths requested so far with when each arrived, in arrival order.
    pub fn arrivals(&self) -> Vec<(String, Instant)> {
        self.paths.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for OrderedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The status code.
    pub status: u16,
    /// The `retry-after` header, if any.
    pub retry_after: Option<String>,
    /// From sending the request to the end of the response.
    pub elapsed: Duration,
}

/// Sends one GET of `path` on a new connection and waits for the whole answer, for at most
/// `timeout`; an error when the connection failed or was closed without an answer, or the
/// timeout passed.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Answered> {
    let start = Instant::now();
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) = client::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::get(path)
            .header("host", "app.default.svc.cluster.local")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        response.into_body().collect().await?;
        anyhow::Ok(Answered {
            status,
            retry_after,
            elapsed: start.elapsed(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .context("no answer within the timeout")?
}

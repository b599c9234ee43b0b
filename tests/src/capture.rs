//! A capture server standing in for the Surge scaler: it records every report with its arrival
//! time, and can be switched to answer 500 or to hang, so the filter's fail-open behaviour can be
//! shown against a misbehaving scaler. (A scaler that is down is simply an address where nothing
//! listens: [`unused_addr`].)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use surge_wire::Report;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the capture server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Record the report, answer 202.
    Accept = 0,
    /// Answer 500 without recording.
    Fail500 = 1,
    /// Never answer.
    Hang = 2,
}

/// One report as it arrived.
#[derive(Debug, Clone)]
pub struct Captured {
    /// When it arrived.
    pub at: Instant,
    /// The decoded report.
    pub report: Report,
    /// The `authorization` header, if any.
    pub authorization: Option<String>,
    /// The `content-type` header, if any.
    pub content_type: Option<String>,
    /// The `host`/`:authority` header, if any.
    pub authority: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    mode: AtomicU8,
    attempts: AtomicU64,
    malformed: Mutex<Vec<String>>,
    reports: Mutex<Vec<Captured>>,
}

/// The running capture server; stops when dropped.
#[derive(Debug)]
pub struct Capture {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Capture {
    /// Binds 127.0.0.1 on a free port and serves `POST /v1/reports` in the background.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route(surge_wire::REPORTS_PATH, post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches how it answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Requests received, whatever the mode.
    pub fn attempts(&self) -> u64 {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    /// Bodies that were not a valid v1 report (with the decode error).
    pub fn malformed(&self) -> Vec<String> {
        self.shared
            .malformed
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Every report recorded so far, in arrival order.
    pub fn reports(&self) -> Vec<Captured> {
        self.shared
            .reports
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Waits until `done(reports)` holds, polling, for at most `timeout`; true if it held.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[Captured]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.reports()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    shared.attempts.fetch_add(1, Ordering::SeqCst);
    match shared.mode.load(Ordering::SeqCst) {
        m if m == Mode::Fail500 as u8 => return StatusCode::INTERNAL_SERVER_ERROR,
        m if m == Mode::Hang as u8 => std::future::pending::<()>().await,
        _ => {}
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match serde_json::from_slice::<Report>(&body) {
        Ok(report) => {
            if let Ok(mut reports) = shared.reports.lock() {
                reports.push(Captured {
                    at,
                    report,
                    authorization: header("authorization"),
                    content_type: header("content-type"),
                    authority: header("host"),
                });
            }
            StatusCode::ACCEPTED
        }
        Err(e) => {
            if let Ok(mut malformed) = shared.malformed.lock() {
                malformed.push(format!("{e}: {}", String::from_utf8_lossy(&body)));
            }
            StatusCode::BAD_REQUEST
        }
    }
}

/// A loopback address where nothing listens (bound, then released): a scaler that is down.
pub fn unused_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

//! The application behind each pod's Envoy: an HTTP server with finite capacity, so that too
//! few pods show up as queueing latency and, past the queue, 503s, as a real service would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Capacity settings of one app instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppModel {
    /// Requests served at once.
    pub concurrency: u32,
    /// Time spent per request.
    pub service_time: Duration,
    /// Requests allowed to wait for a slot; more are answered 503.
    pub queue: u32,
}

struct AppState {
    model: AppModel,
    slots: Semaphore,
    /// Requests accepted and not yet answered (serving or waiting).
    in_flight: AtomicU32,
}

/// A running app instance; dropping it stops the server.
pub struct App {
    addr: SocketAddr,
    state: Arc<AppState>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(state: axum::extract::State<Arc<AppState>>) -> (StatusCode, &'static str) {
    let waiting = state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _done = InFlight(&state.in_flight);
    if waiting >= state.model.concurrency + state.model.queue {
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n");
    }
    let Ok(_slot) = state.slots.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n");
    };
    tokio::time::sleep(state.model.service_time).await;
    (StatusCode::OK, "ok\n")
}

struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl App {
    /// Starts an instance on 127.0.0.1 at a free port.
    pub async fn start(model: AppModel) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState {
            model,
            slots: Semaphore::new(model.concurrency as usize),
            in_flight: AtomicU32::new(0),
        });
        let router = axum::Router::new()
            .fallback(serve_one)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::warn!(%error, "app server stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Where the app listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests accepted and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.state.in_flight.load(Ordering::SeqCst)
    }
}

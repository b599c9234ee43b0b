//! A tiny HTTP upstream on loopback (what the sidecar forwards to) and a load client that sends
//! real HTTP/1.1 requests over a fixed number of connections, so that a multi-worker Envoy sees
//! its connections spread over its worker threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// An upstream answering `200 ok`, except `500` for paths containing `/fail` and `200` after
/// 800 ms for paths containing `/slow` (requests held in flight); stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Binds 127.0.0.1 on a free port and serves in the background.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let app = Router::new().fallback(move |uri: http::Uri| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                if uri.path().contains("/slow") {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                if uri.path().contains("/fail") {
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "failed")
                } else {
                    (http::StatusCode::OK, "ok")
                }
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            requests,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests it has answered.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a load run saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadResult {
    /// Requests answered with a 2xx.
    pub ok: u64,
    /// Requests answered with anything else, or failed at the transport.
    pub failed: u64,
}

/// Sends `total` GETs of `path` to `addr` over `connections` keep-alive connections (requests
/// split evenly), each connection sending one request after the other.
pub async fn send(
    addr: SocketAddr,
    path: &str,
    total: u64,
    connections: u64,
) -> Result<LoadResult> {
    let connections = connections.max(1);
    let mut tasks = Vec::new();
    for i in 0..connections {
        let share = total / connections + u64::from(i < total % connections);
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            connection_run(addr, &path, share, None).await
        }));
    }
    collect(tasks).await
}

/// Sends GETs of `path` at about `rps` requests per second for `duration`, over `connections`
/// connections (each paced at `rps / connections`).
pub async fn paced(
    addr: SocketAddr,
    path: &str,
    rps: u64,
    duration: Duration,
    connections: u64,
) -> Result<LoadResult> {
    let connections = connections.max(1);
    let per_connection = (rps as f64 / connections as f64).max(0.001);
    let period = Duration::from_secs_f64(1.0 / per_connection);
    let count = (duration.as_secs_f64() * per_connection).round() as u64;
    let mut tasks = Vec::new();
    for i in 0..connections {
        let path = path.to_string();
        // Stagger the connections so the load is smooth rather than in bursts.
        let offset = period.mul_f64(i as f64 / connections as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            connection_run(addr, &path, count, Some(period)).await
        }));
    }
    collect(tasks).await
}

/// Sends one GET for each of `paths` (in order, round-robin over `connections` keep-alive
/// connections), e.g. to reach many distinct routes.
pub async fn send_each(addr: SocketAddr, paths: &[String], connections: u64) -> Result<LoadResult> {
    let connections = connections.max(1) as usize;
    let mut tasks = Vec::new();
    for i in 0..connections {
        let mine: Vec<String> = paths.iter().skip(i).step_by(connections).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut sender = None;
            for path in &mine {
                send_one(&mut sender, addr, path, &mut result).await;
            }
            Ok(result)
        }));
    }
    collect(tasks).await
}

async fn collect(tasks: Vec<JoinHandle<Result<LoadResult>>>) -> Result<LoadResult> {
    let mut sum = LoadResult::default();
    for task in tasks {
        let r = task.await.context("load task")??;
        sum.ok += r.ok;
        sum.failed += r.failed;
    }
    Ok(sum)
}

async fn connection_run(
    addr: SocketAddr,
    path: &str,
    count: u64,
    period: Option<Duration>,
) -> Result<LoadResult> {
    let mut result = LoadResult::default();
    let mut sender = None;
    let start = Instant::now();
    for n in 0..count {
        if let Some(period) = period {
            let due = start + period.mul_f64(n as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        send_one(&mut sender, addr, path, &mut result).await;
    }
    Ok(result)
}

/// Sends one GET on `sender`, connecting first when there is no live connection, and tallies
/// the outcome; a transport error drops the connection so the next request opens a new one.
async fn send_one(
    sender: &mut Option<Sender>,
    addr: SocketAddr,
    path: &str,
    result: &mut LoadResult,
) {
    if sender.is_none() {
        *sender = connect(addr).await.ok();
    }
    let Some(s) = sender.as_mut() else {
        result.failed += 1;
        return;
    };
    match request(s, addr, path).await {
        Ok(status) if (200..300).contains(&status) => result.ok += 1,
        Ok(_) => result.failed += 1,
        Err(_) => {
            result.failed += 1;
            *sender = None;
        }
    }
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn request(sender: &mut Sender, addr: SocketAddr, path: &str) -> Result<u16> {
    sender.ready().await?;
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(req).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

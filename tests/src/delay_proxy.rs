//! A TCP proxy on loopback that adds latency in user space (this kernel has no netem): every
//! chunk a client sends is held for a delay before it is passed on, and the delay can be
//! switched at run time.
//!
//! ```text
//!  client --chunk--> [held until read + read delay, and accept + connect delay] --> upstream
//!  client <---------------------------- as it comes ---------------------------- upstream
//! ```
//!
//! Only the client's direction is delayed, so a request reaches the upstream late while a
//! stream the upstream sends (a watch) keeps flowing. A chunk whose client has gone (closed or
//! reset) before the chunk was due is dropped, and the upstream connection with it: a client that
//! gave up on a request (its timeout) never has that request served later. Chunks are kept in
//! order, so removing the delay lets newer chunks wait behind older held ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    read_delay_ms: AtomicU64,
    connect_delay_ms: AtomicU64,
    connections: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn read_delay(&self) -> Duration {
        Duration::from_millis(self.read_delay_ms.load(Ordering::SeqCst))
    }

    fn connect_delay(&self) -> Duration {
        Duration::from_millis(self.connect_delay_ms.load(Ordering::SeqCst))
    }
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Chunks passed on to the upstream.
    pub forwarded: u64,
    /// Chunks dropped because their client had gone before they were due.
    pub dropped: u64,
}

/// The running proxy; stops, with every connection through it, when dropped.
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 at a free port and forwards to `upstream`, with no delay yet.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            read_delay_ms: AtomicU64::new(0),
            connect_delay_ms: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // Owned by this task, so aborting it (on drop) aborts every connection too.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        accepting.connections.fetch_add(1, Ordering::SeqCst);
                        connections.spawn(relay(client, Arc::clone(&accepting)));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds each chunk a client sends from now on for `delay` after it was read.
    pub fn set_read_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.read_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Holds everything a connection accepted from now on sends until `delay` after it was
    /// accepted (a slow connection set-up).
    pub fn set_connect_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.connect_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Counts so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections: self.shared.connections.load(Ordering::SeqCst),
            forwarded: self.shared.forwarded.load(Ordering::SeqCst),
            dropped: self.shared.dropped.load(Ordering::SeqCst),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client connection: the client's chunks go through a queue that holds each until due;
/// the upstream's bytes go straight back.
async fn relay(client: TcpStream, shared: Arc<Shared>) {
    let accepted = Instant::now();
    let connect_due = accepted + shared.connect_delay();
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let (queue, mut held) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    // When the client went away, if it did.
    let (gone_tx, mut gone) = watch::channel::<Option<Instant>>(None);

    let reading = Arc::clone(&shared);
    let from_client = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = (Instant::now() + reading.read_delay()).max(connect_due);
                    if queue
                        .send((due, Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        gone_tx.send_replace(Some(Instant::now()));
    };
    let to_upstream = async move {
        'chunks: while let Some((due, bytes)) = held.recv().await {
            loop {
                let gone_at = *gone.borrow_and_update();
                if gone_at.is_some_and(|at| at < due) {
                    // The client gave up before this was due: it and what follows never
                    // reach the upstream.
                    let rest = 1 + held.len() as u64;
                    shared.dropped.fetch_add(rest, Ordering::SeqCst);
                    break 'chunks;
                }
                if Instant::now() >= due {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    changed = gone.changed() => if changed.is_err() { break },
                }
            }
            if upstream_write.write_all(&bytes).await.is_err() {
                return;
            }
            shared.forwarded.fetch_add(1, Ordering::SeqCst);
        }
        // Dropping the write half ends the upstream connection (FIN).
        drop(upstream_write);
    };
    let to_client = async move {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(from_client, to_upstream, to_client);
}

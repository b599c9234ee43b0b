//! A Service's virtual address, as kube-proxy gives it: each TCP connection to it goes to one of
//! the Service's ready endpoints (round-robin), and a connection made while the Service has
//! none is closed at once (kube-proxy rejects it), which Envoy answers as `503 upstream connect
//! error`. The sandbox's gateway and client-sidecar Envoys reach the app's Service through it,
//! as an Istio proxy reaches a Service through its endpoints (there is no EDS server here). The
//! node's scaler pods reach the API server through one each (see `Node::api_route`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::pods::Endpoints;

/// A running virtual address; dropping it stops accepting (open connections finish).
#[derive(Debug)]
pub struct ServiceProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceProxy {
    /// Listens on a free loopback port and forwards to `endpoints` (followed as they change).
    pub async fn start(endpoints: Endpoints) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = {
                    let endpoints = endpoints.read().unwrap_or_else(|e| e.into_inner());
                    (!endpoints.is_empty()).then(|| {
                        endpoints[next.fetch_add(1, Ordering::Relaxed) % endpoints.len()].addr
                    })
                };
                // No ready endpoint: dropping the connection rejects it.
                if let Some(target) = target {
                    tokio::spawn(forward(client, target));
                }
            }
        });
        Ok(Self { addr, task })
    }

    /// The virtual address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    let _ = client.set_nodelay(true);
    match TcpStream::connect(target).await {
        Ok(mut upstream) => {
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(error) => tracing::debug!(%target, %error, "service proxy: endpoint refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_go_round_robin_to_ready_endpoints_and_are_refused_without_one() {
        let mut backends = Vec::new();
        let mut addrs = Vec::new();
        for name in ["a", "b"] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(crate::pods::Endpoint {
                pod: name.into(),
                addr: listener.local_addr().unwrap(),
            });
            backends.push(tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let _ = socket.write_all(name.as_bytes()).await;
                }
            }));
        }
        let endpoints: Endpoints = Arc::default();
        let proxy = ServiceProxy::start(Arc::clone(&endpoints)).await.unwrap();
        let read_one = || async {
            let mut socket = TcpStream::connect(proxy.addr()).await.unwrap();
            let mut text = String::new();
            let _ = socket.read_to_string(&mut text).await;
            text
        };
        assert_eq!(
            read_one().await,
            "",
            "no endpoint: the connection is closed"
        );
        *endpoints.write().unwrap() = addrs;
        let seen = [read_one().await, read_one().await];
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b"], "{seen:?}");
    }
}

//! Requests into an ambient waypoint ([`surge_sandbox::envoy::WaypointBootstrap`]) as ztunnel
//! sends them: a CONNECT to the Service's `<vip>:<port>` on `connect_terminate`, then the
//! caller's HTTP/1.1 requests inside the tunnel.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A tunnel to `vip:port` through the waypoint listening on `waypoint`, ready for requests.
pub async fn tunnel(
    waypoint: SocketAddr,
    vip: IpAddr,
    port: u16,
) -> Result<http1::SendRequest<Empty<Bytes>>> {
    let mut stream = TcpStream::connect(waypoint)
        .await
        .with_context(|| format!("connect to the waypoint at {waypoint}"))?;
    let authority = SocketAddr::new(vip, port);
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    // The CONNECT answer ends at the first empty line; nothing follows until we send.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            bail!(
                "the waypoint closed the CONNECT to {authority}: {}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 200") {
        bail!("CONNECT to {authority} answered {head}");
    }
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends a GET of `path` for `host` through `sender`; the status.
pub async fn get(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> Result<u16> {
    sender.ready().await?;
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .context("no answer within 10 s")??;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// Sends `count` GETs of `path` to `host` (`vip:port`) through the waypoint over `connections`
/// tunnels, `rps` a second in all (0: as fast as answered); the statuses that were 2xx, and the
/// others.
pub async fn send(
    waypoint: SocketAddr,
    (host, vip, port): (&str, IpAddr, u16),
    path: &str,
    count: u64,
    rps: u64,
    connections: u64,
) -> Result<(u64, u64)> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let share = count / connections + u64::from(c < count % connections);
        let mut sender = tunnel(waypoint, vip, port).await?;
        let (host, path) = (host.to_owned(), path.to_owned());
        let gap = (rps > 0).then(|| Duration::from_secs_f64(connections as f64 / rps as f64));
        tasks.push(tokio::spawn(async move {
            let mut tick = gap.map(tokio::time::interval);
            let (mut ok, mut other) = (0, 0);
            for _ in 0..share {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                match get(&mut sender, &host, &path).await? {
                    200..=299 => ok += 1,
                    _ => other += 1,
                }
            }
            anyhow::Ok((ok, other))
        }));
    }
    let mut total = (0, 0);
    for task in tasks {
        let (ok, other) = task.await??;
        total.0 += ok;
        total.1 += other;
    }
    Ok(total)
}

//! Starting a component process and waiting for it to be ready: the steps every component of
//! [`crate::control_plane`] goes through.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::{Client, Config};

use crate::control_plane::{ClusterError, Result, api, io};
use crate::process::ChildGuard;

/// A free loopback port (bound, then released for the component to bind).
pub fn free_port() -> std::io::Result<u16> {
    Ok(free_ports::<1>()?[0])
}

/// `N` distinct free loopback ports: each stays bound until all are chosen, so no two are the
/// same. (Something else may still take one before the component binds it; the component then
/// fails to start and says so.)
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts `program args` with its output appended to `log`.
pub fn start(name: &str, program: &Path, args: &[String], log: &Path) -> Result<ChildGuard> {
    start_with_env(name, program, args, &[], log)
}

/// [`start`], with `env` added to the environment (for components that read their settings
/// from it, as their pods would be given them).
pub fn start_with_env(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<ChildGuard> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("open {}", log.display())))?;
    let file_err = file
        .try_clone()
        .map_err(io(format!("open {}", log.display())))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(file_err);
    Ok(ChildGuard::spawn(name, command)?)
}

/// A plain-HTTP GET on loopback (etcd's `/health`, a controller's `/readyz`); the status code,
/// or `None`.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Polls `ready` every 50 ms until it says yes, the process exits, or `timeout` passes.
pub(crate) async fn await_ready<F, Fut>(
    component: &str,
    process: &mut ChildGuard,
    log: &Path,
    timeout: Duration,
    mut ready: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.try_status()? {
            return Err(ClusterError::NotReady {
                component: component.into(),
                timeout,
                reason: format!("it exited with {status}"),
                log: log.to_path_buf(),
                tail: tail(log, 20),
            });
        }
        let last = match ready().await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(ClusterError::NotReady {
                component: component.into(),
                timeout,
                reason: last,
                log: log.to_path_buf(),
                tail: tail(log, 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` through `client`; Ok on a 2xx answer.
pub(crate) async fn get_ok(client: &Client, path: &str) -> std::result::Result<(), String> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client
        .request_text(request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A client for a component's own HTTPS port (its serving certificate is the cluster CA's;
/// `/healthz` is anonymous).
pub(crate) fn component_client(port: u16, ca_der: Vec<u8>) -> Result<Client> {
    let url = format!("https://127.0.0.1:{port}")
        .parse()
        .map_err(|e| io("component URL")(std::io::Error::other(format!("{e}"))))?;
    let mut config = Config::new(url);
    config.root_cert = Some(vec![ca_der]);
    config.connect_timeout = Some(Duration::from_millis(500));
    config.read_timeout = Some(Duration::from_secs(2));
    Client::try_from(config).map_err(api("build a client for a component"))
}

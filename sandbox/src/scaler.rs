//! The real `surge-scaler` binary as a child process, pointed at the embedded API through a
//! generated kubeconfig, killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::envoy::{http_get, workspace_root};
use crate::process::ChildGuard;

/// Why the scaler could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ScalerError {
    /// No binary was found.
    #[error(
        "surge-scaler binary not found (looked at {looked}); run `cargo build -p surge-scaler` (or `make test`), or set SURGE_SCALER_BIN"
    )]
    Missing {
        /// Where it was looked for.
        looked: String,
    },
    /// The process could not be started.
    #[error(transparent)]
    Spawn(#[from] crate::process::ProcessError),
    /// The log file could not be created.
    #[error("cannot create {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The scaler exited or did not become ready in time.
    #[error(
        "surge-scaler did not become ready within {timeout:?}: {reason}; last log lines:\n{tail}"
    )]
    NotReady {
        /// How long it was given.
        timeout: Duration,
        /// Exited or timed out.
        reason: String,
        /// The end of its log.
        tail: String,
    },
}

/// `$SURGE_SCALER_BIN`, else the newer of `<workspace>/target/{release,debug}/surge-scaler`.
pub fn locate_scaler() -> Result<PathBuf, ScalerError> {
    if let Some(path) = std::env::var_os("SURGE_SCALER_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ScalerError::Missing {
                looked: path.display().to_string(),
            })
        };
    }
    let root = workspace_root().join("target");
    let candidates = [
        root.join("release/surge-scaler"),
        root.join("debug/surge-scaler"),
    ];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| ScalerError::Missing {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// How to run the scaler.
#[derive(Debug, Clone)]
pub struct ScalerOptions {
    /// The binary.
    pub binary: PathBuf,
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
    /// `--ingest-addr`.
    pub ingest: SocketAddr,
    /// `--admin-addr`.
    pub admin: SocketAddr,
    /// Where its output goes (appended, so restarts keep the earlier log).
    pub log: PathBuf,
}

/// A running scaler.
#[derive(Debug)]
pub struct Scaler {
    process: ChildGuard,
}

/// A free loopback address (bound and released; the scaler binds it right after).
pub fn free_port() -> std::io::Result<SocketAddr> {
    Ok(SocketAddr::from((
        [127, 0, 0, 1],
        surge_cluster::free_port()?,
    )))
}

impl Scaler {
    /// Starts `surge-scaler run` and waits (blocking, bounded) until `/readyz` answers 200.
    pub fn start(options: &ScalerOptions, ready_timeout: Duration) -> Result<Self, ScalerError> {
        let log_error = |source| ScalerError::Log {
            path: options.log.clone(),
            source,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&options.log)
            .map_err(log_error)?;
        let log_err = log.try_clone().map_err(log_error)?;
        let mut command = Command::new(&options.binary);
        command
            .arg("run")
            .arg("--ingest-addr")
            .arg(options.ingest.to_string())
            .arg("--admin-addr")
            .arg(options.admin.to_string())
            .env("KUBECONFIG", &options.kubeconfig)
            .env_remove("SURGE_TOKEN")
            .env_remove("SURGE_TOKEN_FILE")
            .env("SURGE_IDENTITY", "off")
            .env(
                "RUST_LOG",
                std::env::var("SURGE_SCALER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut process = ChildGuard::spawn("surge-scaler", command)?;
        let deadline = Instant::now() + ready_timeout;
        loop {
            if let Ok(Some(status)) = process.try_status() {
                return Err(ScalerError::NotReady {
                    timeout: ready_timeout,
                    reason: format!("exited with {status}"),
                    tail: surge_cluster::launch::tail(&options.log, 30),
                });
            }
            if matches!(
                http_get(options.admin, "/readyz", Duration::from_millis(500)),
                Ok((200, _))
            ) {
                return Ok(Self { process });
            }
            if Instant::now() >= deadline {
                return Err(ScalerError::NotReady {
                    timeout: ready_timeout,
                    reason: "timed out".into(),
                    tail: surge_cluster::launch::tail(&options.log, 30),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Kills the scaler at once (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(mut self) {
        let _ = self.process.kill();
    }
}

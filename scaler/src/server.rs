//! `surge-scaler run`: wires the listeners, the hub and the controller together and stops them
//! on one shutdown signal (Ctrl-C or SIGTERM), letting in-flight writes finish.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use surge_wire::Limits;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::cli::{LogFormat, RunArgs};
use crate::clock::Clock;
use crate::controller::{self, Context};
use crate::hub::Hub;
use crate::ingest::{self, IngestState};
use crate::metrics::Metrics;
use crate::mirror::{self, Mirror, PeerState};
use crate::shard::{self, Ownership, leases::LeaseConfig};

/// Longest wait for data on the SurgeScaler watch: longer than the `timeoutSeconds` (290 s)
/// kube-runtime's watcher asks the API server for, so a healthy watch always ends first.
const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Per-instance counters are forgotten after this long without a report.
const INSTANCE_TTL_MS: u64 = 120_000;

/// Why the scaler could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The token file could not be read.
    #[error("--token-file {path}: {source}")]
    TokenFile {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The token is empty.
    #[error("--token/--token-file: the token is empty")]
    EmptyToken,
    /// No Kubernetes configuration found.
    #[error("kubernetes configuration (KUBECONFIG or in-cluster): {0}")]
    KubeConfig(#[from] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("kubernetes client: {0}")]
    KubeClient(#[from] kube::Error),
    /// A listener could not bind.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A server stopped with an error.
    #[error("serve: {0}")]
    Serve(std::io::Error),
    /// --lease-namespace is set without a flag that sharing needs.
    #[error("--lease-namespace needs {missing}")]
    SharingIncomplete {
        /// The missing flag.
        missing: &'static str,
    },
    /// The peer token file could not be read, or is empty.
    #[error("--peer-token-file {path}: {reason}")]
    PeerTokenFile {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// An environment variable from an earlier release is set; it is no longer read, and
    /// ignoring it would widen what the scaler watches.
    #[error("{old} is no longer read: set {new} (comma-separated) instead")]
    RenamedEnv {
        /// The variable that is set.
        old: &'static str,
        /// What replaces it.
        new: &'static str,
    },
}

/// Environment variables that earlier releases read, with what replaced them.
const RENAMED_ENV: &[(&str, &str)] = &[("SURGE_WATCH_NAMESPACE", "SURGE_WATCH_NAMESPACES")];

/// Refuses to start when a renamed variable is still set: `SURGE_WATCH_NAMESPACE=web` silently
/// ignored would have the scaler follow every namespace.
fn refuse_renamed_env(is_set: impl Fn(&str) -> bool) -> Result<(), RunError> {
    match RENAMED_ENV.iter().find(|(old, _)| is_set(old)) {
        Some(&(old, new)) => Err(RunError::RenamedEnv { old, new }),
        None => Ok(()),
    }
}

/// Sets up tracing in the chosen format (`RUST_LOG` filters, default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A token from the file at `path`, its trailing newline dropped; `None` when blank.
fn read_token(path: &std::path::Path) -> std::io::Result<Option<String>> {
    let text = std::fs::read_to_string(path)?;
    let token = text.trim_end();
    Ok((!token.trim().is_empty()).then(|| token.to_owned()))
}

fn load_token(args: &RunArgs) -> Result<Option<Arc<str>>, RunError> {
    let token = match (&args.token_file, &args.token) {
        (Some(path), _) => read_token(path)
            .map_err(|source| RunError::TokenFile {
                path: path.display().to_string(),
                source,
            })?
            .ok_or(RunError::EmptyToken)?,
        (None, Some(token)) if token.trim().is_empty() => return Err(RunError::EmptyToken),
        (None, Some(token)) => token.trim_end().to_owned(),
        (None, None) => return Ok(None),
    };
    Ok(Some(Arc::from(token)))
}

/// How this replica shares the targets: `None` when it runs alone.
struct Sharing {
    leases: LeaseConfig,
    peer_token: Arc<str>,
}

fn sharing(args: &RunArgs) -> Result<Option<Sharing>, RunError> {
    let Some(namespace) = args.lease_namespace.clone() else {
        return Ok(None);
    };
    let id = args.replica_id.clone().ok_or(RunError::SharingIncomplete {
        missing: "--replica-id (SURGE_REPLICA_ID: the pod name)",
    })?;
    let peer_url = args
        .advertised_peer_url()
        .ok_or(RunError::SharingIncomplete {
            missing: "--pod-ip or --peer-url (where the other replicas reach this one)",
        })?;
    let path = args
        .peer_token_file
        .as_ref()
        .ok_or(RunError::SharingIncomplete {
            missing: "--peer-token-file (the token replicas present to each other)",
        })?;
    let failed = |reason: String| RunError::PeerTokenFile {
        path: path.display().to_string(),
        reason,
    };
    let token = read_token(path)
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| failed("the token is empty".into()))?;
    Ok(Some(Sharing {
        leases: LeaseConfig {
            namespace,
            group: args.lease_group.clone(),
            id,
            duration: Duration::from_secs(args.lease_duration_seconds),
            shards: args.shards,
            peer_url: Some(peer_url),
        },
        peer_token: Arc::from(token),
    }))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// Resolves when Ctrl-C or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Runs the scaler until a shutdown signal.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    init_logging(args.log_format);
    refuse_renamed_env(|name| std::env::var_os(name).is_some())?;
    let token = load_token(&args)?;
    let sharing = sharing(&args)?;
    let ingest_listener = bind(args.ingest_addr).await?;
    let admin_listener = bind(args.admin_addr).await?;
    let peer_listener = match &sharing {
        Some(_) => Some(bind(args.peer_addr).await?),
        None => None,
    };

    let mut config = kube::Config::infer().await?;
    // Retries are ours: a failed write is retried with a fresh decision at the next wake-up,
    // not replayed up to 15 times while the load moves on.
    config.default_retry = false;
    let timeout = Duration::from_millis(args.kube_timeout_ms);
    // Every call the controller makes has its own `timeout` (controller::Context::call); the
    // client's read timeout only guards the SurgeScaler watcher, whose watch is quiet between
    // changes and bookmarks (about a minute apart on a real API server). At `timeout` it cut a
    // quiet watch every 5 s; above the watch's own server-side timeout it only catches a dead
    // connection (or a stalled initial list).
    config.read_timeout = Some(WATCH_READ_TIMEOUT.max(timeout));
    config.write_timeout = Some(timeout);
    config.connect_timeout = Some(timeout);
    let client = kube::Client::try_from(config)?;

    let hub = Arc::new(Hub::with_limits(args.source_limits()));
    hub.set_gateway_namespaces(args.gateway_namespaces());
    let metrics = Arc::new(Metrics::default());
    let clock = Clock::default();
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let limits = Arc::new(Limits::default());
    // Writes stop a quarter of the Lease duration before a hold runs out (see shard::Ownership).
    let ownership = Arc::new(match &sharing {
        Some(s) => Ownership::sharded(
            &s.leases.id,
            s.leases.shards,
            u64::try_from(s.leases.duration.as_millis() / 4).unwrap_or(u64::MAX),
            clock,
        ),
        None => Ownership::everything(),
    });
    let mirror = sharing.as_ref().map(|s| {
        Mirror::new(
            Arc::clone(&ownership),
            Arc::clone(&s.peer_token),
            Arc::clone(&metrics),
        )
    });

    let ingest_app = ingest::router(IngestState {
        hub: Arc::clone(&hub),
        clock,
        token,
        identity: args.identity,
        limits: Arc::clone(&limits),
        metrics: Arc::clone(&metrics),
        answer_wait: std::time::Duration::from_millis(args.answer_wait_ms),
        mirror,
    });
    let admin_app = admin::router(AdminState {
        metrics: Arc::clone(&metrics),
        ready: Arc::clone(&ready),
        ownership: Arc::clone(&ownership),
        hub: Arc::clone(&hub),
    });
    tracing::info!(
        ingest = %args.ingest_addr,
        admin = %args.admin_addr,
        identity = ?args.identity,
        token = token_state(&args),
        replica = sharing.as_ref().map(|s| s.leases.id.as_str()),
        "surge-scaler starting"
    );

    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let ingest_server = tokio::spawn(
        axum::serve(ingest_listener, ingest_app)
            .with_graceful_shutdown(wait(shutdown_rx.clone()))
            .into_future(),
    );
    let admin_server = tokio::spawn(
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(wait(shutdown_rx.clone()))
            .into_future(),
    );
    let mut servers = vec![ingest_server, admin_server];
    let mut leases = None;
    // The Leases are given up only after the loops' last writes (a separate signal).
    let (release_tx, release_rx) = watch::channel(false);
    if let (Some(sharing), Some(listener)) = (sharing, peer_listener) {
        let peer_app = mirror::router(PeerState {
            hub: Arc::clone(&hub),
            clock,
            token: Arc::clone(&sharing.peer_token),
            limits: Arc::clone(&limits),
            metrics: Arc::clone(&metrics),
        });
        servers.push(tokio::spawn(
            axum::serve(listener, peer_app)
                .with_graceful_shutdown(wait(shutdown_rx.clone()))
                .into_future(),
        ));
        leases = Some(tokio::spawn(shard::leases::run(
            client.clone(),
            sharing.leases,
            Arc::clone(&ownership),
            clock,
            Arc::clone(&metrics),
            release_rx,
        )));
    }
    let expiry = {
        let hub = Arc::clone(&hub);
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = every.tick() => hub.expire(clock.now(), INSTANCE_TTL_MS),
                }
            }
        })
    };
    let ctx = Arc::new(
        Context::new(
            client,
            Arc::clone(&hub),
            Arc::clone(&metrics),
            clock,
            timeout,
            args.tick(),
        )
        .with_warm_delay(args.warm_delay_ms)
        .with_ownership(ownership)
        // Watching given namespaces only, the scaler has no cluster-scoped rights.
        .with_namespace_reads(args.watch_namespaces().is_empty()),
    );
    let controller = tokio::spawn(controller::run(
        ctx,
        args.watch_namespaces(),
        ready,
        shutdown_rx,
    ));

    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight writes");
    let _ = shutdown_tx.send(true);
    let _ = controller.await;
    // After the loops' last writes: the Leases go back, so the others take over at once.
    let _ = release_tx.send(true);
    if let Some(leases) = leases {
        let _ = leases.await;
    }
    let _ = expiry.await;
    for server in servers {
        if let Ok(Err(error)) = server.await {
            return Err(RunError::Serve(error));
        }
    }
    tracing::info!("stopped");
    Ok(())
}

fn token_state(args: &RunArgs) -> &'static str {
    if args.token_file.is_some() || args.token.is_some() {
        "required"
    } else {
        "none"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_watch_namespace_variable_stops_the_start_and_names_its_replacement() {
        let error = refuse_renamed_env(|name| name == "SURGE_WATCH_NAMESPACE").unwrap_err();
        assert_eq!(
            error.to_string(),
            "SURGE_WATCH_NAMESPACE is no longer read: set SURGE_WATCH_NAMESPACES \
             (comma-separated) instead"
        );
        assert!(refuse_renamed_env(|name| name == "SURGE_WATCH_NAMESPACES").is_ok());
        assert!(refuse_renamed_env(|_| false).is_ok());
    }
}

//! The scaler container on the node: its process, its probes, its restarts after a crash or a
//! kill, and the command line it runs with here.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;

use super::containers::{self, Mount};
use super::pod::{ProbeKind, now_rfc3339};
use super::probe::{Probe, ProbeTracker};
use super::status::ContainerState;
use crate::process::ChildGuard;

/// Back-off before a crashed container restarts (the kubelet's first step, 10 s).
pub(super) const CRASH_BACKOFF: Duration = Duration::from_secs(10);

/// The surge-scaler container.
pub(super) struct ScalerContainer {
    pub(super) container: Container,
    pub(super) process: Option<ChildGuard>,
    pub(super) started: Option<(Instant, String)>,
    pub(super) restart_count: u32,
    pub(super) last_state: Option<ContainerState>,
    /// A crashed or killed process starts again at this time.
    pub(super) restart_at: Option<Instant>,
    /// Args and env as they run here (volumes written, addresses rewritten); `None` until the
    /// node has prepared them.
    pub(super) prepared: Option<Prepared>,
    pub(super) startup: Option<ProbeTracker>,
    pub(super) readiness: Option<ProbeTracker>,
    pub(super) liveness: Option<ProbeTracker>,
    pub(super) waiting: Option<(&'static str, String)>,
}

/// A container's command line as this node runs it.
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) log: PathBuf,
}

impl ScalerContainer {
    pub(super) fn tracker(&mut self, kind: ProbeKind) -> Option<&mut ProbeTracker> {
        match kind {
            ProbeKind::Startup => self.startup.as_mut(),
            ProbeKind::Readiness => self.readiness.as_mut(),
            ProbeKind::Liveness => self.liveness.as_mut(),
        }
    }

    pub(super) fn state(&self) -> ContainerState {
        if let Some((reason, message)) = &self.waiting {
            return ContainerState::Waiting {
                reason,
                message: Some(message.clone()),
            };
        }
        match &self.started {
            Some((_, at)) if self.process.is_some() => ContainerState::Running {
                started_at: at.clone(),
                ready: self.readiness.as_ref().map_or(
                    self.startup
                        .as_ref()
                        .is_none_or(|s| s.verdict() == Some(true)),
                    |r| r.verdict() == Some(true),
                ),
            },
            _ if self.restart_count > 0 => ContainerState::Waiting {
                reason: "CrashLoopBackOff",
                message: Some(format!(
                    "back-off {}s restarting failed container",
                    CRASH_BACKOFF.as_secs()
                )),
            },
            _ => ContainerState::Waiting {
                reason: "ContainerCreating",
                message: None,
            },
        }
    }

    /// Kills the process (if running); it restarts `restart_after` from `now`.
    pub(super) fn stop(&mut self, now: Instant, restart_after: Duration) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        let status = process.kill().ok();
        let finished = now_rfc3339();
        self.last_state = Some(ContainerState::Terminated {
            exit_code: status.and_then(|s| s.code()).unwrap_or(137),
            reason: "Error",
            started_at: self.started.take().map(|(_, at)| at).unwrap_or_default(),
            finished_at: finished,
        });
        self.restart_count += 1;
        self.restart_at = Some(now + restart_after);
    }

    /// Starts the process when prepared and due; notices one that exited. True on a change.
    pub(super) fn progress(&mut self, now: Instant) -> bool {
        if let Some(process) = &mut self.process {
            if let Ok(Some(status)) = process.try_status() {
                tracing::info!(%status, "the scaler container exited; restarting after back-off");
                self.stop(now, CRASH_BACKOFF);
                return true;
            }
            return false;
        }
        let Some(prepared) = &self.prepared else {
            return false;
        };
        if self.restart_at.is_some_and(|at| now < at) {
            return false;
        }
        match spawn_scaler(&self.container, prepared) {
            Ok(process) => {
                self.process = Some(process);
                self.started = Some((now, now_rfc3339()));
                self.restart_at = None;
                self.waiting = None;
                let probe = |spec: &Option<k8s_openapi::api::core::v1::Probe>| {
                    spec.as_ref()
                        .and_then(|p| Probe::from_spec(&self.container, p).ok())
                        .map(|p| ProbeTracker::new(p, now))
                };
                self.startup = probe(&self.container.startup_probe);
                self.readiness = probe(&self.container.readiness_probe);
                self.liveness = probe(&self.container.liveness_probe);
            }
            Err(error) => {
                self.waiting = Some(("RunContainerError", error));
                self.restart_at = Some(now + CRASH_BACKOFF);
            }
        }
        true
    }
}

fn spawn_scaler(container: &Container, prepared: &Prepared) -> Result<ChildGuard, String> {
    let binary = crate::scaler::locate_scaler().map_err(|e| e.to_string())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&prepared.log)
        .map_err(|e| format!("{}: {e}", prepared.log.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new(binary);
    command
        .args(&prepared.args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    ChildGuard::spawn(container.name.clone(), command).map_err(|e| e.to_string())
}

/// The container's args and env with its mounts and listen addresses rewritten for this node.
pub(super) fn prepare(
    container: &Container,
    pod_local: IpAddr,
    mounts: &[Mount],
    kubeconfig: &std::path::Path,
    log: PathBuf,
) -> Result<Prepared, String> {
    if container.command.is_some() {
        return Err(
            "a container command is not supported here (the image's entrypoint runs)".into(),
        );
    }
    let args = container
        .args
        .iter()
        .flatten()
        .map(|a| containers::rewrite(a, pod_local, mounts))
        .collect();
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = var
            .value
            .as_deref()
            .ok_or_else(|| format!("env {}: only a literal value is supported here", var.name))?;
        env.push((
            var.name.clone(),
            containers::rewrite(value, pod_local, mounts),
        ));
    }
    // In a cluster the client reads the mounted token at the in-cluster path; without a mount
    // namespace, the same token comes through a kubeconfig.
    env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    Ok(Prepared { args, env, log })
}

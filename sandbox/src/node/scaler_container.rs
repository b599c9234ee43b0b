//! The scaler container on the node: its process, its probes, its restarts after a crash or a
//! kill, its ServiceAccount token (refreshed as a kubelet refreshes a projected token), and the
//! command line it runs with here.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;

use super::containers::{self, Mount};
use super::pod::{ProbeKind, now_rfc3339};
use super::probe::{Probe, ProbeTracker};
use super::status::ContainerState;
use crate::process::ChildGuard;
use crate::service_proxy::ServiceProxy;

/// Back-off before a crashed container restarts (the kubelet's first step, 10 s).
pub(super) const CRASH_BACKOFF: Duration = Duration::from_secs(10);

/// The container's three probes, as its spec asks.
#[derive(Debug, Clone, Default)]
struct ProbeSpecs {
    startup: Option<Probe>,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
}

impl ProbeSpecs {
    /// The probes of `container`; `Err` names one this node cannot run (it would otherwise count
    /// a container as ready that its spec says is not).
    fn of(container: &Container) -> Result<Self, String> {
        let parse = |what: &str, spec: &Option<k8s_openapi::api::core::v1::Probe>| {
            spec.as_ref()
                .map(|p| Probe::from_spec(container, p).map_err(|e| format!("{what}: {e}")))
                .transpose()
        };
        Ok(Self {
            startup: parse("startupProbe", &container.startup_probe)?,
            readiness: parse("readinessProbe", &container.readiness_probe)?,
            liveness: parse("livenessProbe", &container.liveness_probe)?,
        })
    }
}

/// The ServiceAccount token the container reads, and when the node renews it.
#[derive(Debug, Clone)]
pub(super) struct Token {
    /// Files holding it (the kubeconfig's `tokenFile`, the projected volume's `token`).
    pub(super) files: Vec<PathBuf>,
    /// When to ask for a new one (80 % of its lifetime, as a kubelet does).
    pub(super) refresh_at: Instant,
}

/// A container's command line as this node runs it.
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) log: PathBuf,
    pub(super) token: Token,
    /// The pod's path to the API server (its kubeconfig's `server`), for the pod's lifetime.
    pub(super) api_route: Arc<ServiceProxy>,
}

/// The surge-scaler container.
pub(super) struct ScalerContainer {
    pub(super) container: Container,
    probes: Result<ProbeSpecs, String>,
    pub(super) process: Option<ChildGuard>,
    started_at: Option<String>,
    restart_count: u32,
    last_state: Option<ContainerState>,
    /// Set once the container ended for good (its pod is being deleted).
    terminated: Option<ContainerState>,
    /// A crashed or killed process starts again at this time.
    pub(super) restart_at: Option<Instant>,
    /// Args, env and token as they run here; `None` until the node has prepared them.
    pub(super) prepared: Option<Prepared>,
    /// When the node may try to prepare it (again), and how many attempts failed.
    pub(super) prepare_at: Instant,
    prepare_failures: u32,
    startup: Option<ProbeTracker>,
    readiness: Option<ProbeTracker>,
    liveness: Option<ProbeTracker>,
    /// Why it is not running, when that is not a crash: shown as the waiting reason.
    waiting: Option<(&'static str, String)>,
}

/// What an exit looked like to a kubelet: the exit code (128 + the signal for a signalled
/// process) and the reason.
fn terminated(status: Option<ExitStatus>, started_at: String) -> ContainerState {
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status.map_or(137, |s| {
        s.code()
            .or_else(|| s.signal().map(|signal| 128 + signal))
            .unwrap_or(137)
    });
    ContainerState::Terminated {
        exit_code,
        reason: if exit_code == 0 { "Completed" } else { "Error" },
        started_at,
        finished_at: now_rfc3339(),
    }
}

impl ScalerContainer {
    /// The container of a pod the node just accepted.
    pub(super) fn new(container: Container, now: Instant) -> Self {
        Self {
            probes: ProbeSpecs::of(&container),
            container,
            process: None,
            started_at: None,
            restart_count: 0,
            last_state: None,
            terminated: None,
            restart_at: None,
            prepared: None,
            prepare_at: now,
            prepare_failures: 0,
            startup: None,
            readiness: None,
            liveness: None,
            waiting: None,
        }
    }

    /// True when the node should (try to) prepare the container now.
    pub(super) fn needs_preparing(&self, now: Instant) -> bool {
        self.prepared.is_none() && self.probes.is_ok() && now >= self.prepare_at
    }

    /// Records a failed preparation: shown as the waiting reason, tried again after a back-off
    /// (1 s, doubling to 8 s), as a kubelet retries a mount (the Node authorizer, for one, may
    /// not yet know the pod's Secret when the pod is first seen).
    pub(super) fn preparing_failed(&mut self, now: Instant, message: String) {
        self.prepare_failures += 1;
        let backoff = Duration::from_secs(1 << (self.prepare_failures.min(4) - 1));
        self.prepare_at = now + backoff;
        self.waiting = Some(("CreateContainerConfigError", message));
    }

    /// Records the prepared command line; the process starts on the next progress.
    pub(super) fn prepared(&mut self, prepared: Prepared) {
        self.prepared = Some(prepared);
        self.waiting = None;
    }

    pub(super) fn tracker(&mut self, kind: ProbeKind) -> Option<&mut ProbeTracker> {
        match kind {
            ProbeKind::Startup => self.startup.as_mut(),
            ProbeKind::Readiness => self.readiness.as_mut(),
            ProbeKind::Liveness => self.liveness.as_mut(),
        }
    }

    /// The probes due now (none before the process runs).
    pub(super) fn due_probes(&self, now: Instant) -> Vec<(ProbeKind, Probe)> {
        if self.process.is_none() {
            return Vec::new();
        }
        let started = self
            .startup
            .as_ref()
            .is_none_or(|t| t.verdict() == Some(true));
        [
            (ProbeKind::Startup, self.startup.as_ref(), !started),
            (ProbeKind::Readiness, self.readiness.as_ref(), started),
            (ProbeKind::Liveness, self.liveness.as_ref(), started),
        ]
        .into_iter()
        .filter_map(|(kind, tracker, active)| {
            let tracker = tracker?;
            (active && tracker.due(now)).then(|| (kind, tracker.probe().clone()))
        })
        .collect()
    }

    /// What the kubelet reports of the container.
    pub(super) fn view(&self) -> (ContainerState, Option<ContainerState>, u32) {
        (self.state(), self.last_state.clone(), self.restart_count)
    }

    fn state(&self) -> ContainerState {
        if let Some(done) = &self.terminated {
            return done.clone();
        }
        if let Err(message) = &self.probes {
            return ContainerState::Waiting {
                reason: "CreateContainerConfigError",
                message: Some(message.clone()),
            };
        }
        if let Some((reason, message)) = &self.waiting {
            return ContainerState::Waiting {
                reason,
                message: Some(message.clone()),
            };
        }
        match &self.started_at {
            Some(at) if self.process.is_some() => ContainerState::Running {
                started_at: at.clone(),
                ready: match &self.readiness {
                    Some(readiness) => readiness.verdict() == Some(true),
                    None => self
                        .startup
                        .as_ref()
                        .is_none_or(|s| s.verdict() == Some(true)),
                },
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

    /// Kills the process (if running), as a crash or an OOM kill would; it starts again
    /// `restart_after` from `now`.
    pub(super) fn kill(&mut self, now: Instant, restart_after: Duration) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        let status = process.kill().ok();
        self.last_state = Some(terminated(
            status,
            self.started_at.take().unwrap_or_default(),
        ));
        self.restart_count += 1;
        self.restart_at = Some(now + restart_after);
    }

    /// Starts stopping for good: SIGTERM now; [`ScalerContainer::finish`] kills what is left.
    pub(super) fn terminate(&mut self) {
        self.restart_at = None;
        match &mut self.process {
            Some(process) => process.terminate(),
            None if self.terminated.is_none() => {
                self.terminated =
                    Some(terminated(None, self.started_at.take().unwrap_or_default()));
            }
            None => {}
        }
    }

    /// While terminating: the process gone (exited, or killed at the end of the grace period
    /// `late`)? True once nothing runs.
    pub(super) fn finish(&mut self, late: bool) -> bool {
        if let Some(process) = &mut self.process {
            let exited = process.try_status().ok().flatten();
            if exited.is_none() && !late {
                return false;
            }
            let status = match exited {
                Some(status) => Some(status),
                None => process.kill().ok(),
            };
            self.terminated = Some(terminated(
                status,
                self.started_at.take().unwrap_or_default(),
            ));
            self.process = None;
        }
        true
    }

    /// Starts the process when prepared and due; notices one that crashed (restarted after the
    /// back-off). Never starts one while `terminating`.
    pub(super) fn progress(&mut self, now: Instant, terminating: bool) {
        if let Some(process) = &mut self.process {
            if !terminating && let Ok(Some(status)) = process.try_status() {
                tracing::info!(%status, "the scaler container exited; restarting after back-off");
                self.process = None;
                self.last_state = Some(terminated(
                    Some(status),
                    self.started_at.take().unwrap_or_default(),
                ));
                self.restart_count += 1;
                self.restart_at = Some(now + CRASH_BACKOFF);
            }
            return;
        }
        let (Some(prepared), Ok(probes)) = (&self.prepared, &self.probes) else {
            return;
        };
        if terminating || self.terminated.is_some() || self.restart_at.is_some_and(|at| now < at) {
            return;
        }
        match spawn_scaler(&self.container, prepared) {
            Ok(process) => {
                self.process = Some(process);
                self.started_at = Some(now_rfc3339());
                self.restart_at = None;
                self.waiting = None;
                let track =
                    |probe: &Option<Probe>| probe.clone().map(|p| ProbeTracker::new(p, now));
                self.startup = track(&probes.startup);
                self.readiness = track(&probes.readiness);
                self.liveness = track(&probes.liveness);
            }
            Err(error) => {
                self.waiting = Some(("RunContainerError", error));
                self.restart_at = Some(now + CRASH_BACKOFF);
            }
        }
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

/// A container's arguments and its environment, as the process gets them.
pub(super) type CommandLine = (Vec<String>, Vec<(String, String)>);

/// What the downward API gives a container's env (`valueFrom.fieldRef`).
pub(super) struct PodFields<'a> {
    pub(super) name: &'a str,
    pub(super) namespace: &'a str,
    /// Where the pod's processes listen on this machine. `status.podIP` reads as this, since
    /// here it is where the other pods reach this one (in a cluster, the pod IP is).
    pub(super) local_ip: IpAddr,
}

impl PodFields<'_> {
    fn get(&self, var: &str, path: &str) -> Result<String, String> {
        match path {
            "metadata.name" => Ok(self.name.to_owned()),
            "metadata.namespace" => Ok(self.namespace.to_owned()),
            "status.podIP" => Ok(self.local_ip.to_string()),
            other => Err(format!(
                "env {var}: fieldRef {other} is not supported here (metadata.name, \
                 metadata.namespace and status.podIP are)"
            )),
        }
    }
}

/// The container's args and env with its mounts and listen addresses rewritten for this node.
pub(super) fn command_line(
    container: &Container,
    pod: &PodFields<'_>,
    mounts: &[Mount],
    kubeconfig: &Path,
) -> Result<CommandLine, String> {
    let pod_local = pod.local_ip;
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
        let field = var
            .value_from
            .as_ref()
            .and_then(|from| from.field_ref.as_ref());
        let value = match (var.value.as_deref(), field) {
            (Some(value), _) => containers::rewrite(value, pod_local, mounts),
            (None, Some(field)) => pod.get(&var.name, &field.field_path)?,
            (None, None) => {
                return Err(format!(
                    "env {}: only a literal value or a fieldRef is supported here",
                    var.name
                ));
            }
        };
        env.push((var.name.clone(), value));
    }
    // In a cluster the client reads the mounted token at the in-cluster path; without a mount
    // namespace, the same token comes through a kubeconfig (whose `tokenFile` it re-reads).
    env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    Ok((args, env))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn an_exit_reads_as_a_kubelet_reports_it() {
        let code = |state: ContainerState| match state {
            ContainerState::Terminated {
                exit_code, reason, ..
            } => (exit_code, reason),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(terminated(Some(ExitStatus::from_raw(0)), String::new())),
            (0, "Completed")
        );
        // Killed by SIGTERM (15) and SIGKILL (9): 128 + the signal.
        assert_eq!(
            code(terminated(Some(ExitStatus::from_raw(15)), String::new())),
            (143, "Error")
        );
        assert_eq!(
            code(terminated(Some(ExitStatus::from_raw(9)), String::new())),
            (137, "Error")
        );
        assert_eq!(
            code(terminated(
                Some(ExitStatus::from_raw(1 << 8)),
                String::new()
            )),
            (1, "Error")
        );
    }

    #[test]
    fn preparing_is_retried_with_a_back_off_doubling_to_eight_seconds() {
        let container: Container =
            serde_json::from_value(serde_json::json!({"name": "s"})).unwrap();
        let t0 = Instant::now();
        let mut scaler = ScalerContainer::new(container, t0);
        assert!(scaler.needs_preparing(t0));
        let mut waits = Vec::new();
        for _ in 0..6 {
            scaler.preparing_failed(t0, "403".into());
            waits.push((scaler.prepare_at - t0).as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
        assert!(!scaler.needs_preparing(t0));
        assert!(matches!(
            scaler.state(),
            ContainerState::Waiting {
                reason: "CreateContainerConfigError",
                ..
            }
        ));
    }

    #[test]
    fn a_probe_this_node_cannot_run_keeps_the_container_from_counting_as_ready() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "s", "readinessProbe": {"exec": {"command": ["true"]}},
        }))
        .unwrap();
        let scaler = ScalerContainer::new(container, Instant::now());
        assert!(!scaler.needs_preparing(Instant::now()));
        let ContainerState::Waiting { reason, message } = scaler.state() else {
            panic!("{:?}", scaler.state());
        };
        assert_eq!(reason, "CreateContainerConfigError");
        assert!(message.unwrap().starts_with("readinessProbe: "));
    }
}

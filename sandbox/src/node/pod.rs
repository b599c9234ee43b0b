//! One pod on the sandbox's node: its processes, their states, and what the kubelet reports of
//! them ([`LocalPod::view`]). The node's loop ([`super::Node`]) drives it: accept, progress,
//! probe, terminate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::{Timestamp, Unit};
use tokio::task::JoinHandle;

use super::containers::{self, Mount, Program};
use super::network;
use super::probe::{Probe, ProbeTracker};
use super::status::{ContainerState, ContainerView, PodView, Transitions};
use super::{AppRuntime, NodeOptions};
use crate::app_pod::{self, AppPod, AppPodSpec};
use crate::process::ChildGuard;

/// Back-off before a crashed container restarts (the kubelet's first step, 10 s).
const CRASH_BACKOFF: Duration = Duration::from_secs(10);
/// How long a scaled-away app pod may finish its in-flight requests (at most its grace period).
const APP_DRAIN: Duration = Duration::from_secs(5);

/// Now, as the API's timestamps are written (RFC 3339, whole seconds).
pub(super) fn now_rfc3339() -> String {
    Timestamp::now()
        .round(Unit::Second)
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

/// The three probes a kubelet runs for a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

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

/// The app and its sidecar.
pub(super) struct AppContainers {
    pub(super) startup_delay: Duration,
    pub(super) start: Option<JoinHandle<Result<AppPod, String>>>,
    pub(super) pod: Option<AppPod>,
    pub(super) failed: Option<String>,
    /// The scenario's crash loop: this pod's app never starts.
    pub(super) never_starts: bool,
    pub(super) app_started: Option<String>,
    pub(super) proxy_started: Option<String>,
}

pub(super) enum Runtime {
    App(Box<AppContainers>),
    Scaler(Box<ScalerContainer>),
    /// Pause containers, started when the pod was accepted.
    Pause,
    Unrunnable {
        reason: &'static str,
        message: String,
    },
}

/// A pod the node accepted.
pub(super) struct LocalPod {
    /// The pod as the node accepted it.
    pub(super) source: Pod,
    pub(super) uid: String,
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) pod_ip: Ipv4Addr,
    pub(super) dir: PathBuf,
    pub(super) accepted: Instant,
    pub(super) start_time: String,
    pub(super) images: Vec<(String, String)>,
    pub(super) runtime: Runtime,
    /// When the node saw its deletion, and the grace period it was given.
    pub(super) deleting: Option<(Instant, Duration)>,
    pub(super) transitions: Transitions,
    /// The status last written (to write only changes).
    pub(super) written: Option<serde_json::Value>,
    /// After a failed write, not before this.
    pub(super) write_after: Option<Instant>,
    /// Deleted from the API (grace 0) once its processes were gone.
    pub(super) removed: bool,
}

impl LocalPod {
    /// Accepts `pod` as the `index`th pod of the node; `app_pods` counts app pods accepted so
    /// far (the scenario's `fail_after` applies to it).
    pub(super) fn accept(
        pod: &Pod,
        index: u32,
        options: &NodeOptions,
        app_pods: &mut u32,
    ) -> Option<Self> {
        let pod_ip = network::pod_ip(index)?;
        let name = pod.metadata.name.clone()?;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let dir = options.work_dir.join(&name);
        let images = pod
            .spec
            .as_ref()
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let runtime = match containers::program(pod) {
            Program::App {
                model,
                startup_delay,
                workload,
            } => {
                let never_starts = options.app.fail_after.is_some_and(|n| *app_pods >= n);
                *app_pods += 1;
                let start = (!never_starts).then(|| {
                    app_pod::start(app_spec(
                        &options.app,
                        &name,
                        &namespace,
                        workload,
                        model,
                        pod_ip,
                        dir.clone(),
                    ))
                });
                if never_starts {
                    tracing::info!(pod = %name, "the app will not start (fail_after)");
                }
                Runtime::App(Box::new(AppContainers {
                    startup_delay,
                    start,
                    pod: None,
                    failed: None,
                    never_starts,
                    app_started: None,
                    proxy_started: None,
                }))
            }
            Program::Scaler { container } => Runtime::Scaler(Box::new(ScalerContainer {
                container: *container,
                process: None,
                started: None,
                restart_count: 0,
                last_state: None,
                restart_at: None,
                prepared: None,
                startup: None,
                readiness: None,
                liveness: None,
                waiting: None,
            })),
            Program::Pause => Runtime::Pause,
            Program::Unrunnable { reason, message } => Runtime::Unrunnable { reason, message },
        };
        Some(Self {
            source: pod.clone(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            name,
            namespace,
            pod_ip,
            dir,
            accepted: Instant::now(),
            start_time: now_rfc3339(),
            images,
            runtime,
            deleting: None,
            transitions: Transitions::new(),
            written: None,
            write_after: None,
            removed: false,
        })
    }

    /// The pod's loopback address on this machine.
    pub(super) fn local_ip(&self) -> IpAddr {
        network::local(IpAddr::V4(self.pod_ip)).unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    /// True while any of its processes runs (or is being started).
    pub(super) fn running(&self) -> bool {
        match &self.runtime {
            Runtime::App(app) => app.start.is_some() || app.pod.is_some(),
            Runtime::Scaler(scaler) => scaler.process.is_some(),
            Runtime::Pause | Runtime::Unrunnable { .. } => false,
        }
    }

    /// Moves the pod's processes on: a finished start, a start-up delay passed, a process that
    /// exited, a restart due. True when its reported state changed.
    pub(super) async fn progress(&mut self, now: Instant) -> bool {
        let accepted = self.accepted;
        match &mut self.runtime {
            Runtime::App(app) => {
                let mut changed = false;
                if let Some(handle) = &app.start
                    && handle.is_finished()
                    && let Some(handle) = app.start.take()
                {
                    match handle.await {
                        Ok(Ok(pod)) => app.pod = Some(pod),
                        Ok(Err(error)) => app.failed = Some(error),
                        Err(error) => app.failed = Some(error.to_string()),
                    }
                    if let Some(error) = &app.failed {
                        tracing::warn!(pod = %self.name, %error, "pod failed to start");
                    }
                    if app.pod.is_some() {
                        app.proxy_started = Some(now_rfc3339());
                    }
                    changed = true;
                }
                // The app container "starts" once its start-up delay (image pull and boot,
                // which this machine cannot do) has passed.
                if app.app_started.is_none()
                    && !app.never_starts
                    && app.failed.is_none()
                    && now >= accepted + app.startup_delay
                {
                    app.app_started = Some(now_rfc3339());
                    changed = true;
                }
                changed
            }
            Runtime::Scaler(scaler) => scaler.progress(now),
            Runtime::Pause | Runtime::Unrunnable { .. } => false,
        }
    }

    /// What the kubelet reports of the pod.
    pub(super) fn view(&self) -> PodView {
        let image = |name: &str| {
            self.images
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, i)| i.clone())
                .unwrap_or_default()
        };
        let container = |name: &str, state: ContainerState| ContainerView {
            name: name.to_owned(),
            image: image(name),
            state,
            last_state: None,
            restart_count: 0,
        };
        let creating = || ContainerState::Waiting {
            reason: "ContainerCreating",
            message: None,
        };
        let containers = match &self.runtime {
            Runtime::App(app) => {
                let app_state = match (&app.app_started, app.never_starts, &app.failed) {
                    (_, true, _) => ContainerState::Waiting {
                        reason: "CrashLoopBackOff",
                        message: Some(
                            "the scenario's pods.fail_after: this pod never starts".into(),
                        ),
                    },
                    (_, _, Some(error)) => ContainerState::Waiting {
                        reason: "CreateContainerError",
                        message: Some(error.clone()),
                    },
                    (Some(at), _, _) => ContainerState::Running {
                        started_at: at.clone(),
                        ready: true,
                    },
                    (None, _, _) => creating(),
                };
                let proxy_state = match (&app.proxy_started, &app.failed) {
                    (_, Some(error)) => ContainerState::Waiting {
                        reason: "CreateContainerError",
                        message: Some(error.clone()),
                    },
                    (Some(at), None) => ContainerState::Running {
                        started_at: at.clone(),
                        ready: true,
                    },
                    (None, None) => creating(),
                };
                self.images
                    .iter()
                    .map(|(name, image)| {
                        let state = if image == containers::PROXY_IMAGE {
                            proxy_state.clone()
                        } else {
                            app_state.clone()
                        };
                        container(name, state)
                    })
                    .collect()
            }
            Runtime::Scaler(scaler) => vec![ContainerView {
                name: scaler.container.name.clone(),
                image: scaler.container.image.clone().unwrap_or_default(),
                state: scaler.state(),
                last_state: scaler.last_state.clone(),
                restart_count: scaler.restart_count,
            }],
            Runtime::Pause => self
                .images
                .iter()
                .map(|(name, _)| {
                    container(
                        name,
                        ContainerState::Running {
                            started_at: self.start_time.clone(),
                            ready: true,
                        },
                    )
                })
                .collect(),
            Runtime::Unrunnable { reason, message } => self
                .images
                .iter()
                .map(|(name, _)| {
                    container(
                        name,
                        ContainerState::Waiting {
                            reason,
                            message: Some(message.clone()),
                        },
                    )
                })
                .collect(),
        };
        PodView {
            pod_ip: self.pod_ip,
            host_ip: network::NODE_IP,
            start_time: self.start_time.clone(),
            containers,
        }
    }

    /// Starts stopping the pod (its deletion was seen): an app pod finishes its in-flight
    /// requests first; a scaler gets SIGTERM.
    pub(super) fn begin_termination(&mut self, now: Instant, grace: Duration) {
        if self.deleting.is_some() {
            return;
        }
        self.deleting = Some((now, grace));
        if let Runtime::Scaler(scaler) = &mut self.runtime {
            scaler.restart_at = None;
            if let Some(process) = &scaler.process {
                // SAFETY: kill(2) with a pid this process spawned and has not reaped.
                unsafe {
                    libc::kill(process.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
    }

    /// Once terminating: stops what is done or out of time; true when nothing runs any more.
    pub(super) fn finish_termination(&mut self, now: Instant) -> bool {
        let Some((since, grace)) = self.deleting else {
            return false;
        };
        match &mut self.runtime {
            Runtime::App(app) => {
                if let Some(handle) = &app.start {
                    // Still starting: let it finish, then stop what it built.
                    if !handle.is_finished() {
                        return false;
                    }
                    app.start = None;
                }
                let idle = app.pod.as_ref().is_none_or(|p| p.in_flight() == 0);
                if idle || now >= since + APP_DRAIN.min(grace) {
                    app.pod = None;
                }
                app.pod.is_none()
            }
            Runtime::Scaler(scaler) => {
                if let Some(process) = &mut scaler.process {
                    let exited = process.try_status().ok().flatten().is_some();
                    if exited || now >= since + grace {
                        let _ = process.kill();
                        scaler.process = None;
                    }
                }
                scaler.process.is_none()
            }
            Runtime::Pause | Runtime::Unrunnable { .. } => true,
        }
    }

    /// Probes due now, with the address to call.
    pub(super) fn due_probes(&self, now: Instant) -> Vec<(ProbeKind, SocketAddr, Probe)> {
        let Runtime::Scaler(scaler) = &self.runtime else {
            return Vec::new();
        };
        if scaler.process.is_none() || self.deleting.is_some() {
            return Vec::new();
        }
        let ip = self.local_ip();
        let started_ok = scaler
            .startup
            .as_ref()
            .is_none_or(|t| t.verdict() == Some(true));
        [
            (ProbeKind::Startup, scaler.startup.as_ref(), !started_ok),
            (ProbeKind::Readiness, scaler.readiness.as_ref(), started_ok),
            (ProbeKind::Liveness, scaler.liveness.as_ref(), started_ok),
        ]
        .into_iter()
        .filter_map(|(kind, tracker, active)| {
            let tracker = tracker?;
            (active && tracker.due(now)).then(|| {
                (
                    kind,
                    SocketAddr::new(ip, tracker.probe().port),
                    tracker.probe().clone(),
                )
            })
        })
        .collect()
    }

    /// Marks the probes returned by [`LocalPod::due_probes`] as sent.
    pub(super) fn probes_sent(&mut self, kinds: &[ProbeKind], now: Instant) {
        let Runtime::Scaler(scaler) = &mut self.runtime else {
            return;
        };
        for kind in kinds {
            if let Some(tracker) = scaler.tracker(*kind) {
                tracker.sent(now);
            }
        }
    }

    /// Records a probe's result; true when the pod's reported state changed.
    pub(super) fn probe_result(&mut self, kind: ProbeKind, ok: bool, now: Instant) -> bool {
        let Runtime::Scaler(scaler) = &mut self.runtime else {
            return false;
        };
        if scaler.process.is_none() {
            return false;
        }
        let Some(tracker) = scaler.tracker(kind) else {
            return false;
        };
        let changed = tracker.record(ok);
        match (kind, changed) {
            (ProbeKind::Startup, Some(true)) => {
                if let Some(readiness) = &mut scaler.readiness {
                    readiness.run_now(now);
                }
                scaler.readiness.is_none()
            }
            (ProbeKind::Startup | ProbeKind::Liveness, Some(false)) => {
                tracing::info!(pod = %self.name, ?kind, "probe failed: restarting the container");
                scaler.stop(now, CRASH_BACKOFF);
                true
            }
            (ProbeKind::Readiness, Some(_)) => true,
            _ => false,
        }
    }
}

fn app_spec(
    runtime: &AppRuntime,
    name: &str,
    namespace: &str,
    workload: String,
    model: crate::app::AppModel,
    pod_ip: Ipv4Addr,
    dir: PathBuf,
) -> AppPodSpec {
    let local = network::local(IpAddr::V4(pod_ip)).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    AppPodSpec {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        workload,
        model,
        envoy_concurrency: runtime.envoy_concurrency,
        scaler_addr: runtime.report_to,
        plugin_config: runtime.plugin_config.clone(),
        wasm: runtime.wasm.clone(),
        envoy_binary: runtime.envoy_binary.clone(),
        work_dir: dir,
        listener: SocketAddr::new(local, runtime.port),
    }
}

impl ScalerContainer {
    fn tracker(&mut self, kind: ProbeKind) -> Option<&mut ProbeTracker> {
        match kind {
            ProbeKind::Startup => self.startup.as_mut(),
            ProbeKind::Readiness => self.readiness.as_mut(),
            ProbeKind::Liveness => self.liveness.as_mut(),
        }
    }

    fn state(&self) -> ContainerState {
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
    fn progress(&mut self, now: Instant) -> bool {
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

//! One pod on the sandbox's node: its processes, their states, and what the kubelet reports of
//! them ([`LocalPod::view`]). The node's loop ([`super::Node`]) drives it: accept, progress,
//! probe, terminate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{Timestamp, Unit};
use tokio::task::JoinHandle;

use super::containers::{self, Program};
use super::network::PodNetwork;
use super::probe::Probe;
use super::scaler_container::{CRASH_BACKOFF, ScalerContainer};
use super::status::{ContainerState, ContainerView, PodView, Transitions};
use super::{AppRuntime, NodeOptions};
use crate::app_pod::{self, AppPod, AppPodSpec};
/// How long a deleted app pod's sidecar keeps serving before it stops (Istio's
/// `terminationDrainDuration`, 5 s by default; at most the pod's grace period): clients that
/// have not yet seen the pod leave the EndpointSlices still reach it meanwhile.
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
    /// Its node's address.
    host_ip: Ipv4Addr,
    network: PodNetwork,
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
    /// After a failed API call for the pod, no other before this.
    pub(super) api_after: Option<Instant>,
    /// Deleted from the API (grace 0) once its processes were gone.
    pub(super) removed: bool,
}

impl LocalPod {
    /// Accepts `pod` at address `pod_ip`; `app_pods` counts app pods accepted so far (the
    /// scenario's `fail_after` applies to it).
    pub(super) fn accept(
        pod: &Pod,
        pod_ip: Ipv4Addr,
        options: &NodeOptions,
        app_pods: &mut u32,
    ) -> Option<Self> {
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
                        options.network.local_v4(pod_ip),
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
            Program::Scaler { container } => {
                Runtime::Scaler(Box::new(ScalerContainer::new(*container, Instant::now())))
            }
            Program::Pause => Runtime::Pause,
            Program::Unrunnable { reason, message } => Runtime::Unrunnable { reason, message },
        };
        Some(Self {
            source: pod.clone(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            name,
            namespace,
            pod_ip,
            host_ip: options.ip,
            network: options.network,
            dir,
            accepted: Instant::now(),
            start_time: now_rfc3339(),
            images,
            runtime,
            deleting: None,
            transitions: Transitions::new(),
            written: None,
            api_after: None,
            removed: false,
        })
    }

    /// The pod's loopback address on this machine.
    pub(super) fn local_ip(&self) -> IpAddr {
        self.network.local_v4(self.pod_ip)
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
    /// exited, a restart due.
    pub(super) fn progress(&mut self, now: Instant) {
        let accepted = self.accepted;
        let terminating = self.deleting.is_some();
        match &mut self.runtime {
            Runtime::App(app) => {
                if let Some(handle) = &app.start
                    && handle.is_finished()
                    && let Some(handle) = app.start.take()
                {
                    // Finished: its output is there without waiting.
                    match handle.now_or_never() {
                        Some(Ok(Ok(pod))) => {
                            app.pod = Some(pod);
                            app.proxy_started = Some(now_rfc3339());
                        }
                        Some(Ok(Err(error))) => app.failed = Some(error),
                        Some(Err(error)) => app.failed = Some(error.to_string()),
                        None => app.failed = Some("its start task did not finish".into()),
                    }
                    if let Some(error) = &app.failed {
                        tracing::warn!(pod = %self.name, %error, "pod failed to start");
                    }
                }
                // The app container "starts" once its start-up delay (image pull and boot,
                // which this machine cannot do) has passed.
                if app.app_started.is_none()
                    && !app.never_starts
                    && app.failed.is_none()
                    && now >= accepted + app.startup_delay
                {
                    app.app_started = Some(now_rfc3339());
                }
            }
            Runtime::Scaler(scaler) => scaler.progress(now, terminating),
            Runtime::Pause | Runtime::Unrunnable { .. } => {}
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
            Runtime::Scaler(scaler) => {
                let (state, last_state, restart_count) = scaler.view();
                vec![ContainerView {
                    name: scaler.container.name.clone(),
                    image: scaler.container.image.clone().unwrap_or_default(),
                    state,
                    last_state,
                    restart_count,
                }]
            }
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
            host_ip: self.host_ip,
            start_time: self.start_time.clone(),
            containers,
        }
    }

    /// Starts stopping the pod (its deletion was seen): an app pod's sidecar drains; a scaler
    /// gets SIGTERM and is never started again.
    pub(super) fn begin_termination(&mut self, now: Instant, grace: Duration) {
        if self.deleting.is_some() {
            return;
        }
        self.deleting = Some((now, grace));
        if let Runtime::Scaler(scaler) = &mut self.runtime {
            scaler.terminate();
        }
    }

    /// Once terminating: stops what is done or out of time; true when nothing runs any more.
    pub(super) fn finish_termination(&mut self, now: Instant) -> bool {
        let Some((since, grace)) = self.deleting else {
            return false;
        };
        let late = now >= since + grace;
        match &mut self.runtime {
            Runtime::App(app) => {
                if let Some(handle) = &app.start {
                    // Still starting: let it finish, then stop what it built.
                    if !handle.is_finished() {
                        return false;
                    }
                    app.start = None;
                }
                let drained = now >= since + APP_DRAIN.min(grace);
                let idle = app.pod.as_ref().is_none_or(|p| p.in_flight() == 0);
                if (drained && idle) || late {
                    app.pod = None;
                }
                app.pod.is_none()
            }
            Runtime::Scaler(scaler) => scaler.finish(late),
            Runtime::Pause | Runtime::Unrunnable { .. } => true,
        }
    }

    /// Probes due now, with the address to call.
    pub(super) fn due_probes(&self, now: Instant) -> Vec<(ProbeKind, SocketAddr, Probe)> {
        match &self.runtime {
            Runtime::Scaler(scaler) if self.deleting.is_none() => scaler
                .due_probes(now)
                .into_iter()
                .map(|(kind, probe)| (kind, SocketAddr::new(self.local_ip(), probe.port), probe))
                .collect(),
            _ => Vec::new(),
        }
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

    /// Records a probe's result: a startup probe that passes runs readiness at once; a startup
    /// or liveness probe that fails its threshold restarts the container.
    pub(super) fn probe_result(&mut self, kind: ProbeKind, ok: bool, now: Instant) {
        let Runtime::Scaler(scaler) = &mut self.runtime else {
            return;
        };
        if scaler.process.is_none() || self.deleting.is_some() {
            return;
        }
        let Some(tracker) = scaler.tracker(kind) else {
            return;
        };
        match (kind, tracker.record(ok)) {
            (ProbeKind::Startup, Some(true)) => {
                if let Some(readiness) = scaler.tracker(ProbeKind::Readiness) {
                    readiness.run_now(now);
                }
            }
            (ProbeKind::Startup | ProbeKind::Liveness, Some(false)) => {
                tracing::info!(pod = %self.name, ?kind, "probe failed: restarting the container");
                scaler.kill(now, CRASH_BACKOFF);
            }
            _ => {}
        }
    }
}

fn app_spec(
    runtime: &AppRuntime,
    name: &str,
    namespace: &str,
    workload: String,
    model: crate::app::AppModel,
    local: IpAddr,
    dir: PathBuf,
) -> AppPodSpec {
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
        // Where Istio's sidecar serves its Envoy's stats (the `http-envoy-prom` port the
        // Deployment declares), on the pod's own address: Prometheus scrapes it there.
        admin: SocketAddr::new(local, super::containers::ISTIO_STATS_PORT),
    }
}

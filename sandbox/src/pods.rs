//! The Deployment's pods: a controller inside the sandbox that watches `spec.replicas` in the
//! embedded API, starts a pod (app + real Envoy sidecar with the filter) per missing replica,
//! marks it ready after the start-up delay, drains and stops pods when replicas fall, and
//! writes `status.replicas`/`readyReplicas` back, as the Deployment and kubelet would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::AppModel;
use crate::app_pod::{self, AppPod, AppPodSpec};
use crate::kubeapi::KubeApi;

/// How long a pod that is scaled away may finish its in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the controller reconciles when nothing changes in the API.
const RESYNC: Duration = Duration::from_millis(100);

/// What every pod of the workload looks like.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    /// Namespace of the Deployment.
    pub namespace: String,
    /// Name of the Deployment (also the workload name in the proxies' metadata).
    pub workload: String,
    /// The app's capacity.
    pub model: AppModel,
    /// Time from creation to readiness.
    pub startup_delay: Duration,
    /// Pods created after this many never become ready (a crash loop).
    pub fail_after: Option<u32>,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// Where the proxies send reports (the scaler, or a dead address).
    pub scaler_addr: SocketAddr,
    /// The filter's .wasm.
    pub wasm: PathBuf,
    /// The Envoy binary.
    pub envoy_binary: PathBuf,
    /// Directory for each pod's Envoy files.
    pub work_dir: PathBuf,
}

/// A ready pod the load can be sent to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Pod name.
    pub pod: String,
    /// The Envoy listener.
    pub addr: SocketAddr,
}

/// The ready endpoints, shared with the load generator (the Service's endpoints).
pub type Endpoints = Arc<RwLock<Vec<Endpoint>>>;

/// Endpoints that are one fixed address.
pub fn fixed_endpoint(name: &str, addr: SocketAddr) -> Endpoints {
    Arc::new(RwLock::new(vec![Endpoint {
        pod: name.to_owned(),
        addr,
    }]))
}

/// One change of the pod counts.
#[derive(Debug, Clone, Copy)]
pub struct PodCounts {
    /// When.
    pub at: Instant,
    /// Pods the Deployment wants (`spec.replicas`).
    pub desired: u32,
    /// Pods that exist and are not being removed (ready or starting).
    pub replicas: u32,
    /// Ready pods.
    pub ready: u32,
    /// Pods consuming resources (including those draining).
    pub running: u32,
}

enum Phase {
    Starting,
    Ready,
    Failed,
}

struct Pod {
    name: String,
    created: Instant,
    phase: Phase,
    runtime: Option<AppPod>,
    start: Option<JoinHandle<Result<AppPod, String>>>,
}

struct Draining {
    since: Instant,
    runtime: Option<AppPod>,
    start: Option<JoinHandle<Result<AppPod, String>>>,
}

/// The running controller; [`Pods::shutdown`] stops every pod.
pub struct Pods {
    endpoints: Endpoints,
    history: Arc<Mutex<Vec<PodCounts>>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Pods {
    /// Starts the controller for `template`'s Deployment in `api`.
    pub fn start(api: Arc<KubeApi>, template: PodTemplate) -> Self {
        let endpoints: Endpoints = Arc::default();
        let history: Arc<Mutex<Vec<PodCounts>>> = Arc::default();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(control(
            api,
            template,
            Arc::clone(&endpoints),
            Arc::clone(&history),
            stopped,
        ));
        Self {
            endpoints,
            history,
            stop,
            task: Some(task),
        }
    }

    /// The ready endpoints.
    pub fn endpoints(&self) -> Endpoints {
        Arc::clone(&self.endpoints)
    }

    /// Every change of the pod counts so far.
    pub fn history(&self) -> Vec<PodCounts> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest counts.
    pub fn current(&self) -> Option<PodCounts> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
    }

    /// Stops the controller and every pod (Envoys are killed, apps stopped).
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

fn start_pod(template: &PodTemplate, name: &str) -> JoinHandle<Result<AppPod, String>> {
    app_pod::start(AppPodSpec {
        name: name.to_owned(),
        namespace: template.namespace.clone(),
        workload: template.workload.clone(),
        model: template.model,
        envoy_concurrency: template.envoy_concurrency,
        scaler_addr: template.scaler_addr,
        plugin_config: json!({"report_interval_ms": 1000}),
        wasm: template.wasm.clone(),
        envoy_binary: template.envoy_binary.clone(),
        work_dir: template.work_dir.join(name),
        listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
    })
}

async fn control(
    api: Arc<KubeApi>,
    template: PodTemplate,
    endpoints: Endpoints,
    history: Arc<Mutex<Vec<PodCounts>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut changes = api.store().subscribe();
    let mut pods: Vec<Pod> = Vec::new();
    let mut draining: Vec<Draining> = Vec::new();
    let mut created: u32 = 0;
    let mut last_status: Option<(u32, u32)> = None;
    let mut last_counts: Option<(u32, u32, u32, u32)> = None;
    // Pod names like a ReplicaSet's: <deployment>-<template hash>-<suffix>.
    let name_of = |n: u32| {
        format!(
            "{}-5d8f7c9b4-{:05x}",
            template.workload,
            (n * 7919 + 4099) % 0xfffff
        )
    };
    loop {
        if *stopped.borrow() {
            break;
        }
        let desired = api
            .desired_replicas(&template.namespace, &template.workload)
            .unwrap_or(0);
        let now = Instant::now();

        // Scale up: new pods, started at once; ready after the start-up delay.
        while (pods.len() as u32) < desired {
            let name = name_of(created);
            let failing = template.fail_after.is_some_and(|n| created >= n);
            created += 1;
            let start = (!failing).then(|| start_pod(&template, &name));
            if failing {
                tracing::info!(pod = %name, "pod will not start (fail_after)");
            }
            pods.push(Pod {
                name,
                created: now,
                phase: Phase::Starting,
                runtime: None,
                start,
            });
        }
        // Scale down: not-ready pods first, then the newest, as the ReplicaSet controller does.
        while (pods.len() as u32) > desired {
            let victim = pods
                .iter()
                .rposition(|p| !matches!(p.phase, Phase::Ready))
                .unwrap_or(pods.len() - 1);
            let pod = pods.remove(victim);
            endpoints
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|e| e.pod != pod.name);
            draining.push(Draining {
                since: now,
                runtime: pod.runtime,
                start: pod.start,
            });
        }

        // Progress of starting pods.
        for pod in &mut pods {
            if let Some(handle) = &pod.start
                && handle.is_finished()
                && let Some(handle) = pod.start.take()
            {
                match handle.await {
                    Ok(Ok(runtime)) => pod.runtime = Some(runtime),
                    Ok(Err(error)) => {
                        tracing::warn!(pod = %pod.name, %error, "pod failed to start");
                        pod.phase = Phase::Failed;
                    }
                    Err(error) => {
                        tracing::warn!(pod = %pod.name, %error, "pod start task failed");
                        pod.phase = Phase::Failed;
                    }
                }
            }
            if matches!(pod.phase, Phase::Starting)
                && now >= pod.created + template.startup_delay
                && let Some(runtime) = &pod.runtime
            {
                pod.phase = Phase::Ready;
                endpoints
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Endpoint {
                        pod: pod.name.clone(),
                        addr: runtime.listener(),
                    });
            }
        }

        // Draining pods stop once idle (or after the drain timeout).
        draining.retain_mut(|d| {
            if let Some(handle) = &d.start {
                // Still starting: let it finish, then drop what it built.
                if !handle.is_finished() {
                    return true;
                }
                d.start = None;
                return false;
            }
            let idle = d.runtime.as_ref().is_none_or(|r| r.in_flight() == 0);
            !(idle || now >= d.since + DRAIN_TIMEOUT)
        });

        let ready = pods
            .iter()
            .filter(|p| matches!(p.phase, Phase::Ready))
            .count() as u32;
        let replicas = pods.len() as u32;
        let running = (pods
            .iter()
            .filter(|p| p.runtime.is_some() || p.start.is_some())
            .count()
            + draining.len()) as u32;
        if last_status != Some((replicas, ready)) {
            match api.set_deployment_status(
                &template.namespace,
                &template.workload,
                replicas,
                ready,
            ) {
                Ok(_) => last_status = Some((replicas, ready)),
                Err(error) => tracing::warn!(?error, "cannot write the Deployment's status"),
            }
        }
        if last_counts != Some((desired, replicas, ready, running)) {
            last_counts = Some((desired, replicas, ready, running));
            history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(PodCounts {
                    at: now,
                    desired,
                    replicas,
                    ready,
                    running,
                });
        }

        tokio::select! {
            _ = changes.changed() => {}
            _ = stopped.changed() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
    endpoints.write().unwrap_or_else(|e| e.into_inner()).clear();
    // Stop everything: Envoys are killed when their guards drop; starts in progress are awaited
    // so that no Envoy started by a blocking thread outlives the sandbox.
    for pod in pods {
        if let Some(handle) = pod.start {
            let _ = handle.await;
        }
    }
    for d in draining {
        if let Some(handle) = d.start {
            let _ = handle.await;
        }
    }
}

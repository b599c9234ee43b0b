//! The running parts of a sandbox: Kubernetes (the embedded API with its pods controller, or
//! the real control plane with the sandbox's node), the scaler, the report tap. `run` plays a
//! scenario on it, `bench-reaction` steps the load on it.
//!
//! ```text
//!                     embedded (--kube embedded)            real (--kube real)
//!  Kubernetes API     kubeapi::KubeApi (this repo)           kube-apiserver 1.35 + etcd
//!  Deployment, pods   pods::Pods (follows spec.replicas)     controller-manager, scheduler, node
//!  surge-scaler       a child process, admin kubeconfig      the chart's pod, its ServiceAccount
//!  scale writes seen  the API's request log                  the API server's audit log
//!  load goes to       the pods' listeners                    the Service's ready EndpointSlices
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::classic::Autoscaler;
use crate::ingress::{HoldCounts, Ingress};
use crate::kubeapi::{KubeApi, Part, RequestRecord, resources};
use crate::pods::{Endpoints, PodCounts, Pods};
use crate::real::RealKube;
use crate::run::{NAMESPACE, RunError, WORKLOAD};
use crate::scaler::{Scaler, ScalerOptions};
use crate::scenario::Scenario;
use crate::tap::{ReportSeen, Tap};

mod start;

/// The SurgeScaler CRD the scaler generates; its schema defaults are applied by the embedded
/// API as a real API server would.
const SURGESCALER_CRD: &str = include_str!("../../deploy/crds/surgescaler.yaml");

/// Which Kubernetes a sandbox runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeMode {
    /// The embedded API of `src/kubeapi/` and the sandbox's pods controller: starts in
    /// milliseconds and has fault hooks a real server lacks, but is not a Kubernetes
    /// (sandbox/README.md lists what it lacks).
    Embedded,
    /// The real control plane built by `make tools`, the chart installed with helm, the
    /// sandbox's node playing the kubelet.
    #[default]
    Real,
}

/// How to start a sandbox.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Where logs, pod files and the kubeconfig go.
    pub out_dir: PathBuf,
    /// Start the scaler (embedded: `false` leaves it to [`Sandbox::start_scaler`]).
    pub start_scaler: bool,
    /// Which Kubernetes.
    pub kube: KubeMode,
    /// Extra `helm install --set` values (real only).
    pub helm_set: Vec<String>,
    /// Print the kubeconfig's path once the control plane is up (real only).
    pub announce: bool,
    /// Which autoscaler drives the app (the classic chain: real only).
    pub autoscaler: Autoscaler,
}

impl StartOptions {
    /// On the embedded API, the scaler started, files under `out_dir`.
    pub fn embedded(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            start_scaler: true,
            kube: KubeMode::Embedded,
            helm_set: Vec::new(),
            announce: false,
            autoscaler: Autoscaler::Surge,
        }
    }
}

/// The embedded API, its pods and the scaler process.
struct Embedded {
    api: Arc<KubeApi>,
    pods: Option<Pods>,
    scaler: Option<Scaler>,
    scaler_options: ScalerOptions,
}

enum Backend {
    Embedded(Box<Embedded>),
    Real(Box<RealKube>),
}

/// A started sandbox; [`Sandbox::shutdown`] (or dropping it) stops every process.
pub struct Sandbox {
    // Drop order: the way in before the pods behind it.
    ingress: Option<Ingress>,
    backend: Backend,
    tap: Option<Tap>,
    /// Where the proxies send their reports (the tap, or the refusing/hanging stand-in).
    report_to: SocketAddr,
    _hanging: Option<JoinHandle<()>>,
}

/// The scenario's SurgeScaler for the app's Deployment.
pub fn surgescaler(scenario: &Scenario) -> Value {
    let s = &scenario.scaler;
    let mut spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKLOAD},
        "minReplicas": s.min_replicas,
        "maxReplicas": s.max_replicas,
        "metric": {"type": s.metric, "target": s.target},
    });
    if let Some(stable) = s.stable_window_s {
        spec["windows"] = json!({"stableSeconds": stable});
    }
    if let Some(window) = s.scale_down_stabilization_s {
        spec["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": window}});
    }
    if let Some(idle) = s.idle_s {
        spec["scaleToZero"] = json!({"idleSeconds": idle, "service": WORKLOAD, "port": 80});
    }
    if let Some(headroom) = &s.headroom {
        spec["headroom"] = json!({
            "minReplicas": headroom.min_replicas,
            "burstWindowSeconds": headroom.burst_window_s,
        });
        if let Some(max) = headroom.max_replicas {
            spec["headroom"]["maxReplicas"] = json!(max);
        }
    }
    json!({
        "apiVersion": "surge.dev/v1alpha1",
        "kind": "SurgeScaler",
        "metadata": {"name": WORKLOAD, "namespace": NAMESPACE},
        "spec": spec,
    })
}

impl KubeMode {
    /// What this Kubernetes is, for the summary and `result.json`.
    pub fn describe(self) -> String {
        match self {
            Self::Embedded => "embedded API (sandbox/src/kubeapi: not a Kubernetes; no controllers, \
                               scheduler, kubelet, RBAC or admission; pods simulated by the sandbox)"
                .into(),
            Self::Real => format!(
                "real: kube-apiserver, kube-controller-manager, kube-scheduler {}, etcd {}; the \
                 chart installed by helm {}; the sandbox's node as kubelet",
                surge_cluster::components::kubernetes_version(),
                surge_cluster::components::etcd_version(),
                surge_cluster::components::helm_version()
            ),
        }
    }
}

impl Sandbox {
    /// The filter's hold counters on the gateway or caller's sidecar, if the load goes through
    /// one.
    pub fn hold_counts(&self) -> Option<HoldCounts> {
        self.ingress.as_ref()?.hold_counts()
    }

    /// The endpoints the load goes to: the gateway or the caller's sidecar, else the ready pods.
    pub fn endpoints(&self) -> Endpoints {
        match &self.ingress {
            Some(ingress) => ingress.endpoints(),
            None => self.pod_endpoints(),
        }
    }

    /// The app Service's ready endpoints.
    fn pod_endpoints(&self) -> Endpoints {
        match &self.backend {
            Backend::Embedded(e) => e.pods.as_ref().map(Pods::endpoints).unwrap_or_default(),
            Backend::Real(real) => real.endpoints(),
        }
    }

    /// Every change of the pod counts so far.
    pub fn history(&self) -> Vec<PodCounts> {
        match &self.backend {
            Backend::Embedded(e) => e.pods.as_ref().map(Pods::history).unwrap_or_default(),
            Backend::Real(real) => real.history(),
        }
    }

    /// The latest pod counts.
    pub fn current(&self) -> Option<PodCounts> {
        match &self.backend {
            Backend::Embedded(e) => e.pods.as_ref().and_then(Pods::current),
            Backend::Real(real) => real.history().last().copied(),
        }
    }

    /// The scaler's API requests so far (embedded: every request the API served; real: the
    /// scaler's, from the API server's audit log).
    pub fn requests(&self) -> Vec<RequestRecord> {
        match &self.backend {
            Backend::Embedded(e) => e.api.requests(),
            Backend::Real(real) => real.requests(),
        }
    }

    /// Waits for the first request matching `matches`, up to `timeout`.
    pub async fn wait_for_request(
        &self,
        timeout: Duration,
        matches: impl Fn(&RequestRecord) -> bool,
    ) -> Option<RequestRecord> {
        match &self.backend {
            Backend::Embedded(e) => e.api.wait_for_request(timeout, matches).await,
            Backend::Real(real) => real.wait_for_request(timeout, matches).await,
        }
    }

    /// Sets the Deployment's replicas, as an operator would.
    pub async fn set_replicas(&self, replicas: u32) -> Result<(), RunError> {
        match &self.backend {
            Backend::Embedded(e) => e
                .api
                .store()
                .modify(
                    resources::DEPLOYMENTS,
                    NAMESPACE,
                    WORKLOAD,
                    Part::Scale,
                    false,
                    |_| Ok(json!({"spec": {"replicas": replicas}})),
                )
                .map(|_| ())
                .map_err(|e| RunError::Setup(format!("reset replicas: {}", e.message))),
            Backend::Real(real) => real.set_replicas(replicas).await,
        }
    }

    /// Waits until at least `ready` pods are ready.
    pub async fn wait_ready(&self, ready: u32, timeout: Duration) -> Result<(), RunError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now_ready = self.current().map_or(0, |c| c.ready);
            if now_ready >= ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RunError::Setup(format!(
                    "only {now_ready} of {ready} pods became ready within {timeout:?} (see the Envoy logs under pods/)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the scaler (again). Embedded: a new process, awaited until ready. Real: the
    /// node restarts the scaler container now (it was killed by [`Sandbox::kill_scaler`]).
    pub async fn start_scaler(&mut self) -> Result<(), RunError> {
        match &mut self.backend {
            Backend::Embedded(e) => {
                if let Some(old) = e.scaler.take() {
                    old.kill();
                }
                let options = e.scaler_options.clone();
                let scaler = tokio::task::spawn_blocking(move || {
                    Scaler::start(&options, Duration::from_secs(20))
                })
                .await
                .map_err(|e| RunError::Setup(format!("scaler start task: {e}")))??;
                e.scaler = Some(scaler);
            }
            Backend::Real(real) => {
                if let Some(node) = real.node() {
                    node.restart_scaler();
                }
            }
        }
        Ok(())
    }

    /// Kills the scaler (SIGKILL). Real: the scaler container, which the node restarts only
    /// on [`Sandbox::start_scaler`].
    pub fn kill_scaler(&mut self) {
        match &mut self.backend {
            Backend::Embedded(e) => {
                if let Some(scaler) = e.scaler.take() {
                    scaler.kill();
                }
            }
            Backend::Real(real) => {
                if let Some(node) = real.node() {
                    node.kill_scaler(Duration::from_secs(24 * 3600));
                }
            }
        }
    }

    /// SIGKILLs the scaler replica that owns the app's SurgeScaler (real control plane only);
    /// the node starts it again after `restart_after`. Answers the replica's pod name.
    pub async fn kill_scaler_owner(&mut self, restart_after: Duration) -> Result<String, String> {
        let Backend::Real(real) = &self.backend else {
            return Err("kill_scaler_owner needs the real control plane".into());
        };
        let owner = crate::real::target_owner(&real.client(), NAMESPACE, WORKLOAD)
            .await
            .ok_or("no scaler replica holds the app's shard Lease")?;
        let node = real.node().ok_or("the node is not running")?;
        node.kill_scaler_pod(&owner, restart_after);
        Ok(owner)
    }

    /// The scaler's admin address (`/metrics`, `/healthz`, `/readyz`); real: once its pod is
    /// ready.
    pub fn scaler_admin(&self) -> Option<SocketAddr> {
        match &self.backend {
            Backend::Embedded(e) => Some(e.scaler_options.admin),
            Backend::Real(real) => real.scaler_admin(),
        }
    }

    /// The real control plane, when running on it.
    pub fn real(&self) -> Option<&RealKube> {
        match &self.backend {
            Backend::Real(real) => Some(real),
            Backend::Embedded(_) => None,
        }
    }

    /// The real control plane, to fault it.
    pub fn real_mut(&mut self) -> Option<&mut RealKube> {
        match &mut self.backend {
            Backend::Real(real) => Some(real),
            Backend::Embedded(_) => None,
        }
    }

    /// The kubeconfig to watch the sandbox with.
    pub fn kubeconfig(&self) -> PathBuf {
        match &self.backend {
            Backend::Embedded(e) => e.scaler_options.kubeconfig.clone(),
            Backend::Real(real) => real.kubeconfig().to_path_buf(),
        }
    }

    /// The port the proxies send their reports to.
    pub fn report_port(&self) -> u16 {
        self.report_to.port()
    }

    /// Reports that passed from the proxies to the scaler so far.
    pub fn reports(&self) -> Vec<ReportSeen> {
        self.tap.as_ref().map(Tap::seen).unwrap_or_default()
    }

    /// Stops the scaler and every pod.
    pub async fn shutdown(mut self) {
        self.ingress = None;
        match self.backend {
            Backend::Embedded(mut e) => {
                if let Some(scaler) = e.scaler.take() {
                    scaler.kill();
                }
                if let Some(pods) = e.pods.take() {
                    pods.shutdown().await;
                }
            }
            Backend::Real(real) => real.shutdown().await,
        }
    }
}

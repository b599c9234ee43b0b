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

use crate::app::AppModel;
use crate::classic::Autoscaler;
use crate::envoy::{locate_envoy, locate_filter_wasm};
use crate::ingress::{HoldCounts, Ingress, IngressOptions, Via};
use crate::kubeapi::{KubeApi, Options, Part, RequestRecord, resources};
use crate::pods::{Endpoints, PodCounts, PodTemplate, Pods, fixed_endpoint};
use crate::real::RealKube;
use crate::run::{NAMESPACE, RunError, WORKLOAD, io};
use crate::scaler::{Scaler, ScalerOptions, free_port, locate_scaler};
use crate::scenario::{Fault, Reachability, Scenario};
use crate::tap::{ReportSeen, Tap};

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

/// A listener that accepts connections and never answers (a hung scaler).
async fn hanging_listener() -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok((addr, task))
}

/// The report path: the tap in front of `scaler`, or the scenario's refusing or hanging
/// stand-in.
async fn report_path(
    reachability: Reachability,
    scaler: Endpoints,
) -> Result<(Option<Tap>, SocketAddr, Option<JoinHandle<()>>), RunError> {
    Ok(match reachability {
        Reachability::Reachable => {
            let tap = Tap::start(scaler)
                .await
                .map_err(io("start the report tap"))?;
            let addr = tap.addr();
            (Some(tap), addr, None)
        }
        Reachability::Refused => (None, free_port().map_err(io("pick a closed port"))?, None),
        Reachability::Hanging => {
            let (addr, task) = hanging_listener()
                .await
                .map_err(io("start a hanging listener"))?;
            (None, addr, Some(task))
        }
    })
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
    /// Starts Kubernetes, the Deployment at `minReplicas`, its pods and (see
    /// [`StartOptions::start_scaler`]) the scaler, and applies the SurgeScaler. Waits until the
    /// first pods are ready.
    pub async fn start(scenario: &Scenario, options: &StartOptions) -> Result<Self, RunError> {
        let envoy_binary = locate_envoy()?;
        let wasm = locate_filter_wasm()?;
        std::fs::create_dir_all(&options.out_dir)
            .map_err(io(format!("create {}", options.out_dir.display())))?;
        // Absolute: the pods' processes run in their own folders, and the paths handed to them
        // (kubeconfigs, token files) must not depend on where they run.
        let out_dir = &std::path::absolute(&options.out_dir)
            .map_err(io(format!("resolve {}", options.out_dir.display())))?;
        let options = &StartOptions {
            out_dir: out_dir.clone(),
            ..options.clone()
        };
        let pods_dir = out_dir.join("pods");
        let _ = std::fs::remove_dir_all(&pods_dir);
        match options.kube {
            KubeMode::Embedded if scenario.scaler.min_replicas == 0 => Err(RunError::Setup(
                "scaler.min_replicas 0 (scale to zero) needs the real control plane (--kube \
                 real): the embedded API serves no Services or EndpointSlices, which say when \
                 the app is warm again"
                    .into(),
            )),
            KubeMode::Embedded
                if scenario.scaler.replicas.is_some_and(|n| n > 1)
                    || scenario
                        .faults
                        .iter()
                        .any(|f| matches!(f, Fault::KillScalerOwner { .. })) =>
            {
                Err(RunError::Setup(
                    "scaler.replicas above 1 and the kill_scaler_owner fault need the real \
                     control plane (--kube real): there the chart runs the scaler as a \
                     Deployment's pods; on the embedded API the sandbox runs one scaler \
                     process itself"
                        .into(),
                ))
            }
            KubeMode::Embedded if scenario.nodes.is_some() => Err(RunError::Setup(
                "nodes: needs the real control plane (--kube real): Karpenter adds the nodes \
                 and the real scheduler places the pods"
                    .into(),
            )),
            KubeMode::Embedded if options.autoscaler != Autoscaler::Surge => Err(RunError::Setup(
                "--autoscaler classic needs the real control plane (--kube real): the classic \
                 chain is the real HPA controller, KEDA and Prometheus"
                    .into(),
            )),
            KubeMode::Embedded => {
                Self::start_embedded(scenario, options, envoy_binary, wasm, pods_dir).await
            }
            KubeMode::Real => {
                Self::start_real(scenario, options, envoy_binary, wasm, pods_dir).await
            }
        }
    }

    async fn start_embedded(
        scenario: &Scenario,
        options: &StartOptions,
        envoy_binary: PathBuf,
        wasm: PathBuf,
        pods_dir: PathBuf,
    ) -> Result<Self, RunError> {
        let scaler_binary = locate_scaler()?;
        let out_dir = &options.out_dir;
        let api = Arc::new(
            KubeApi::start(Options::default())
                .await
                .map_err(io("start the embedded API"))?,
        );
        api.register_crd(SURGESCALER_CRD).map_err(RunError::Setup)?;
        let kubeconfig = out_dir.join("kubeconfig.yaml");
        api.write_kubeconfig(&kubeconfig, NAMESPACE)
            .map_err(io("write the kubeconfig"))?;
        api.create_deployment(NAMESPACE, WORKLOAD, scenario.scaler.min_replicas)
            .map_err(|e| RunError::Setup(format!("create the Deployment: {}", e.message)))?;

        let ingest = free_port().map_err(io("pick the scaler's ingest port"))?;
        let admin = free_port().map_err(io("pick the scaler's admin port"))?;
        let (tap, report_to, hanging) = report_path(
            scenario.scaler.reachability,
            fixed_endpoint("surge-scaler", ingest),
        )
        .await?;
        let pods = Pods::start(
            Arc::clone(&api),
            PodTemplate {
                namespace: NAMESPACE.into(),
                workload: WORKLOAD.into(),
                model: AppModel {
                    concurrency: scenario.pods.concurrency,
                    service_time: Duration::from_millis(scenario.pods.service_time_ms),
                    queue: scenario.pods.queue,
                },
                startup_delay: Duration::from_millis(scenario.pods.startup_delay_ms),
                fail_after: scenario.pods.fail_after,
                envoy_concurrency: scenario.pods.envoy_concurrency,
                scaler_addr: report_to,
                wasm,
                envoy_binary,
                work_dir: pods_dir,
            },
        );
        let scaler_log = out_dir.join("scaler.log");
        let _ = std::fs::remove_file(&scaler_log);
        api.store()
            .create(resources::SURGESCALERS, NAMESPACE, surgescaler(scenario))
            .map_err(|e| RunError::Setup(format!("apply the SurgeScaler: {}", e.message)))?;
        let mut sandbox = Self {
            ingress: None,
            backend: Backend::Embedded(Box::new(Embedded {
                api,
                pods: Some(pods),
                scaler: None,
                scaler_options: ScalerOptions {
                    binary: scaler_binary,
                    kubeconfig,
                    ingest,
                    admin,
                    log: scaler_log,
                },
            })),
            tap,
            report_to,
            _hanging: hanging,
        };
        sandbox
            .wait_ready(scenario.scaler.min_replicas, Duration::from_secs(60))
            .await?;
        if options.start_scaler {
            sandbox.start_scaler().await?;
        }
        sandbox
            .start_ingress(scenario, options, json!({"report_interval_ms": 1000}))
            .await?;
        Ok(sandbox)
    }

    async fn start_real(
        scenario: &Scenario,
        options: &StartOptions,
        envoy_binary: PathBuf,
        wasm: PathBuf,
        pods_dir: PathBuf,
    ) -> Result<Self, RunError> {
        let mut real = RealKube::start(&options.out_dir, options.announce).await?;
        // The scenario's replica count first: a `--set` of the caller's comes later and wins.
        let helm_set: Vec<String> = scenario
            .scaler
            .replicas
            .map(|n| format!("replicaCount={n}"))
            .into_iter()
            .chain(options.helm_set.iter().cloned())
            .collect();
        real.install_chart(&helm_set).await?;
        let (tap, report_to, hanging) =
            report_path(scenario.scaler.reachability, real.scaler_endpoints()).await?;
        real.start_node(scenario, pods_dir, report_to, envoy_binary, wasm)
            .await?;
        real.wait_scaler_ready(Duration::from_secs(60)).await?;
        if let Some(nodes) = &scenario.nodes {
            real.start_karpenter(&nodes.pool()).await?;
        }
        let scaler = (options.autoscaler == Autoscaler::Surge).then(|| surgescaler(scenario));
        real.deploy_app(scenario, scaler).await?;
        real.start_classic(
            scenario,
            options.autoscaler,
            &options.out_dir.join("classic"),
        )
        .await?;
        let plugin_config = real.plugin_config().clone();
        let mut sandbox = Self {
            ingress: None,
            backend: Backend::Real(Box::new(real)),
            tap,
            report_to,
            _hanging: hanging,
        };
        sandbox
            .wait_ready(scenario.scaler.min_replicas.max(1), Duration::from_secs(60))
            .await?;
        sandbox
            .start_ingress(scenario, options, plugin_config)
            .await?;
        Ok(sandbox)
    }

    /// Starts where the load enters (the gateway or the caller's sidecar, when the scenario
    /// has one).
    async fn start_ingress(
        &mut self,
        scenario: &Scenario,
        options: &StartOptions,
        plugin_config: Value,
    ) -> Result<(), RunError> {
        if scenario.traffic.via == Via::Sidecars {
            return Ok(());
        }
        let ingress = Ingress::start(
            IngressOptions {
                via: scenario.traffic.via,
                namespace: NAMESPACE.into(),
                service: WORKLOAD.into(),
                report_to: self.report_to,
                plugin_config,
                hold: scenario.traffic.hold,
                wasm: locate_filter_wasm()?,
                envoy_binary: locate_envoy()?,
                envoy_concurrency: scenario.pods.envoy_concurrency,
                work_dir: options.out_dir.join("ingress"),
            },
            self.pod_endpoints(),
        )
        .await?;
        self.ingress = Some(ingress);
        Ok(())
    }

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

//! The sandbox on the real control plane (`surge-sandbox run --kube real`): Kubernetes 1.35 as
//! built by `make tools`, the chart installed with helm, the scaler running as the chart's pod
//! under the chart's ServiceAccount, the app as a Deployment whose Pods the real controllers
//! make and the real scheduler binds to the sandbox's node ([`crate::node`]).
//!
//! ```text
//!  ControlPlane (etcd, kube-apiserver, controller-manager, scheduler)
//!     ^  helm install deploy/chart/surge (CRD, RBAC, ServiceAccount, Secret, Service, Deployment)
//!     |  Deployment/app + Service/app + SurgeScaler/app (as kubectl apply would)
//!     |
//!  node (kubelet): runs the scaler pod and the app pods (Envoy + filter + app)
//!  ServiceEndpoints(app)    --> load generator      (what an EndpointSlice says is ready)
//!  ServiceEndpoints(scaler) --> report tap --> scaler pod
//!  audit log --> the scaler's API calls, timed by the API server
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use surge_cluster::audit::{AuditLog, AuditRecord};
use surge_cluster::{ControlPlane, Options as PlaneOptions};
use tokio::task::JoinHandle;

use crate::classic::{Autoscaler, ClassicChain};
use crate::endpoints::ServiceEndpoints;
use crate::envoy::workspace_root;
use crate::karpenter::NodeElasticity;
use crate::kubeapi::RequestRecord;
use crate::node::network::{LoopbackRange, NODE_IP, PodIps};
use crate::node::{AppRuntime, Node, NodeOptions, RunningPods};
use crate::pods::{Endpoints, PodCounts};
use crate::run::{NAMESPACE, RunError, WORKLOAD};
use crate::scenario::Scenario;
use surge_nodes::nodepool::PoolSettings;

mod app;

/// The chart's release, namespace and objects' name, as INSTALL.md installs them.
pub const RELEASE: &str = "surge";
/// The namespace the chart is installed into.
pub const SCALER_NAMESPACE: &str = "surge-system";
/// The chart's ServiceAccount, Service and Deployment.
pub const SCALER_NAME: &str = "surge-scaler";
/// The node's name.
pub const NODE_NAME: &str = "surge-sandbox-node";
/// The port the app's sidecar serves on (the Service's target port).
const APP_PORT: u16 = 8080;

fn setup(context: &str) -> impl FnOnce(String) -> RunError + '_ {
    move |e| RunError::Setup(format!("{context}: {e}"))
}

fn kube_setup(context: &str) -> impl FnOnce(kube::Error) -> RunError + '_ {
    move |e| RunError::Setup(format!("{context}: {e}"))
}

/// The Kubernetes side of a sandbox on the real control plane.
pub struct RealKube {
    // Drop order: the node (and every pod's processes) before the control plane.
    node: Option<Node>,
    /// Karpenter and the nodes it added, once started.
    elasticity: Option<NodeElasticity>,
    /// The first node's settings, which the nodes Karpenter adds copy.
    node_template: Option<NodeOptions>,
    /// App pods running on every node.
    running: RunningPods,
    observer: Option<JoinHandle<()>>,
    app: Option<ServiceEndpoints>,
    scaler: ServiceEndpoints,
    scaler_admin: ServiceEndpoints,
    history: Arc<Mutex<Vec<PodCounts>>>,
    audit: Mutex<AuditLog>,
    /// The filter's `pluginConfig` as the WasmPlugins give it (the chart's token).
    plugin_config: Value,
    client: Client,
    network: LoopbackRange,
    /// The pod network's addresses, shared by the first node and those Karpenter adds.
    pod_ips: PodIps,
    /// Who writes the app's scale (the scaler, or the HPA controller under the classic chain).
    writer: String,
    /// Prometheus and KEDA, under `--autoscaler classic`; stopped before the control plane.
    classic: Option<ClassicChain>,
    plane: ControlPlane,
}

impl Drop for RealKube {
    fn drop(&mut self) {
        if let Some(observer) = self.observer.take() {
            observer.abort();
        }
    }
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl RealKube {
    /// Starts the control plane (files under `out_dir/cluster`). Prints the kubeconfig's path
    /// when `announce`.
    pub async fn start(out_dir: &Path, announce: bool) -> Result<Self, RunError> {
        let dir = out_dir.join("cluster");
        let _ = std::fs::remove_dir_all(&dir);
        let plane = ControlPlane::start(PlaneOptions::new(&dir))
            .await
            .map_err(|e| RunError::Setup(format!("start the control plane: {e}")))?;
        if announce {
            let times = plane.start_times();
            println!(
                "control plane ready in {:.1} s (Kubernetes {}); watch it with:\n  export KUBECONFIG={}\n  kubectl get surge,deploy,pods -A",
                times.total.as_secs_f64(),
                surge_cluster::components::kubernetes_version(),
                std::path::absolute(plane.admin_kubeconfig())
                    .unwrap_or_else(|_| plane.admin_kubeconfig().to_path_buf())
                    .display()
            );
        }
        let client = plane
            .client()
            .await
            .map_err(|e| RunError::Setup(e.to_string()))?;
        let network = LoopbackRange::claim()
            .map_err(|e| RunError::Setup(format!("claim a loopback range for the pods: {e}")))?;
        let scaler = ServiceEndpoints::follow(
            client.clone(),
            SCALER_NAMESPACE,
            SCALER_NAME,
            Some("http"),
            network.network(),
        );
        let scaler_admin = ServiceEndpoints::follow(
            client.clone(),
            SCALER_NAMESPACE,
            SCALER_NAME,
            Some("admin"),
            network.network(),
        );
        Ok(Self {
            node: None,
            elasticity: None,
            node_template: None,
            running: RunningPods::default(),
            observer: None,
            app: None,
            scaler,
            scaler_admin,
            history: Arc::default(),
            audit: Mutex::new(plane.audit_log()),
            plugin_config: Value::Null,
            client,
            network,
            pod_ips: PodIps::default(),
            writer: Autoscaler::Surge.writer(&format!(
                "system:serviceaccount:{SCALER_NAMESPACE}:{SCALER_NAME}"
            )),
            classic: None,
            plane,
        })
    }

    /// `helm install`s the chart into `surge-system`, with `helm_set` (extra `--set` values).
    pub async fn install_chart(&self, helm_set: &[String]) -> Result<(), RunError> {
        let mut helm = self
            .plane
            .helm()
            .map_err(|e| RunError::Setup(e.to_string()))?;
        helm.args(["install", RELEASE])
            .arg(workspace_root().join("deploy/chart/surge"))
            .args(["--namespace", SCALER_NAMESPACE, "--create-namespace"]);
        for set in helm_set {
            helm.args(["--set", set]);
        }
        let output = tokio::task::spawn_blocking(move || helm.output())
            .await
            .map_err(|e| RunError::Setup(format!("helm: {e}")))?
            .map_err(|source| RunError::Io {
                context: "run helm".into(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(RunError::Setup(format!(
                "helm install failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// The filter's `pluginConfig` the node gives the app pods' sidecars (set by
    /// [`RealKube::start_node`]).
    pub fn plugin_config(&self) -> &Value {
        &self.plugin_config
    }

    /// The scaler Service's ready endpoints (where the report tap forwards).
    pub fn scaler_endpoints(&self) -> Endpoints {
        self.scaler.endpoints()
    }

    /// The scaler pod's report ingest address, once it is ready.
    pub fn scaler_ingest(&self) -> Option<SocketAddr> {
        let endpoints = self.scaler.endpoints();
        let endpoints = endpoints.read().unwrap_or_else(|e| e.into_inner());
        endpoints.first().map(|e| e.addr)
    }

    /// A client with the administrator's identity.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The ready scaler pods' admin endpoints (`/metrics`, `/readyz`), by pod.
    pub fn scaler_admin_endpoints(&self) -> Endpoints {
        self.scaler_admin.endpoints()
    }

    /// The scaler pod's admin address (`/metrics`, `/readyz`), once it is ready.
    pub fn scaler_admin(&self) -> Option<SocketAddr> {
        let endpoints = self.scaler_admin.endpoints();
        let endpoints = endpoints.read().unwrap_or_else(|e| e.into_inner());
        endpoints.first().map(|e| e.addr)
    }

    /// The administrator's kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        self.plane.admin_kubeconfig()
    }

    /// The control plane.
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// The control plane, to fault it.
    pub fn plane_mut(&mut self) -> &mut ControlPlane {
        &mut self.plane
    }

    /// Registers the node and starts serving pods; app pods report to `report_to`.
    pub async fn start_node(
        &mut self,
        scenario: &Scenario,
        pods_dir: PathBuf,
        report_to: SocketAddr,
        envoy_binary: PathBuf,
        wasm: PathBuf,
    ) -> Result<(), RunError> {
        // The filter's token, from the chart's Secret, as INSTALL.md has it put into the
        // WasmPlugin's pluginConfig.
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), SCALER_NAMESPACE);
        // No Secret: the chart was installed without a token (token.enabled=false).
        let secret = secrets
            .get_opt("surge-scaler-token")
            .await
            .map_err(kube_setup("read the chart's token Secret"))?;
        let token = match secret {
            None => None,
            Some(secret) => Some(
                secret
                    .data
                    .and_then(|d| d.get("token").map(|t| t.0.clone()))
                    .and_then(|t| String::from_utf8(t).ok())
                    .ok_or_else(|| {
                        RunError::Setup("the chart's token Secret has no UTF-8 `token` key".into())
                    })?,
            ),
        };
        let mut plugin_config = json!({"report_interval_ms": 1000});
        if let Some(token) = token {
            plugin_config["token"] = json!(token);
        }
        self.plugin_config = plugin_config.clone();
        let kubeconfig = self.plane.dir().join("node.kubeconfig");
        self.plane
            .certificate_kubeconfig(
                &kubeconfig,
                &format!("system:node:{NODE_NAME}"),
                &["system:nodes"],
            )
            .map_err(|e| RunError::Setup(e.to_string()))?;
        let options = NodeOptions {
            name: NODE_NAME.into(),
            kubeconfig,
            work_dir: pods_dir,
            // Without `nodes:` one node holds every pod; with it, the scenario's small first node.
            cpu: scenario
                .nodes
                .as_ref()
                .map_or_else(|| "16".to_owned(), |n| n.first_node_cpu.clone()),
            memory: "64Gi".into(),
            max_pods: 110,
            network: self.network.network(),
            ip: NODE_IP,
            pod_ips: self.pod_ips.clone(),
            app: AppRuntime {
                envoy_binary,
                wasm,
                envoy_concurrency: scenario.pods.envoy_concurrency,
                report_to,
                plugin_config,
                fail_after: scenario.pods.fail_after,
                port: APP_PORT,
            },
            server: self.plane.server(),
            ca_pem: self.plane.pki().ca_pem(),
        };
        let node = Node::start(options.clone())
            .await
            .map_err(|e| RunError::Setup(format!("start the node: {e}")))?;
        self.running.add(node.running_counter());
        self.node = Some(node);
        self.node_template = Some(options);
        Ok(())
    }

    /// Starts Karpenter (kwok provider) with `pool`, and the kubelets of the nodes it adds,
    /// which run pods as the first node does. After [`RealKube::start_node`].
    pub async fn start_karpenter(&mut self, pool: &PoolSettings) -> Result<(), RunError> {
        let template = self.node_template.clone().ok_or_else(|| {
            RunError::Setup("Karpenter's nodes copy the first node: start it first".into())
        })?;
        let dir = self.plane.dir().to_path_buf();
        let elasticity = NodeElasticity::start(
            &self.plane,
            self.client.clone(),
            template,
            self.running.clone(),
            &dir,
            pool,
        )
        .await?;
        self.elasticity = Some(elasticity);
        Ok(())
    }

    /// Karpenter and its nodes, once [`RealKube::start_karpenter`] ran.
    pub fn elasticity(&self) -> Option<&NodeElasticity> {
        self.elasticity.as_ref()
    }

    /// Waits until the scaler pod is ready (its Service has a ready endpoint).
    pub async fn wait_scaler_ready(&self, timeout: Duration) -> Result<(), RunError> {
        let deadline = Instant::now() + timeout;
        while self.scaler.ready() == 0 {
            if Instant::now() >= deadline {
                return Err(RunError::Setup(format!(
                    "the scaler pod was not ready within {timeout:?} (see {}/pods/surge-scaler-*/scaler.log and `kubectl -n {SCALER_NAMESPACE} describe pods`)",
                    self.plane
                        .dir()
                        .parent()
                        .unwrap_or(Path::new("."))
                        .display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Creates the app's Deployment (at `minReplicas`), Service and SurgeScaler (none under the
    /// classic chain), as `kubectl apply` would, and starts following them.
    pub async fn deploy_app(
        &mut self,
        scenario: &Scenario,
        surgescaler: Option<Value>,
    ) -> Result<(), RunError> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NAMESPACE);
        deployments
            .create(&PostParams::default(), &app::deployment(scenario)?)
            .await
            .map_err(kube_setup("create the app's Deployment"))?;
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(self.client.clone(), NAMESPACE);
        let service = app::service()?;
        services
            .create(&PostParams::default(), &service)
            .await
            .map_err(kube_setup("create the app's Service"))?;
        let resource = kube::api::ApiResource {
            group: "surge.dev".into(),
            version: "v1alpha1".into(),
            api_version: "surge.dev/v1alpha1".into(),
            kind: "SurgeScaler".into(),
            plural: "surgescalers".into(),
        };
        let scalers: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), NAMESPACE, &resource);
        if let Some(surgescaler) = surgescaler {
            let object: DynamicObject = serde_json::from_value(surgescaler)
                .map_err(|e| setup("the SurgeScaler")(e.to_string()))?;
            scalers
                .patch(
                    WORKLOAD,
                    &PatchParams::apply("kubectl").force(),
                    &Patch::Apply(&object),
                )
                .await
                .map_err(kube_setup("apply the SurgeScaler"))?;
        }
        let app = ServiceEndpoints::follow(
            self.client.clone(),
            NAMESPACE,
            WORKLOAD,
            Some("http"),
            self.network.network(),
        );
        self.observer = Some(tokio::spawn(app::observe(
            self.client.clone(),
            app.endpoints(),
            app.changes(),
            self.running.clone(),
            Arc::clone(&self.history),
        )));
        self.app = Some(app);
        Ok(())
    }

    /// Starts the classic chain (Prometheus, KEDA, the app's ScaledObject; files under `dir`)
    /// and makes the HPA controller the writer [`Self::requests`] follows.
    pub async fn start_classic(
        &mut self,
        scenario: &Scenario,
        autoscaler: Autoscaler,
        dir: &Path,
    ) -> Result<(), RunError> {
        let Some(query) = autoscaler.query() else {
            return Ok(());
        };
        let octet = self.network.network().octet();
        let chain = ClassicChain::start(&self.plane, octet, scenario, query, dir).await?;
        self.writer = autoscaler.writer("");
        self.classic = Some(chain);
        Ok(())
    }

    /// The classic chain, when it runs.
    pub fn classic(&self) -> Option<&ClassicChain> {
        self.classic.as_ref()
    }

    /// The app Service's ready endpoints (what the load generator sends to).
    pub fn endpoints(&self) -> Endpoints {
        self.app
            .as_ref()
            .map(ServiceEndpoints::endpoints)
            .unwrap_or_default()
    }

    /// Every change of the counts so far.
    pub fn history(&self) -> Vec<PodCounts> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// The API calls of the app's autoscaler so far (the scaler, or the HPA controller under
    /// the classic chain), as the API server audited them.
    pub fn requests(&self) -> Vec<RequestRecord> {
        let mut audit = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        audit
            .refresh()
            .iter()
            .filter(|r| r.user == self.writer)
            .map(|r| self.record(r))
            .collect()
    }

    /// Waits (polling the audit log) for the scaler's first call matching `matches`.
    pub async fn wait_for_request(
        &self,
        timeout: Duration,
        matches: impl Fn(&RequestRecord) -> bool,
    ) -> Option<RequestRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.requests().into_iter().find(|r| matches(r)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn record(&self, r: &AuditRecord) -> RequestRecord {
        // Placed by its age now, so a step of the wall clock since the start shifts nothing.
        let age = Duration::from_micros(unix_us().saturating_sub(r.received_unix_us).max(0) as u64);
        let now = Instant::now();
        let received = now.checked_sub(age).unwrap_or(now);
        RequestRecord {
            received,
            unix_ms: (r.received_unix_us / 1000) as u64,
            method: r.method().into(),
            path: r.path().into(),
            query: r.query().into(),
            // The audit log does not keep the patch's content type.
            content_type: None,
            field_manager: r.query_param("fieldManager").map(str::to_owned),
            status: r.code,
            body: r.request_object.as_ref().map(Value::to_string),
        }
    }

    /// Sets the Deployment's replicas through its scale subresource, as an administrator.
    pub async fn set_replicas(&self, replicas: u32) -> Result<(), RunError> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NAMESPACE);
        deployments
            .patch_scale(
                WORKLOAD,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .map(|_| ())
            .map_err(kube_setup("set the replicas"))
    }

    /// Stops the node (every pod's processes), then the control plane.
    pub async fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

/// The app's Deployment: the app container (its capacity in its env) and the sidecar Istio's
/// injector would add.
/// The scaler replica (pod name) holding the shard Lease of SurgeScaler `namespace/name`, as
/// the API server has it; `None` while no replica holds it. Assumes the chart's default number
/// of shards (`sharing.shards`).
pub async fn target_owner(client: &Client, namespace: &str, name: &str) -> Option<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    use surge_scaler::hub::TargetKey;
    use surge_scaler::shard::{DEFAULT_SHARDS, shard_of};
    let key = TargetKey {
        namespace: namespace.into(),
        name: name.into(),
    };
    let lease = format!("{SCALER_NAME}-shard-{}", shard_of(&key, DEFAULT_SHARDS));
    let leases: Api<Lease> = Api::namespaced(client.clone(), SCALER_NAMESPACE);
    leases
        .get(&lease)
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|holder| !holder.is_empty())
}

//! The sandbox's node on the real control plane: it plays the kubelet, so that Pods made by the
//! real Deployment and ReplicaSet controllers and bound by the real scheduler run here.
//!
//! ```text
//!  register Node (capacity, Ready), renew its Lease every 10 s
//!  watch Pods with spec.nodeName=<node> --accept--> LocalPod: pod IP, start processes
//!        |                                               | progress, httpGet probes
//!        |                                               v
//!        |                           PATCH pods/<pod>/status (Pending -> Running -> Ready)
//!        `--deletionTimestamp--> drain, stop, DELETE (grace 0, uid precondition)
//! ```
//!
//! It authenticates as a kubelet does (`system:node:<node>` in `system:nodes`), so the API
//! server's Node authorizer and NodeRestriction admission judge every call: it may read only
//! the Secrets and ServiceAccount tokens of pods bound to it, and write only their status.
//! What runs for which image: [`containers`]; the pod network: [`network`].

pub mod containers;
pub mod network;
mod pod;
pub mod probe;
mod scaler_container;
pub mod status;
mod volumes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node as NodeObject, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use pod::{LocalPod, ProbeKind, Runtime, now_rfc3339};

/// How often the node renews its Lease (the kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease's duration (the kubelet's default).
const LEASE_SECONDS: i32 = 40;
/// How often pods' progress is checked when no event arrives.
const TICK: Duration = Duration::from_millis(50);
/// How long after a failed status write the node tries again.
const STATUS_RETRY: Duration = Duration::from_millis(500);
/// Lifetime of the ServiceAccount tokens the node gives pods (the kubelet asks for 1 h and
/// refreshes at 80 %; a sandbox run is minutes).
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An API call failed.
    #[error("{context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// kube's error.
        source: kube::Error,
    },
    /// The node's identity could not be loaded.
    #[error(transparent)]
    Cluster(#[from] surge_cluster::ClusterError),
}

/// How app pods run (the sidecar's settings, as Istio and the WasmPlugin would give them).
#[derive(Debug, Clone)]
pub struct AppRuntime {
    /// The Envoy binary.
    pub envoy_binary: PathBuf,
    /// The filter's .wasm.
    pub wasm: PathBuf,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// Where the proxies send reports (the report tap).
    pub report_to: SocketAddr,
    /// The filter's `pluginConfig`.
    pub plugin_config: Value,
    /// App pods accepted after this many never start (the scenario's crash loop).
    pub fail_after: Option<u32>,
    /// The port the sidecar listens on (the Service's target port).
    pub port: u16,
}

/// The node's settings.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Node name.
    pub name: String,
    /// A kubeconfig with the node's identity (`system:node:<name>`, `system:nodes`).
    pub kubeconfig: PathBuf,
    /// Folder for each pod's files.
    pub work_dir: PathBuf,
    /// `status.capacity.cpu` (and allocatable).
    pub cpu: String,
    /// `status.capacity.memory`.
    pub memory: String,
    /// `status.capacity.pods`.
    pub max_pods: u32,
    /// App pods.
    pub app: AppRuntime,
    /// The API server's URL and CA, for the kubeconfigs of the pods' ServiceAccounts.
    pub server: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
}

enum Command {
    KillScaler { restart_after: Duration },
    RestartScaler,
}

/// A running node; [`Node::shutdown`] (or dropping it) stops every pod's processes.
pub struct Node {
    commands: mpsc::UnboundedSender<Command>,
    running: Arc<AtomicU32>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

fn api_error(context: impl Into<String>) -> impl FnOnce(kube::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Api { context, source }
}

impl Node {
    /// Registers the node (Ready, with its capacity) and its Lease, then starts serving pods.
    pub async fn start(options: NodeOptions) -> Result<Self, NodeError> {
        let client = surge_cluster::tokens::client_from(&options.kubeconfig).await?;
        register(&client, &options).await?;
        renew_lease(&client, &options.name)
            .await
            .map_err(api_error("create the node's Lease"))?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let running = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(client, options, inbox, Arc::clone(&running), stopped));
        Ok(Self {
            commands,
            running,
            stop,
            task: Some(task),
        })
    }

    /// App pods whose processes run on the node (draining ones included).
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::SeqCst)
    }

    /// The counter behind [`Node::running`], to follow it from another task.
    pub fn running_counter(&self) -> Arc<AtomicU32> {
        Arc::clone(&self.running)
    }

    /// Kills every scaler container at once (SIGKILL, as a crash); each starts again after
    /// `restart_after`, as the kubelet restarts a crashed container after its back-off.
    pub fn kill_scaler(&self, restart_after: Duration) {
        let _ = self.commands.send(Command::KillScaler { restart_after });
    }

    /// Starts every scaler container that is down, now (its back-off cut short).
    pub fn restart_scaler(&self) {
        let _ = self.commands.send(Command::RestartScaler);
    }

    /// Stops serving and kills every pod's processes.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn register(client: &Client, options: &NodeOptions) -> Result<(), NodeError> {
    let nodes: Api<NodeObject> = Api::all(client.clone());
    let now = now_rfc3339();
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources = json!({
        "cpu": options.cpu, "memory": options.memory, "pods": options.max_pods.to_string(),
    });
    let node: NodeObject = serde_json::from_value(json!({
        "metadata": {
            "name": options.name,
            "labels": {
                "kubernetes.io/hostname": options.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "node.kubernetes.io/instance-type": "surge-sandbox",
            },
        },
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True", "KubeletReady"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": network::NODE_IP.to_string()},
                {"type": "Hostname", "address": options.name},
            ],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "", "osImage": "surge-sandbox",
                "containerRuntimeVersion": "surge-sandbox://0",
                "kubeletVersion": surge_cluster::components::kubernetes_version(),
                "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }))
    .map_err(|e| NodeError::Api {
        context: "build the Node".into(),
        source: kube::Error::SerdeError(e),
    })?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let status = json!({"status": serde_json::to_value(&node.status).unwrap_or_default()});
            nodes
                .patch_status(
                    &options.name,
                    &PatchParams::default(),
                    &Patch::Merge(status),
                )
                .await
                .map(|_| ())
                .map_err(api_error("update the Node's status"))
        }
        Err(e) => Err(api_error("register the Node")(e)),
    }
}

async fn renew_lease(client: &Client, node: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = micro_time(k8s_openapi::jiff::Timestamp::now());
    let spec =
        json!({"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now});
    match leases
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": spec,
            }))
            .map_err(kube::Error::SerdeError)?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// A `MicroTime` as the API wants it: RFC 3339 with exactly six fractional digits.
fn micro_time(at: k8s_openapi::jiff::Timestamp) -> String {
    let micros = at.as_microsecond();
    let seconds = k8s_openapi::jiff::Timestamp::from_second(micros.div_euclid(1_000_000))
        .unwrap_or(at)
        .to_string();
    format!(
        "{}.{:06}Z",
        seconds.trim_end_matches('Z'),
        micros.rem_euclid(1_000_000)
    )
}

/// The node's loop: pod events, probes, commands, the Lease; after each, every pod's progress.
async fn serve(
    client: Client,
    options: NodeOptions,
    mut commands: mpsc::UnboundedReceiver<Command>,
    running: Arc<AtomicU32>,
    mut stopped: watch::Receiver<bool>,
) {
    let pods_api: Api<Pod> = Api::all(client.clone());
    let selector = format!("spec.nodeName={}", options.name);
    let mut events = watcher(pods_api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<(String, ProbeKind, bool)>();
    let mut pods: BTreeMap<String, LocalPod> = BTreeMap::new();
    let mut next_index = 2u32;
    let mut app_pods = 0u32;
    let mut lease = tokio::time::interval(LEASE_RENEW);
    lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                    seen(&mut pods, pod, &options, &mut next_index, &mut app_pods);
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    if let Some(uid) = pod.metadata.uid {
                        // Gone from the API: whatever still runs stops now.
                        pods.remove(&uid);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => tracing::warn!(%error, "node: watching pods"),
                None => break,
            },
            Some((uid, kind, ok)) = probe_rx.recv() => {
                if let Some(pod) = pods.get_mut(&uid) {
                    pod.probe_result(kind, ok, Instant::now());
                }
            }
            Some(command) = commands.recv() => match command {
                Command::KillScaler { restart_after } => {
                    for pod in pods.values_mut() {
                        if let Runtime::Scaler(scaler) = &mut pod.runtime {
                            scaler.stop(Instant::now(), restart_after);
                        }
                    }
                }
                Command::RestartScaler => {
                    for pod in pods.values_mut() {
                        if let Runtime::Scaler(scaler) = &mut pod.runtime
                            && scaler.process.is_none()
                        {
                            scaler.restart_at = Some(Instant::now());
                        }
                    }
                }
            },
            _ = lease.tick() => {
                if let Err(error) = renew_lease(&client, &options.name).await {
                    tracing::warn!(%error, "node: renewing the Lease");
                }
            }
            _ = tick.tick() => {}
        }
        for pod in pods.values_mut() {
            sync(&client, &options, pod, &probe_tx).await;
        }
        let app_pods_running = pods
            .values()
            .filter(|p| p.running() && matches!(p.runtime, Runtime::App(_)))
            .count();
        running.store(app_pods_running as u32, Ordering::SeqCst);
    }
    // Every pod's processes stop as their LocalPods drop; starts in progress are awaited so
    // that no Envoy started by a blocking thread outlives the node.
    for (_, pod) in std::mem::take(&mut pods) {
        if let Runtime::App(mut app) = pod.runtime
            && let Some(start) = app.start.take()
        {
            let _ = start.await;
        }
    }
    running.store(0, Ordering::SeqCst);
}

/// A pod event: accept a new pod, or start terminating a deleted one.
fn seen(
    pods: &mut BTreeMap<String, LocalPod>,
    pod: Pod,
    options: &NodeOptions,
    next_index: &mut u32,
    app_pods: &mut u32,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    if let Some(local) = pods.get_mut(&uid) {
        if deleting {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
            local.begin_termination(Instant::now(), Duration::from_secs(grace.max(0) as u64));
        }
        return;
    }
    if deleting {
        return;
    }
    match LocalPod::accept(&pod, *next_index, options, app_pods) {
        Some(local) => {
            *next_index += 1;
            tracing::info!(pod = %local.name, ip = %local.pod_ip, "node: pod accepted");
            pods.insert(uid, local);
        }
        None => {
            tracing::warn!(?pod.metadata.name, "node: cannot accept the pod (out of addresses)")
        }
    }
}

/// One pod's step: prepare, progress, status, probes, termination.
async fn sync(
    client: &Client,
    options: &NodeOptions,
    pod: &mut LocalPod,
    probes: &mpsc::UnboundedSender<(String, ProbeKind, bool)>,
) {
    let now = Instant::now();
    if pod.removed {
        return;
    }
    if let Runtime::Scaler(scaler) = &pod.runtime
        && scaler.prepared.is_none()
        && scaler.waiting.is_none()
        && pod.deleting.is_none()
    {
        let prepared = volumes::prepare_scaler(client, options, pod).await;
        if let Runtime::Scaler(scaler) = &mut pod.runtime {
            match prepared {
                Ok(prepared) => scaler.prepared = Some(prepared),
                Err(message) => {
                    tracing::warn!(pod = %pod.name, %message, "node: cannot run the container");
                    scaler.waiting = Some(("CreateContainerConfigError", message));
                }
            }
        }
    }
    pod.progress(now).await;

    let due = pod.due_probes(now);
    if !due.is_empty() {
        pod.probes_sent(
            &due.iter().map(|(kind, _, _)| *kind).collect::<Vec<_>>(),
            now,
        );
        for (kind, addr, probe) in due {
            let probes = probes.clone();
            let uid = pod.uid.clone();
            tokio::spawn(async move {
                let ok = matches!(
                    probe::http_get(addr, &probe.path, probe.timeout).await,
                    Some(status) if (200..400).contains(&status)
                );
                let _ = probes.send((uid, kind, ok));
            });
        }
    }

    let done = pod.finish_termination(now);
    let status = status::status(&pod.view(), &mut pod.transitions, &now_rfc3339());
    if pod.written.as_ref() != Some(&status) && pod.write_after.is_none_or(|at| now >= at) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
        match pods
            .patch_status(
                &pod.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {
                pod.written = Some(status);
                pod.write_after = None;
            }
            // Retried a little later; a pod that is gone is removed by its Delete event.
            Err(error) => {
                tracing::warn!(pod = %pod.name, %error, "node: writing pod status");
                pod.write_after = Some(now + STATUS_RETRY);
            }
        }
    }
    if done {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&pod.name, &params).await {
            Ok(_) => pod.removed = true,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => pod.removed = true,
            Err(error) => tracing::debug!(pod = %pod.name, %error, "node: deleting the pod"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_micro_time_has_six_fractional_digits() {
        let at = k8s_openapi::jiff::Timestamp::from_microsecond(1_764_748_939_000_027).unwrap();
        assert_eq!(micro_time(at), "2025-12-03T08:02:19.000027Z");
    }
}

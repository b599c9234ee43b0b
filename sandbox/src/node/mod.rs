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
pub mod fleet;
pub mod network;
mod pod;
pub mod probe;
mod registration;
mod scaler_container;
pub mod status;
mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use network::{PodIps, PodNetwork};
use pod::{LocalPod, ProbeKind, Runtime, now_rfc3339};
use registration::{register, renew_lease};

/// How often the node renews its Lease (the kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease's duration (the kubelet's default).
const LEASE_SECONDS: i32 = 40;
/// How often pods' progress is checked when no event arrives.
const TICK: Duration = Duration::from_millis(50);
/// How long after a failed API call for a pod (status write, delete) the node tries again.
const API_RETRY: Duration = Duration::from_millis(500);
/// How long any one API call of the node may take (one slow call must not stall every pod).
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Lifetime of the ServiceAccount tokens the node gives pods (what a kubelet asks for); they
/// are renewed at 80 % of it.
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
    /// Where pod addresses are served on this machine.
    pub network: PodNetwork,
    /// The node's `InternalIP` (its pods' `hostIP`).
    pub ip: Ipv4Addr,
    /// Where its pods' addresses come from (shared by every node of the sandbox).
    pub pod_ips: PodIps,
    /// The API server's URL and CA, for the kubeconfigs of the pods' ServiceAccounts.
    pub server: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
}

enum Command {
    /// SIGKILL the scaler containers (of one pod when named, else of all).
    KillScaler {
        restart_after: Duration,
        pod: Option<String>,
    },
    RestartScaler,
    /// Where a scaler pod's path to the API server listens (see [`Node::api_route`]).
    ApiRoute {
        pod: String,
        reply: oneshot::Sender<Option<SocketAddr>>,
    },
}

/// The app pods running on every node of the sandbox (the first node and those Karpenter
/// adds): each node's counter, summed when read.
#[derive(Debug, Clone, Default)]
pub struct RunningPods(Arc<std::sync::Mutex<Vec<Arc<AtomicU32>>>>);

impl RunningPods {
    /// Counts a node's pods too (its [`Node::running_counter`]).
    pub fn add(&self, counter: Arc<AtomicU32>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(counter);
    }

    /// App pods running now, over every node.
    pub fn total(&self) -> u32 {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }
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
        let client =
            surge_cluster::tokens::client_with_timeout(&options.kubeconfig, API_TIMEOUT).await?;
        register(&client, &options).await?;
        renew_lease(&client, &options.name)
            .await
            .map_err(api_error("create the node's Lease"))?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let running = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = watch::channel(false);
        // Watches stay open while quiet, so their client has no read timeout.
        let watch_client = surge_cluster::tokens::client_from(&options.kubeconfig).await?;
        let task = tokio::spawn(serve(
            client,
            watch_client,
            options,
            inbox,
            Arc::clone(&running),
            stopped,
        ));
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
        let _ = self.commands.send(Command::KillScaler {
            restart_after,
            pod: None,
        });
    }

    /// Kills the scaler container of pod `pod` only (SIGKILL, as a crash or a lost node would);
    /// it starts again after `restart_after`.
    pub fn kill_scaler_pod(&self, pod: &str, restart_after: Duration) {
        let _ = self.commands.send(Command::KillScaler {
            restart_after,
            pod: Some(pod.to_owned()),
        });
    }

    /// The address through which scaler pod `pod` reaches the API server: its own forwarded
    /// port, as the `kubernetes` Service's ClusterIP is for a pod, so that a fault can cut this
    /// one pod from the API server (nftables on that port) and leave the others' paths alone.
    /// `None` until the pod's container is prepared.
    pub async fn api_route(&self, pod: &str) -> Option<SocketAddr> {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::ApiRoute {
            pod: pod.to_owned(),
            reply,
        });
        answer.await.ok().flatten()
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

/// What the node's loop keeps between events.
struct NodeState {
    pods: BTreeMap<String, LocalPod>,
    app_pods: u32,
    /// The pods of a relist in progress (`Init` .. `InitDone`).
    relisted: Option<BTreeSet<String>>,
}

/// The node's loop: pod events, probes, commands, the Lease; after each, every pod's progress.
async fn serve(
    client: Client,
    watch_client: Client,
    options: NodeOptions,
    mut commands: mpsc::UnboundedReceiver<Command>,
    running: Arc<AtomicU32>,
    mut stopped: watch::Receiver<bool>,
) {
    let pods_api: Api<Pod> = Api::all(watch_client);
    let selector = format!("spec.nodeName={}", options.name);
    let mut events = watcher(pods_api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<(String, ProbeKind, bool)>();
    let mut state = NodeState {
        pods: BTreeMap::new(),
        app_pods: 0,
        relisted: None,
    };
    let mut lease = tokio::time::interval(LEASE_RENEW);
    lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            event = events.next() => match event {
                Some(Ok(event)) => on_event(&client, &mut state, event, &options).await,
                Some(Err(error)) => tracing::warn!(%error, "node: watching pods"),
                None => break,
            },
            Some((uid, kind, ok)) = probe_rx.recv() => {
                if let Some(pod) = state.pods.get_mut(&uid) {
                    pod.probe_result(kind, ok, Instant::now());
                }
            }
            Some(command) = commands.recv() => {
                let now = Instant::now();
                if let Command::ApiRoute { pod, reply } = command {
                    let route = state.pods.values().find_map(|p| match &p.runtime {
                        Runtime::Scaler(scaler) if p.name == pod => {
                            scaler.prepared.as_ref().map(|p| p.api_route.addr())
                        }
                        _ => None,
                    });
                    let _ = reply.send(route);
                    continue;
                }
                for pod in state.pods.values_mut() {
                    let name = pod.name.clone();
                    if let Runtime::Scaler(scaler) = &mut pod.runtime {
                        match &command {
                            Command::KillScaler { restart_after, pod } => {
                                if pod.as_ref().is_none_or(|p| *p == name) {
                                    scaler.kill(now, *restart_after);
                                }
                            }
                            Command::RestartScaler if scaler.process.is_none() => {
                                scaler.restart_at = Some(now);
                            }
                            Command::RestartScaler | Command::ApiRoute { .. } => {}
                        }
                    }
                }
            }
            _ = lease.tick() => {
                if let Err(error) = renew_lease(&client, &options.name).await {
                    tracing::warn!(%error, "node: renewing the Lease");
                }
            }
            _ = tick.tick() => {}
        }
        for pod in state.pods.values_mut() {
            sync(&client, &options, pod, &probe_tx).await;
        }
        let app_pods_running = state
            .pods
            .values()
            .filter(|p| p.running() && matches!(p.runtime, Runtime::App(_)))
            .count();
        running.store(app_pods_running as u32, Ordering::SeqCst);
    }
    // Every pod's processes stop as their LocalPods drop; starts in progress are awaited so
    // that no Envoy started by a blocking thread outlives the node.
    for (_, pod) in std::mem::take(&mut state.pods) {
        if let Runtime::App(mut app) = pod.runtime
            && let Some(start) = app.start.take()
        {
            let _ = start.await;
        }
    }
    running.store(0, Ordering::SeqCst);
}

/// A watch event of the pods bound to the node.
async fn on_event(
    client: &Client,
    state: &mut NodeState,
    event: watcher::Event<Pod>,
    options: &NodeOptions,
) {
    match event {
        watcher::Event::Apply(pod) => seen(client, state, pod, options).await,
        watcher::Event::Delete(pod) => {
            if let Some(uid) = pod.metadata.uid {
                // Gone from the API: whatever still runs stops now.
                state.pods.remove(&uid);
            }
        }
        watcher::Event::Init => state.relisted = Some(BTreeSet::new()),
        watcher::Event::InitApply(pod) => {
            if let (Some(relisted), Some(uid)) = (&mut state.relisted, &pod.metadata.uid) {
                relisted.insert(uid.clone());
            }
            seen(client, state, pod, options).await;
        }
        watcher::Event::InitDone => {
            // A pod the relist did not return was deleted while the watch was down.
            if let Some(relisted) = state.relisted.take() {
                state.pods.retain(|uid, _| relisted.contains(uid));
            }
        }
    }
}

/// A pod seen: accept a new one, or start terminating a deleted one. A pod first seen already
/// deleted (bound and deleted before the node got to it) is deleted for good at once, as a
/// kubelet does for a pod it never started.
async fn seen(client: &Client, state: &mut NodeState, pod: Pod, options: &NodeOptions) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    if let Some(local) = state.pods.get_mut(&uid) {
        if deleting {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
            local.begin_termination(Instant::now(), Duration::from_secs(grace.max(0) as u64));
        }
        return;
    }
    if deleting {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let Err(error) = delete_for_good(client, &namespace, &name, &uid).await {
            tracing::warn!(pod = %name, %error, "node: deleting a pod it never ran");
        }
        return;
    }
    let accepted = options
        .pod_ips
        .next()
        .and_then(|ip| LocalPod::accept(&pod, ip, options, &mut state.app_pods));
    match accepted {
        Some(local) => {
            tracing::info!(pod = %local.name, ip = %local.pod_ip, "node: pod accepted");
            state.pods.insert(uid, local);
        }
        None => {
            tracing::warn!(?pod.metadata.name, "node: cannot accept the pod (out of addresses)")
        }
    }
}

/// DELETE with grace 0 and a uid precondition: what a kubelet sends once a pod's containers
/// are gone (the precondition keeps it from deleting a new pod of the same name). A pod already
/// gone counts as deleted.
async fn delete_for_good(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

/// One pod's step: prepare, progress, probes, status, termination. A failed API call is tried
/// again after [`API_RETRY`], not on every step.
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
    if pod.deleting.is_none() {
        volumes::prepare_or_refresh(client, options, pod, now).await;
    }
    pod.progress(now);

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
    if pod.api_after.is_some_and(|at| now < at) {
        return;
    }
    let status = status::status(&pod.view(), &mut pod.transitions, &now_rfc3339());
    if pod.written.as_ref() != Some(&status) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
        // A strategic merge patch, as a kubelet sends: conditions merge by type and container
        // statuses by name, so what others wrote (the scheduler's PodScheduled) stays.
        let patch = Patch::Strategic(json!({ "status": status }));
        match pods
            .patch_status(&pod.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                pod.written = Some(status);
                pod.api_after = None;
            }
            // A pod that is gone is removed by its Delete event.
            Err(error) => {
                tracing::warn!(pod = %pod.name, %error, "node: writing pod status");
                pod.api_after = Some(now + API_RETRY);
                return;
            }
        }
    }
    if done {
        match delete_for_good(client, &pod.namespace, &pod.name, &pod.uid).await {
            Ok(()) => pod.removed = true,
            Err(error) => {
                tracing::warn!(pod = %pod.name, %error, "node: deleting the pod");
                pod.api_after = Some(now + API_RETRY);
            }
        }
    }
}

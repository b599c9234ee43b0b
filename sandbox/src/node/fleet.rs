//! The sandbox's kubelet for the nodes Karpenter adds (`surge-nodes`): every Node its kwok
//! provider creates (label `kwok.x-k8s.io/node=fake`) gets a [`Node`] of its own, which
//! reports it Ready with the instance type's allocatable resources and runs the pods the
//! scheduler binds to it, as the first node does. It also notes when each NodeClaim (an
//! instance launch) first appeared, for the run's node figures.
//!
//! ```text
//!  Karpenter: NodeClaim -> (boot delay: KWOKNodeClass nodeRegistrationDelay) -> Node created
//!  fleet: watch Nodes kwok.x-k8s.io/node=fake --new--> Node::start (Ready, Lease, pods)
//!                                              --gone--> shutdown (Karpenter drained it first)
//! ```
//!
//! The boot is Karpenter's to model (the registration delay); a real kubelet reports Ready a
//! second or two after it registers, this one within a round trip. Each node authenticates as
//! its own kubelet (`system:node:<name>`), so the Node authorizer and NodeRestriction judge it
//! as they judge the first node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use surge_cluster::pki::Pki;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Node, NodeOptions, RunningPods};

/// The label Karpenter's kwok provider puts on the Nodes it creates.
pub const KWOK_LABEL: &str = "kwok.x-k8s.io/node=fake";

/// What every joining node shares.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The first node's settings; name, identity, capacity and address are each node's own.
    pub template: NodeOptions,
    /// The cluster's PKI, to give each node its kubelet identity.
    pub pki: Pki,
    /// Where the nodes' kubeconfigs are written.
    pub kubeconfig_dir: PathBuf,
    /// Where each node's running app pods are counted.
    pub running: RunningPods,
}

/// A node the fleet started serving.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// The Node's name.
    pub name: String,
    /// When Karpenter created the Node object (its `creationTimestamp`).
    pub created: Option<SystemTime>,
    /// When the node reported itself Ready.
    pub ready: SystemTime,
    /// Its allocatable CPU, as Karpenter gave it.
    pub cpu: String,
}

/// A NodeClaim Karpenter created: the launch of an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Launched {
    /// The NodeClaim's name.
    pub name: String,
    /// When the fleet's watch first saw it (within a watch event of its creation).
    pub seen: SystemTime,
}

/// Serves every kwok Node until shut down (or dropped), and notes every NodeClaim.
pub struct Fleet {
    joined: Arc<Mutex<Vec<Joined>>>,
    launched: Arc<Mutex<Vec<Launched>>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Fleet {
    /// Starts watching Nodes and NodeClaims with `client` (one that may list and watch them;
    /// Karpenter's CRDs must be in place).
    pub fn start(client: Client, options: FleetOptions) -> Self {
        let joined = Arc::new(Mutex::new(Vec::new()));
        let launched = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let claims = tokio::spawn(note_claims(
            client.clone(),
            Arc::clone(&launched),
            stopped.clone(),
        ));
        let task = {
            let joined = Arc::clone(&joined);
            tokio::spawn(async move {
                serve(client, options, joined, stopped).await;
                claims.abort();
            })
        };
        Self {
            joined,
            launched,
            stop,
            task: Some(task),
        }
    }

    /// Every NodeClaim Karpenter created so far, in the order they were seen.
    pub fn launched(&self) -> Vec<Launched> {
        self.launched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every node that joined so far, in the order they did (gone ones included).
    pub fn joined(&self) -> Vec<Joined> {
        self.joined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops every node's pods and the watch.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The Node's allocatable `resource`, if it has it.
fn allocatable(node: &NodeObject, resource: &str) -> Option<String> {
    node.status
        .as_ref()?
        .allocatable
        .as_ref()?
        .get(resource)
        .map(|q| q.0.clone())
}

/// The settings of the node that serves `node`, or why it cannot be served.
fn node_options(options: &FleetOptions, node: &NodeObject) -> Result<NodeOptions, String> {
    let name = node.metadata.name.clone().ok_or("a Node without a name")?;
    let cpu = allocatable(node, "cpu").ok_or_else(|| format!("{name}: no allocatable cpu"))?;
    let memory =
        allocatable(node, "memory").ok_or_else(|| format!("{name}: no allocatable memory"))?;
    let max_pods = allocatable(node, "pods")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("{name}: no allocatable pod count"))?;
    let ip = options
        .template
        .pod_ips
        .next()
        .ok_or("the pod network has no address left")?;
    let kubeconfig = options.kubeconfig_dir.join(format!("{name}.kubeconfig"));
    surge_cluster::kubeconfig::write_certificate(
        &kubeconfig,
        &options.template.server,
        &options.pki,
        &format!("system:node:{name}"),
        &["system:nodes"],
    )
    .map_err(|e| format!("{name}: its kubelet identity: {e}"))?;
    Ok(NodeOptions {
        name,
        kubeconfig,
        cpu,
        memory,
        max_pods,
        ip,
        ..options.template.clone()
    })
}

/// Notes the first sight of every NodeClaim (Karpenter's `karpenter.sh/v1`).
async fn note_claims(
    client: Client,
    launched: Arc<Mutex<Vec<Launched>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("karpenter.sh", "v1", "NodeClaim"),
        "nodeclaims",
    );
    let claims: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut events = watcher(claims, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        let claim = tokio::select! {
            _ = stopped.changed() => break,
            event = events.next() => match event {
                Some(Ok(claim)) => claim,
                Some(Err(error)) => {
                    tracing::warn!(%error, "fleet: watching NodeClaims");
                    continue;
                }
                None => break,
            },
        };
        let Some(name) = claim.metadata.name else {
            continue;
        };
        let mut launched = launched.lock().unwrap_or_else(|e| e.into_inner());
        if !launched.iter().any(|l| l.name == name) {
            launched.push(Launched {
                name,
                seen: SystemTime::now(),
            });
        }
    }
}

async fn serve(
    client: Client,
    options: FleetOptions,
    joined: Arc<Mutex<Vec<Joined>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let nodes: Api<NodeObject> = Api::all(client);
    let mut events = watcher(nodes, watcher::Config::default().labels(KWOK_LABEL))
        .default_backoff()
        .boxed();
    let mut serving: BTreeMap<String, Node> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            _ = stopped.changed() => break,
            event = events.next() => event,
        };
        let node = match event {
            Some(Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node))) => node,
            Some(Ok(watcher::Event::Delete(node))) => {
                if let Some(gone) = node.metadata.name.and_then(|n| serving.remove(&n)) {
                    gone.shutdown().await;
                }
                continue;
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
            Some(Err(error)) => {
                tracing::warn!(%error, "fleet: watching nodes");
                continue;
            }
            None => break,
        };
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        if serving.contains_key(&name) || node.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let started = match node_options(&options, &node) {
            Ok(node_options) => Node::start(node_options).await.map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        match started {
            Ok(served) => {
                tracing::info!(node = %name, "fleet: node joined");
                options.running.add(served.running_counter());
                let cpu = allocatable(&node, "cpu").unwrap_or_default();
                joined
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Joined {
                        name: name.clone(),
                        created: node
                            .metadata
                            .creation_timestamp
                            .as_ref()
                            .map(|t| SystemTime::from(t.0)),
                        ready: SystemTime::now(),
                        cpu,
                    });
                serving.insert(name, served);
            }
            // The next change of the Node (Karpenter labels and untaints it) tries again.
            Err(why) => tracing::warn!(node = %name, %why, "fleet: cannot serve the node"),
        }
    }
    for (_, node) in serving {
        node.shutdown().await;
    }
}

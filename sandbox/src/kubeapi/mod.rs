//! An embedded Kubernetes API: the part of a real API server that Surge talks to, served over
//! plain HTTP on loopback, so the unchanged scaler binary can run against it through a
//! generated kubeconfig.
//!
//! ```text
//!  surge-scaler (kube 5 client) --HTTP--> server (paths, verbs, patches, watches)
//!                                              |
//!                                          store (JSON objects, one resourceVersion counter,
//!                                                 change history for watch resume)
//!  sandbox (pods controller)  -----------> store (reads spec.replicas, writes status)
//! ```
//!
//! Served: Deployments and StatefulSets with `scale` and `status`, SurgeScalers with `status`,
//! Events (core and events.k8s.io), Leases, HPAs and KEDA ScaledObjects, minimal discovery.
//! Every request is logged with its arrival time so the sandbox can measure reactions. A fault
//! hook cuts open watch streams on demand ([`KubeApi::cut_watches`]). The
//! limits (what a real API server does that this one does not) are listed in
//! `sandbox/README.md`.

mod patch;
mod reads;
pub mod resources;
mod server;
mod status;
mod store;
mod watches;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use patch::{PatchError, json_patch, merge_patch};
pub use resources::ResourceType;
pub use status::ApiError;
pub use store::{Change, ChangeKind, Part, Store, default_from_schema, scale_view};
use watches::Watches;
pub use watches::{OpenWatch, WatchCut};

/// Settings of the embedded API.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often a watch that allows bookmarks receives one.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// One request as the API received it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// When the request arrived (before its body was read).
    pub received: Instant,
    /// The same moment as Unix milliseconds.
    pub unix_ms: u64,
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Content type without parameters.
    pub content_type: Option<String>,
    /// The `fieldManager` query parameter.
    pub field_manager: Option<String>,
    /// The HTTP status answered (200 for a watch that started).
    pub status: u16,
    /// The request body, when there was one.
    pub body: Option<String>,
}

impl RequestRecord {
    /// Whether this is a write (PATCH or PUT) of some workload's `scale` subresource.
    pub fn is_scale_write(&self) -> bool {
        (self.method == "PATCH" || self.method == "PUT") && self.path.ends_with("/scale")
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

struct Shared {
    store: Store,
    options: Options,
    addr: SocketAddr,
    requests: Mutex<Vec<RequestRecord>>,
    logged: watch::Sender<usize>,
    watches: Watches,
    /// Namespaces every request into is answered 403, as RBAC answers a caller with no Role
    /// there ([`KubeApi::forbid_namespace`]).
    forbidden: Mutex<std::collections::BTreeSet<String>>,
}

impl Shared {
    fn log(&self, record: RequestRecord) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.push(record);
        self.logged.send_replace(requests.len());
    }
}

/// A running embedded API. Dropping it stops the server.
pub struct KubeApi {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeApi {
    /// Starts the API on 127.0.0.1 at a free port.
    pub async fn start(options: Options) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (logged, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Store::new(),
            options,
            addr,
            requests: Mutex::new(Vec::new()),
            logged,
            watches: Watches::default(),
            forbidden: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "embedded Kubernetes API stopped");
            }
        });
        Ok(Self { shared, task })
    }

    /// Serves a CustomResourceDefinition's schema defaults (YAML of the CRD, e.g.
    /// `deploy/crds/surgescaler.yaml`) for the type it defines, if that type is served here.
    pub fn register_crd(&self, crd_yaml: &str) -> Result<(), String> {
        let crd: Value = serde_yaml::from_str(crd_yaml).map_err(|e| format!("CRD: {e}"))?;
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .ok_or("CRD: spec.versions missing")?;
        for version in versions {
            let name = version
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let (Some(ty), Some(schema)) = (
                resources::find(group, name, plural),
                version.pointer("/schema/openAPIV3Schema"),
            ) {
                self.store().register_schema(ty, schema.clone());
            }
        }
        Ok(())
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The object store, for the sandbox's own reads and writes (no HTTP in between).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// A kubeconfig (YAML) pointing at this API over plain HTTP, namespace `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: surge-sandbox\n  cluster:\n    server: {url}\n\
             users:\n- name: surge-sandbox\n  user: {{}}\ncontexts:\n- name: surge-sandbox\n  context:\n    \
             cluster: surge-sandbox\n    user: surge-sandbox\n    namespace: {namespace}\n\
             current-context: surge-sandbox\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`KubeApi::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig(namespace))
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until a request matching `pred` has been logged (looking at all requests, also
    /// those before the call), up to `timeout`.
    pub async fn wait_for_request(
        &self,
        timeout: Duration,
        pred: impl Fn(&RequestRecord) -> bool,
    ) -> Option<RequestRecord> {
        let mut logged = self.shared.logged.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.requests().into_iter().find(|r| pred(r)) {
                return Some(found);
            }
            tokio::select! {
                res = logged.changed() => if res.is_err() { return None },
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// The watch streams being served now, oldest first.
    pub fn open_watches(&self) -> Vec<OpenWatch> {
        self.shared.watches.open()
    }

    /// Fault hook: cuts every watch stream open now, `how` says how; returns how many. Each
    /// one ends within a moment, after at most the events it was already writing: a change
    /// made after this returns never goes out on a cut stream, so a client can only learn of
    /// it by watching again (or listing).
    pub fn cut_watches(&self, how: WatchCut) -> usize {
        self.shared.watches.cut_open(how)
    }

    /// Fault hook: from now on answers every request into `namespace` with 403 Forbidden
    /// (`forbidden` true), or serves them again (false): a caller whose Role there is missing
    /// or removed. This API does no RBAC otherwise.
    pub fn forbid_namespace(&self, namespace: &str, forbidden: bool) {
        let mut set = self
            .shared
            .forbidden
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if forbidden {
            set.insert(namespace.to_owned());
        } else {
            set.remove(namespace);
        }
    }

    /// Fault hook: cuts each of the next `n` watch streams to start right after it has sent
    /// its initial events (if any), `how` says how. Replaces a previous such request.
    pub fn cut_next_watches(&self, n: usize, how: WatchCut) {
        self.shared.watches.cut_next(n, how);
    }

    /// Creates a Deployment `name` in `namespace` with `replicas` and the label `app: name`.
    pub fn create_deployment(
        &self,
        namespace: &str,
        name: &str,
        replicas: u32,
    ) -> Result<Value, ApiError> {
        self.store().create(
            resources::DEPLOYMENTS,
            namespace,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "app", "image": "surge-sandbox/app"}]},
                    },
                },
            }),
        )
    }

    /// The Deployment's `spec.replicas`.
    pub fn desired_replicas(&self, namespace: &str, name: &str) -> Result<u32, ApiError> {
        let obj = self.store().get(resources::DEPLOYMENTS, namespace, name)?;
        Ok(obj
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32)
    }

    /// Writes the Deployment's status as its controller would: `replicas` pods exist, `ready`
    /// of them are ready, at the current generation.
    pub fn set_deployment_status(
        &self,
        namespace: &str,
        name: &str,
        replicas: u32,
        ready: u32,
    ) -> Result<Value, ApiError> {
        self.store().modify(
            resources::DEPLOYMENTS,
            namespace,
            name,
            Part::Status,
            false,
            |current| {
                let mut obj = current.unwrap_or_default();
                let generation = obj
                    .pointer("/metadata/generation")
                    .cloned()
                    .unwrap_or(json!(1));
                obj["status"] = json!({
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": ready,
                    "availableReplicas": ready,
                    "unavailableReplicas": replicas.saturating_sub(ready),
                });
                if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                Ok(obj)
            },
        )
    }
}

//! Where the load enters the app: straight into the pods' sidecars (as a client inside the
//! cluster reaches a Service's endpoints), or through a proxy in front of them, as requests to
//! a workload at zero replicas arrive in a mesh: the **ingress gateway** (a real Envoy with the
//! filter in role `gateway`, Istio's `istio-ingressgateway` in `istio-system`) or a **caller's
//! sidecar** (a real Envoy with the filter in role `client`, the outbound side of a pod that
//! calls the app). Either reaches the app's Service through its virtual address
//! ([`crate::service_proxy`]); the filter there holds requests to the app while the scaler says
//! it is cold.
//!
//! ```text
//!  load --> gateway or caller Envoy (filter: count, hold when cold) --> Service address --> pods
//!                  | reports (held requests), answers (cold destinations)
//!                  v
//!             report tap --> scaler
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::envoy::{Bootstrap, Envoy, EnvoyError, EnvoyOptions, NodeIdentity, WasmFilter};
use crate::pods::{Endpoints, fixed_endpoint};
use crate::service_proxy::ServiceProxy;

/// Where the load enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Straight to the ready pods' sidecars (round-robin over the Service's endpoints).
    #[default]
    Sidecars,
    /// Through the ingress gateway.
    Gateway,
    /// Through a caller pod's sidecar (outbound).
    Client,
}

/// The filter's `hold` settings on the gateway or the caller's sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hold {
    /// `hold.max_requests`: held per destination; beyond, 503 at once.
    pub max_requests: u32,
    /// `hold.timeout_ms`: longest a request is held.
    pub timeout_ms: u64,
    /// `hold.retry_after_s`: `Retry-After` of the 503s.
    pub retry_after_s: u32,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            max_requests: 100,
            timeout_ms: 10_000,
            retry_after_s: 1,
        }
    }
}

/// The Envoy cluster a caller's proxy names the app's Service by (port 80).
pub fn app_cluster(namespace: &str, service: &str) -> String {
    format!("outbound|80||{service}.{namespace}.svc.cluster.local")
}

/// What the filter in front of the app counted of held requests (its Envoy stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldCounts {
    /// Requests held in all.
    pub held: u64,
    /// Held requests resumed once the app was warm.
    pub resumed: u64,
    /// Held requests answered 503 at the timeout.
    pub timed_out: u64,
    /// Requests answered 503 at once, beyond the cap.
    pub rejected: u64,
    /// Held requests whose stream ended while held.
    pub cancelled: u64,
}

/// The way in, running.
pub struct Ingress {
    via: Via,
    endpoints: Endpoints,
    envoy: Option<Envoy>,
    _service: Option<ServiceProxy>,
}

/// What the proxy in front of the app needs.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// Where the load enters.
    pub via: Via,
    /// The app Service's namespace and name.
    pub namespace: String,
    /// The app Service.
    pub service: String,
    /// Where the proxy sends its reports.
    pub report_to: SocketAddr,
    /// The filter's `pluginConfig` shared by every proxy (token, report interval).
    pub plugin_config: Value,
    /// Hold settings.
    pub hold: Hold,
    /// The filter's .wasm.
    pub wasm: PathBuf,
    /// The Envoy binary.
    pub envoy_binary: PathBuf,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// Folder for its files.
    pub work_dir: PathBuf,
}

impl Ingress {
    /// Starts the way in; `app` are the app Service's ready endpoints.
    pub async fn start(options: IngressOptions, app: Endpoints) -> Result<Self, EnvoyError> {
        let (role, identity) = match options.via {
            Via::Sidecars => {
                return Ok(Self {
                    via: Via::Sidecars,
                    endpoints: app,
                    envoy: None,
                    _service: None,
                });
            }
            Via::Gateway => ("gateway", gateway_identity()),
            Via::Client => ("client", caller_identity(&options.namespace)),
        };
        let service = ServiceProxy::start(app)
            .await
            .map_err(|source| EnvoyError::Io {
                context: "the Service's virtual address".into(),
                source,
            })?;
        let mut plugin_config = options.plugin_config.clone();
        plugin_config["role"] = json!(role);
        plugin_config["hold"] = json!({
            "max_requests": options.hold.max_requests,
            "timeout_ms": options.hold.timeout_ms,
            "retry_after_s": options.hold.retry_after_s,
        });
        let mut bootstrap = Bootstrap::new(service.addr(), options.report_to)
            .filter(WasmFilter::surge(&options.wasm, &plugin_config))
            .node(identity);
        bootstrap.upstream_cluster = app_cluster(&options.namespace, &options.service);
        let envoy_options = EnvoyOptions {
            binary: options.envoy_binary.clone(),
            concurrency: options.envoy_concurrency,
            base_id: None,
            work_dir: options.work_dir.clone(),
            log_level: "warning".into(),
            ready_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
            nice: None,
        };
        let envoy = tokio::task::spawn_blocking(move || Envoy::start(&bootstrap, &envoy_options))
            .await
            .map_err(|e| EnvoyError::Io {
                context: format!("the {role} Envoy's start"),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(Self {
            via: options.via,
            endpoints: fixed_endpoint(role, envoy.listener_addr()),
            envoy: Some(envoy),
            _service: Some(service),
        })
    }

    /// Where the load goes.
    pub fn endpoints(&self) -> Endpoints {
        std::sync::Arc::clone(&self.endpoints)
    }

    /// Where the load enters.
    pub fn via(&self) -> Via {
        self.via
    }

    /// The filter's hold counters on the proxy in front of the app (none straight to the pods).
    pub fn hold_counts(&self) -> Option<HoldCounts> {
        let stats: BTreeMap<String, i64> = self.envoy.as_ref()?.stats().ok()?;
        let stat = |name: &str| {
            stats
                .iter()
                .find(|(key, _)| key.ends_with(name))
                .map_or(0, |(_, v)| (*v).max(0) as u64)
        };
        Some(HoldCounts {
            held: stat("surge.held_total"),
            resumed: stat("surge.held_resumed_total"),
            timed_out: stat("surge.held_timed_out_total"),
            rejected: stat("surge.held_rejected_total"),
            cancelled: stat("surge.held_cancelled_total"),
        })
    }
}

fn gateway_identity() -> NodeIdentity {
    NodeIdentity {
        pod: "istio-ingressgateway-6b9d8c7f5-sbx01".into(),
        namespace: "istio-system".into(),
        workload: "istio-ingressgateway".into(),
        owner: "kubernetes://apis/apps/v1/namespaces/istio-system/deployments/istio-ingressgateway"
            .into(),
    }
}

fn caller_identity(namespace: &str) -> NodeIdentity {
    NodeIdentity {
        pod: "caller-7f6d5c4b3-sbx01".into(),
        namespace: namespace.into(),
        workload: "caller".into(),
        owner: format!("kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/caller"),
    }
}

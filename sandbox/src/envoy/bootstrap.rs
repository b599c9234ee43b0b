//! The typed bootstrap of a sidecar-shaped Envoy: its routes, node identity, Wasm filter and
//! clusters, rendered to the JSON Envoy reads ([`Bootstrap::to_json`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde_json::{Value, json};

use super::{DEFAULT_ROOT_ID, DEFAULT_UPSTREAM_CLUSTER, SCALER_CLUSTER};

/// One named route on the listener's single virtual host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The route's name (what `xds.route_name` returns; Istio: the VirtualService `http[].name`).
    pub name: String,
    /// Path prefix the route matches.
    pub prefix: String,
}

impl Route {
    /// A route named `name` matching paths starting with `prefix`.
    pub fn new(name: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            prefix: prefix.into(),
        }
    }
}

/// Istio-like node identity, exposed to the filter as `xds.node.metadata.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Pod name (`NAME`).
    pub pod: String,
    /// Namespace (`NAMESPACE`).
    pub namespace: String,
    /// Workload (`WORKLOAD_NAME`).
    pub workload: String,
    /// Owner (`OWNER`); empty to leave it out.
    pub owner: String,
}

impl Default for NodeIdentity {
    fn default() -> Self {
        Self {
            pod: "web-7d4b9c6f5-x2x8q".into(),
            namespace: "shop".into(),
            workload: "web".into(),
            owner: "kubernetes://apis/apps/v1/namespaces/shop/deployments/web".into(),
        }
    }
}

/// A proxy-wasm HTTP filter loaded on the V8 runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmFilter {
    /// The .wasm file.
    pub wasm_path: PathBuf,
    /// The plugin configuration, passed as a string (as Istio passes `pluginConfig`).
    pub plugin_config: String,
    /// The root id (`root_id`; Istio sets it to the WasmPlugin's `pluginName`).
    pub root_id: String,
    /// The plugin name (Istio: `<namespace>.<WasmPlugin name>`).
    pub plugin_name: String,
    /// Environment variables for the VM (`vm_config.environment_variables.key_values`).
    pub env: BTreeMap<String, String>,
}

impl WasmFilter {
    /// The surge filter from `wasm_path` with `plugin_config` (a JSON object).
    pub fn surge(wasm_path: impl Into<PathBuf>, plugin_config: &Value) -> Self {
        Self {
            wasm_path: wasm_path.into(),
            plugin_config: plugin_config.to_string(),
            root_id: DEFAULT_ROOT_ID.into(),
            plugin_name: "istio-system.surge".into(),
            env: BTreeMap::new(),
        }
    }

    /// The empty proxy-wasm filter (benchmark baseline).
    pub fn empty(wasm_path: impl Into<PathBuf>) -> Self {
        Self {
            wasm_path: wasm_path.into(),
            plugin_config: String::new(),
            root_id: "empty".into(),
            plugin_name: "istio-system.empty".into(),
            env: BTreeMap::new(),
        }
    }
}

/// What a [`Bootstrap`] renders: one listener, named routes to one upstream, the scaler cluster,
/// an optional wasm filter, and the admin interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// Listener address: 127.0.0.1, or a pod's own loopback address on the sandbox's node.
    pub listener_ip: IpAddr,
    /// Listener port; 0 lets Envoy pick (see [`Envoy::listener_addr`](super::Envoy::listener_addr)).
    pub listener_port: u16,
    /// Admin address: 127.0.0.1, or a pod's own loopback address on the sandbox's node.
    pub admin_ip: IpAddr,
    /// Admin port; 0 lets Envoy pick (see [`Envoy::admin_addr`](super::Envoy::admin_addr)).
    pub admin_port: u16,
    /// The upstream every route forwards to.
    pub upstream: SocketAddr,
    /// The upstream cluster's name (what `xds.cluster_name` returns).
    pub upstream_cluster: String,
    /// Where the scaler (or a capture server) listens.
    pub scaler: SocketAddr,
    /// The scaler cluster's name; [`SCALER_CLUSTER`] by default.
    pub scaler_cluster: String,
    /// The virtual host's name (what `xds.virtual_host_name` returns).
    pub virtual_host: String,
    /// Routes, matched in order; a catch-all `/` route named `default` is appended last.
    pub routes: Vec<Route>,
    /// The wasm filter, or `None` for Envoy without any filter but the router.
    pub filter: Option<WasmFilter>,
    /// Node identity.
    pub node: NodeIdentity,
}

impl Bootstrap {
    /// A sidecar-like bootstrap forwarding to `upstream` and reporting to `scaler`, with no routes
    /// but the catch-all and no filter.
    pub fn new(upstream: SocketAddr, scaler: SocketAddr) -> Self {
        Self {
            listener_ip: IpAddr::from([127, 0, 0, 1]),
            listener_port: 0,
            admin_ip: IpAddr::from([127, 0, 0, 1]),
            admin_port: 0,
            upstream,
            upstream_cluster: DEFAULT_UPSTREAM_CLUSTER.into(),
            scaler,
            scaler_cluster: SCALER_CLUSTER.into(),
            virtual_host: "inbound|http|8080".into(),
            routes: Vec::new(),
            filter: None,
            node: NodeIdentity::default(),
        }
    }

    /// Adds a named route matching `prefix`.
    pub fn route(mut self, name: impl Into<String>, prefix: impl Into<String>) -> Self {
        self.routes.push(Route::new(name, prefix));
        self
    }

    /// Sets the wasm filter.
    pub fn filter(mut self, filter: WasmFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Sets the node identity.
    pub fn node(mut self, node: NodeIdentity) -> Self {
        self.node = node;
        self
    }

    /// Sets the listener's address and port (port 0: any free port).
    pub fn listener(mut self, addr: SocketAddr) -> Self {
        self.listener_ip = addr.ip();
        self.listener_port = addr.port();
        self
    }

    /// Sets the listener port (0: any free port).
    pub fn listener_port(mut self, port: u16) -> Self {
        self.listener_port = port;
        self
    }

    /// Sets the admin port (0: any free port).
    pub fn admin_port(mut self, port: u16) -> Self {
        self.admin_port = port;
        self
    }

    /// Sets the admin address and port (port 0: any free port).
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin_ip = addr.ip();
        self.admin_port = addr.port();
        self
    }

    /// Renders Envoy's bootstrap as JSON (Envoy reads JSON as YAML).
    pub fn to_json(&self) -> Value {
        let mut routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "match": { "prefix": r.prefix },
                    "route": { "cluster": self.upstream_cluster, "timeout": "15s" },
                })
            })
            .collect();
        routes.push(json!({
            "name": "default",
            "match": { "prefix": "/" },
            "route": { "cluster": self.upstream_cluster, "timeout": "15s" },
        }));

        let mut http_filters = Vec::new();
        if let Some(filter) = &self.filter {
            http_filters.push(wasm_http_filter(filter));
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }
        }));

        let mut metadata = serde_json::Map::new();
        metadata.insert("NAME".into(), json!(self.node.pod));
        metadata.insert("NAMESPACE".into(), json!(self.node.namespace));
        metadata.insert("WORKLOAD_NAME".into(), json!(self.node.workload));
        if !self.node.owner.is_empty() {
            metadata.insert("OWNER".into(), json!(self.node.owner));
        }
        metadata.insert("CLUSTER_ID".into(), json!("Kubernetes"));

        json!({
            "node": {
                "id": format!("sidecar~127.0.0.1~{}.{}~{}.svc.cluster.local",
                    self.node.pod, self.node.namespace, self.node.namespace),
                "cluster": format!("{}.{}", self.node.workload, self.node.namespace),
                "metadata": metadata,
            },
            "admin": {
                "address": socket(&self.admin_ip.to_string(), self.admin_port),
            },
            "static_resources": {
                "listeners": [{
                    "name": "virtualInbound",
                    "address": socket(&self.listener_ip.to_string(), self.listener_port),
                    // Two Envoys on one address must clash loudly, not share the port.
                    "enable_reuse_port": false,
                    "filter_chains": [{
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "stat_prefix": "inbound_0.0.0.0_8080",
                                "route_config": {
                                    "name": "inbound|8080||",
                                    "virtual_hosts": [{
                                        "name": self.virtual_host,
                                        "domains": ["*"],
                                        "routes": routes,
                                    }],
                                },
                                "http_filters": http_filters,
                            }
                        }]
                    }]
                }],
                "clusters": [
                    static_cluster(&self.upstream_cluster, self.upstream),
                    static_cluster(&self.scaler_cluster, self.scaler),
                ],
            },
        })
    }
}

pub(super) fn socket(address: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": address, "port_value": port } })
}

pub(super) fn static_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": { "address": socket(&addr.ip().to_string(), addr.port()) }
                }]
            }]
        }
    })
}

pub(super) fn wasm_http_filter(filter: &WasmFilter) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": filter.plugin_name,
                "root_id": filter.root_id,
                // Istio leaves vm_id empty, so every plugin of a proxy shares one shared-data
                // namespace; the tests must see the same.
                "vm_config": {
                    "vm_id": "",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": filter.wasm_path.to_string_lossy() } },
                    "environment_variables": { "key_values": filter.env },
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": filter.plugin_config,
                },
                // What the WasmPlugin's failStrategy FAIL_OPEN configures.
                "failure_policy": "FAIL_OPEN",
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn bootstrap_names_the_scaler_cluster_the_istio_way() {
        let json = Bootstrap::new(addr(1), addr(2)).to_json();
        let clusters = json["static_resources"]["clusters"].as_array().unwrap();
        assert!(clusters.iter().any(|c| c["name"] == SCALER_CLUSTER));
    }

    #[test]
    fn bootstrap_carries_named_routes_before_the_catch_all() {
        let json = Bootstrap::new(addr(1), addr(2))
            .route("a", "/a")
            .route("b", "/b")
            .to_json();
        let hcm = &json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b", "default"]);
        // No filter: only the router.
        assert_eq!(hcm["http_filters"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn wasm_filter_runs_on_v8_with_the_plugin_config_as_a_string() {
        let json = Bootstrap::new(addr(1), addr(2))
            .filter(WasmFilter::surge("/x.wasm", &json!({"interval_ms": 100})))
            .to_json();
        let filter = &json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0]["typed_config"]["config"];
        assert_eq!(filter["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert_eq!(filter["root_id"], DEFAULT_ROOT_ID);
        assert_eq!(filter["configuration"]["value"], r#"{"interval_ms":100}"#);
    }

    #[test]
    fn node_metadata_is_istio_like() {
        let json = Bootstrap::new(addr(1), addr(2)).to_json();
        let metadata = &json["node"]["metadata"];
        for key in ["NAME", "NAMESPACE", "WORKLOAD_NAME", "OWNER"] {
            assert!(metadata[key].is_string(), "{key}");
        }
    }
}

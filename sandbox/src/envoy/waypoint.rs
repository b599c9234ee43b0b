//! An Envoy configured as an Istio 1.30 ambient **waypoint** is (`istiod` cannot run here, so
//! the configuration it would push is written out by hand), for the filter's `waypoint` role.
//!
//! Derived from Istio's source, `release-1.30`: `pilot/pkg/networking/core/listener_waypoint.go`
//! (listeners, filter chains, the HTTP filter order, inline routes), `cluster_waypoint.go`
//! (cluster names and their `istio.services` metadata), `pilot/pkg/xds/filters/filters.go`
//! (the CONNECT authority filter state), and `pilot/pkg/model/service.go` (`BuildSubsetKey`).
//!
//! ```text
//!  client --HTTP/1.1 CONNECT <vip>:<port>--> connect_terminate (a socket; Istio: 15008, mTLS, h2)
//!     :authority -> filter state envoy.filters.listener.original_dst.local_ip (shared upstream)
//!     route connect_matcher --> cluster main_internal (internal address)
//!  main_internal (internal listener): original_dst listener filter, then a matcher on
//!     destination IP (the VIP) and port --> filter chain `inbound-vip|<port>|http|<host>`:
//!     HCM, inline route config `inbound-vip|<port>|http|<host>`, virtual host
//!     `inbound|http|<port>`, routes (HTTPRoute rules `<ns>.<name>.<i>`, else `default`)
//!     http filters: [surge-filter (phase STATS)], router
//!     --> cluster `inbound-vip|<port>|http|<host>` (metadata istio.services [{host,name,namespace}])
//!  outbound|8080||surge-scaler.surge-system.svc.cluster.local: the cluster the filter reports to,
//!     which Istio builds on a waypoint for a Service an EnvoyFilter's
//!     `envoyfilter.istio.io/referenced-services` annotation names
//!     (istio/envoyfilter-waypoint-scaler.yaml)
//! ```
//!
//! What differs from Istio, because it needs what does not run here: the tunnel is CONNECT in
//! plaintext, HTTP/2 or HTTP/1.1 (Istio: HTTP/2 CONNECT over mTLS from ztunnel), so there is no
//! `io.istio.peer_principal`; the `inbound-vip` clusters reach the app directly (Istio: an
//! internal address through `connect_originate`, HBONE to the pod); the main_internal matcher
//! leaves out the HTTP inspector's protocol branch (every chain here is HTTP); Istio's own HTTP
//! filters (authn, RBAC, peer metadata, istio.stats) are not there, as they need Istio's proxy
//! build. The filter sits where a WasmPlugin of phase STATS does: after them, before the router.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};

use super::bootstrap::{socket, static_cluster, wasm_http_filter};
use super::{NodeIdentity, SCALER_CLUSTER, WasmFilter};

/// A Service bound to the waypoint: its VIP and port, the app behind it, and its HTTPRoute's
/// rules (matched in order, before the catch-all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointService {
    /// Service name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its cluster IP (what the caller's CONNECT names).
    pub vip: IpAddr,
    /// The Service port.
    pub port: u16,
    /// Where its endpoints answer.
    pub upstream: SocketAddr,
    /// HTTPRoute rules as (name, path prefix); Istio names a rule `<ns>.<httproute>.<index>`
    /// unless the rule has a name. None: only the route `default`.
    pub routes: Vec<(String, String)>,
}

impl WaypointService {
    /// `<name>.<namespace>.svc.cluster.local`.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    /// `inbound-vip|<port>|http|<host>`: the cluster, the filter chain and the route config.
    pub fn cluster(&self) -> String {
        format!("inbound-vip|{}|http|{}", self.port, self.host())
    }
}

/// The waypoint's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointBootstrap {
    /// The Services bound to it.
    pub services: Vec<WaypointService>,
    /// The filter (as a WasmPlugin with `targetRefs` to the waypoint's Gateway puts it on every
    /// Service's chain), or none.
    pub filter: Option<WasmFilter>,
    /// Where the scaler listens.
    pub scaler: SocketAddr,
    /// The node: a waypoint's pod (`WORKLOAD_NAME` is the Gateway's name).
    pub node: NodeIdentity,
    /// `connect_terminate`'s port on 127.0.0.1 (Istio: 15008); 0: any free port.
    pub listener_port: u16,
    /// The admin port on 127.0.0.1; 0: any free port.
    pub admin_port: u16,
}

impl WaypointBootstrap {
    /// The waypoint `waypoint` of namespace `namespace`, serving `services`, reporting to
    /// `scaler`.
    pub fn new(namespace: &str, services: Vec<WaypointService>, scaler: SocketAddr) -> Self {
        Self {
            services,
            filter: None,
            scaler,
            node: NodeIdentity {
                pod: "waypoint-6f8d9c7b5-wp7x2".into(),
                namespace: namespace.into(),
                workload: "waypoint".into(),
                owner: format!(
                    "kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/waypoint"
                ),
            },
            listener_port: 0,
            admin_port: 0,
        }
    }

    /// Sets the filter.
    pub fn filter(mut self, filter: WasmFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Renders Envoy's bootstrap.
    pub fn to_json(&self) -> Value {
        let node = &self.node;
        let mut clusters = vec![
            json!({
                "name": "main_internal",
                "type": "STATIC",
                "connect_timeout": "10s",
                "load_assignment": {
                    "cluster_name": "main_internal",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "envoy_internal_address": {"server_listener_name": "main_internal"}
                    }}}]}]
                },
                "transport_socket": {
                    "name": "internal_upstream",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                        "transport_socket": {"name": "raw_buffer", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                        }}
                    }
                },
            }),
            static_cluster(SCALER_CLUSTER, self.scaler),
        ];
        for service in &self.services {
            let mut cluster = static_cluster(&service.cluster(), service.upstream);
            cluster["metadata"] = json!({"filter_metadata": {"istio": {"services": [{
                "host": service.host(), "name": service.name, "namespace": service.namespace
            }]}}});
            clusters.push(cluster);
        }
        json!({
            "node": {
                "id": format!("waypoint~127.0.0.1~{}.{}~{}.svc.cluster.local",
                    node.pod, node.namespace, node.namespace),
                "cluster": format!("{}.{}", node.workload, node.namespace),
                "metadata": {
                    "NAME": node.pod, "NAMESPACE": node.namespace,
                    "WORKLOAD_NAME": node.workload, "OWNER": node.owner,
                    "SERVICE_ACCOUNT": node.workload, "CLUSTER_ID": "Kubernetes",
                },
            },
            "admin": {"address": socket("127.0.0.1", self.admin_port)},
            "bootstrap_extensions": [{
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
                }
            }],
            "static_resources": {
                "listeners": [self.connect_terminate(), self.main_internal()],
                "clusters": clusters,
            },
        })
    }

    fn connect_terminate(&self) -> Value {
        json!({
            "name": "connect_terminate",
            "address": socket("127.0.0.1", self.listener_port),
            "enable_reuse_port": false,
            "filter_chains": [{
                "name": "default",
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "connect_terminate",
                        "route_config": {"name": "default", "virtual_hosts": [{
                            "name": "default", "domains": ["*"],
                            "routes": [{
                                "match": {"connect_matcher": {}},
                                "route": {
                                    "cluster": "main_internal",
                                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]
                                }
                            }]
                        }]},
                        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
                        // HTTP/2 CONNECT as ztunnel sends it, or HTTP/1.1 CONNECT (codec AUTO).
                        "http2_protocol_options": {"allow_connect": true},
                        "stream_idle_timeout": "0s",
                        "http_filters": [
                            {
                                "name": "connect_authority",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                                    "on_request_headers": [
                                        {
                                            "object_key": "envoy.filters.listener.original_dst.local_ip",
                                            "format_string": {"text_format_source": {"inline_string": "%REQ(:AUTHORITY)%"}},
                                            "shared_with_upstream": "ONCE"
                                        },
                                        {
                                            "object_key": "envoy.filters.listener.original_dst.remote_ip",
                                            "format_string": {"text_format_source": {"inline_string": "%DOWNSTREAM_REMOTE_ADDRESS%"}},
                                            "shared_with_upstream": "ONCE"
                                        }
                                    ]
                                }
                            },
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            }}
                        ],
                    }
                }]
            }]
        })
    }

    fn main_internal(&self) -> Value {
        let mut chains = Vec::new();
        // destination IP (the VIP) -> destination port -> the Service port's HTTP chain.
        let mut by_ip: serde_json::Map<String, Value> = serde_json::Map::new();
        for service in &self.services {
            chains.push(self.service_chain(service));
            let ports = by_ip
                .entry(service.vip.to_string())
                .or_insert_with(|| json!({"matcher": {"matcher_tree": {
                    "input": {"name": "port", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput"
                    }},
                    "exact_match_map": {"map": {}}
                }}}));
            ports["matcher"]["matcher_tree"]["exact_match_map"]["map"][service.port.to_string()] = json!({"action": {"name": service.cluster(), "typed_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": service.cluster()
            }}});
        }
        json!({
            "name": "main_internal",
            "internal_listener": {},
            "traffic_direction": "INBOUND",
            "listener_filters": [{
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
                }
            }],
            "filter_chains": chains,
            "filter_chain_matcher": {"matcher_tree": {
                "input": {"name": "ip", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput"
                }},
                "exact_match_map": {"map": by_ip}
            }},
        })
    }

    fn service_chain(&self, service: &WaypointService) -> Value {
        let cluster = service.cluster();
        let mut routes: Vec<Value> = service
            .routes
            .iter()
            .map(|(name, prefix)| {
                json!({"name": name, "match": {"prefix": prefix},
                       "route": {"cluster": cluster, "timeout": "15s"}})
            })
            .collect();
        routes.push(json!({"name": "default", "match": {"prefix": "/"},
                           "route": {"cluster": cluster, "timeout": "15s"}}));
        let mut http_filters = Vec::new();
        if let Some(filter) = &self.filter {
            http_filters.push(wasm_http_filter(filter));
        }
        http_filters.push(
            json!({"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }}),
        );
        json!({
            "name": cluster,
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": cluster,
                    "route_config": {
                        "name": cluster,
                        "virtual_hosts": [{
                            "name": format!("inbound|http|{}", service.port),
                            "domains": ["*"],
                            "routes": routes,
                        }],
                    },
                    "http_filters": http_filters,
                }
            }]
        })
    }
}

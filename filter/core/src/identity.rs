//! Who this proxy is: Istio's node metadata (`NAMESPACE`, `WORKLOAD_NAME`, `NAME`, `OWNER`),
//! read from `xds.node.metadata.*` (Envoy >= 1.33) or the older `node.metadata.*`.

use surge_wire::{Proxy, Role};

use crate::route::sanitize;

/// Property paths tried in order for a metadata key: the current one first, then the name older
/// proxies (Envoy < 1.33, Istio < 1.25) answer to.
pub fn metadata_paths(key: &str) -> [Vec<&str>; 2] {
    [
        vec!["xds", "node", "metadata", key],
        vec!["node", "metadata", key],
    ]
}

/// Property paths of the node id, the current name first.
pub const NODE_ID_PATHS: [&[&str]; 2] = [&["xds", "node", "id"], &["node", "id"]];

/// Whether the node id is an Istio gateway's: `router~<ip>~<pod>.<ns>~<domain>` (a sidecar's
/// starts with `sidecar~`). A client plugin (Istio `CLIENT` mode, mesh-wide) also lands on
/// gateways, which match as `CLIENT`; there the gateway's own plugin holds and reports, and
/// the client plugin stands aside.
pub fn is_gateway_node(node_id: &[u8]) -> bool {
    node_id.starts_with(b"router~")
}

/// What stands in for a missing required identity field, so reports stay valid (and visibly
/// unattributed) rather than being refused by the scaler.
pub const UNKNOWN: &str = "unknown";

/// Builds the identity; `lookup(key)` returns the raw metadata value. Values are cut to the
/// wire limits and stripped of whitespace and control characters.
pub fn proxy(lookup: impl Fn(&str) -> Option<Vec<u8>>, role: Role) -> (Proxy, Vec<&'static str>) {
    let mut missing = Vec::new();
    let mut field = |key: &'static str, max: usize, required: bool| {
        let value = lookup(key)
            .map(|raw| {
                sanitize(&raw, max)
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect::<String>()
            })
            .unwrap_or_default();
        if value.is_empty() && required {
            missing.push(key);
            UNKNOWN.to_string()
        } else {
            value
        }
    };
    let proxy = Proxy {
        namespace: field("NAMESPACE", 63, true),
        workload: field("WORKLOAD_NAME", 253, true),
        pod: field("NAME", 253, true),
        owner: field("OWNER", 512, false),
        role,
    };
    (proxy, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_comes_from_node_metadata() {
        let (proxy, missing) = proxy(
            |key| {
                Some(
                    match key {
                        "NAMESPACE" => "shop",
                        "WORKLOAD_NAME" => "web",
                        "NAME" => "web-1",
                        "OWNER" => "kubernetes://apis/apps/v1/namespaces/shop/deployments/web",
                        _ => return None,
                    }
                    .into(),
                )
            },
            Role::Gateway,
        );
        assert!(missing.is_empty());
        assert_eq!(proxy.namespace, "shop");
        assert_eq!(proxy.workload, "web");
        assert_eq!(proxy.pod, "web-1");
        assert!(proxy.owner.ends_with("/web"));
        assert_eq!(proxy.role, Role::Gateway);
    }

    #[test]
    fn missing_fields_are_named_and_replaced() {
        let (proxy, missing) = proxy(|_| None, Role::Sidecar);
        assert_eq!(missing, ["NAMESPACE", "WORKLOAD_NAME", "NAME"]);
        assert_eq!(proxy.namespace, UNKNOWN);
        assert_eq!(proxy.owner, "");
    }

    #[test]
    fn whitespace_and_control_characters_are_dropped() {
        let (proxy, _) = proxy(|_| Some(b" we b\n".to_vec()), Role::Sidecar);
        assert_eq!(proxy.namespace, "web_");
    }

    #[test]
    fn gateways_are_told_from_sidecars_by_their_node_id() {
        assert!(is_gateway_node(
            b"router~10.0.0.9~istio-ingressgateway-5c9d.istio-system~istio-system.svc.cluster.local"
        ));
        assert!(!is_gateway_node(
            b"sidecar~10.0.0.7~web-1.shop~shop.svc.cluster.local"
        ));
        assert!(!is_gateway_node(b""));
        assert_eq!(NODE_ID_PATHS[0], ["xds", "node", "id"]);
    }

    #[test]
    fn new_property_names_come_before_the_old_ones() {
        let paths = metadata_paths("NAME");
        assert_eq!(paths[0], ["xds", "node", "metadata", "NAME"]);
        assert_eq!(paths[1], ["node", "metadata", "NAME"]);
    }
}

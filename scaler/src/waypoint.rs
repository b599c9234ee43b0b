//! Ambient mode: which waypoint serves a Service, from the labels Istio reads (pure; the reads
//! of the Service and its namespace are `controller::waypoint`'s).
//!
//! A waypoint serves many Services, so a report from one names the Services in its routes'
//! clusters (`inbound-vip|<port>|http|<host>`). A proxy's namespace is bound to its SPIFFE
//! identity, but the clusters it names are its own claim: the scaler counts a waypoint's route
//! for a target only if the target's Service is bound to that waypoint, exactly as Istio binds
//! it:
//!
//! ```text
//!  the Service's labels if it has istio.io/use-waypoint (<name> | none), else its namespace's:
//!    istio.io/use-waypoint: <name>             the waypoint's name
//!    istio.io/use-waypoint-namespace: <ns>     its namespace (default: the Service's)
//! ```

use std::collections::BTreeMap;

/// The label naming a Service's (or a namespace's) waypoint; `none` opts a Service out of its
/// namespace's waypoint.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// The label naming the namespace of that waypoint, when it is not the Service's own.
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";

/// A waypoint: the namespace and name of its Gateway (its Deployment, and the workload name its
/// proxies report).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaypointRef {
    /// Namespace of the waypoint.
    pub namespace: String,
    /// Name of the waypoint (`waypoint` by default).
    pub name: String,
}

impl std::fmt::Display for WaypointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The waypoint that serves a Service in `namespace` with these labels, its namespace having
/// `namespace_labels` (`None`: not readable, so a binding through the namespace's label
/// cannot be seen). `None`: no waypoint serves it.
pub fn bound_waypoint(
    namespace: &str,
    service_labels: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Option<WaypointRef> {
    // Each object's pair of labels is read together, as Istio reads them: the Service's when it
    // has `use-waypoint` (`none` included), else its namespace's.
    let labels = if service_labels.contains_key(USE_WAYPOINT) {
        service_labels
    } else {
        namespace_labels?
    };
    let name = labels.get(USE_WAYPOINT)?;
    if name.is_empty() || name == "none" {
        return None;
    }
    // Absent: the object's own namespace. Present but empty names no namespace, and Istio
    // finds no waypoint there.
    let waypoint_namespace = match labels.get(USE_WAYPOINT_NAMESPACE) {
        None => namespace,
        Some(ns) if ns.is_empty() => return None,
        Some(ns) => ns.as_str(),
    };
    Some(WaypointRef {
        namespace: waypoint_namespace.to_owned(),
        name: name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn waypoint(namespace: &str, name: &str) -> Option<WaypointRef> {
        Some(WaypointRef {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    #[test]
    fn the_services_label_names_its_waypoint_in_its_namespace() {
        let service = labels(&[(USE_WAYPOINT, "waypoint")]);
        assert_eq!(
            bound_waypoint("shop", &service, None),
            waypoint("shop", "waypoint")
        );
    }

    #[test]
    fn the_namespace_label_binds_unlabelled_services() {
        let namespace = labels(&[(USE_WAYPOINT, "wp"), (USE_WAYPOINT_NAMESPACE, "mesh")]);
        assert_eq!(
            bound_waypoint("shop", &labels(&[]), Some(&namespace)),
            waypoint("mesh", "wp")
        );
        // Unreadable namespace: only the Service's own labels count.
        assert_eq!(bound_waypoint("shop", &labels(&[]), None), None);
    }

    #[test]
    fn the_services_labels_override_the_namespaces() {
        let namespace = labels(&[(USE_WAYPOINT, "wp"), (USE_WAYPOINT_NAMESPACE, "mesh")]);
        let service = labels(&[(USE_WAYPOINT, "own")]);
        // The Service's pair of labels is read together: no namespace label leaks in.
        assert_eq!(
            bound_waypoint("shop", &service, Some(&namespace)),
            waypoint("shop", "own")
        );
        let opted_out = labels(&[(USE_WAYPOINT, "none")]);
        assert_eq!(bound_waypoint("shop", &opted_out, Some(&namespace)), None);
    }

    #[test]
    fn no_label_no_waypoint() {
        assert_eq!(
            bound_waypoint("shop", &labels(&[("app", "web")]), Some(&labels(&[]))),
            None
        );
        assert_eq!(
            bound_waypoint("shop", &labels(&[(USE_WAYPOINT, "")]), None),
            None
        );
        // An empty namespace label names no namespace: no waypoint, as Istio reads it.
        let empty_namespace = labels(&[(USE_WAYPOINT, "wp"), (USE_WAYPOINT_NAMESPACE, "")]);
        assert_eq!(bound_waypoint("shop", &empty_namespace, None), None);
    }
}

//! The Envoy cluster names Istio gives a Service's port, read the same way by the filter (to
//! hold requests for a cold destination) and by the scaler (to map a gateway's or a waypoint's
//! routes to a target).
//!
//! ```text
//!  outbound|<port>|<subset>|<host>          gateways, sidecars (outbound); subset may be empty
//!  inbound-vip|<port>|<proto>[/<subset>]|<host>   ambient waypoints: proto is http or tcp
//! ```

/// Which proxy names clusters this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// `outbound|...`: an ingress gateway or a sidecar's outbound side.
    Outbound,
    /// `inbound-vip|...`: a waypoint, for a Service bound to it.
    InboundVip,
}

/// A Service port's cluster, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCluster<'a> {
    /// Which naming.
    pub kind: ClusterKind,
    /// The Service port.
    pub port: u16,
    /// The subset (a DestinationRule's), empty when none. On a waypoint, without the
    /// protocol prefix.
    pub subset: &'a str,
    /// `<service>.<namespace>.svc.cluster.local` (or a ServiceEntry's host).
    pub host: &'a str,
}

impl<'a> ServiceCluster<'a> {
    /// Parses `cluster`; `None` for any other cluster (`inbound|...`, `BlackHoleCluster`, an
    /// internal listener's, ...).
    pub fn parse(cluster: &'a str) -> Option<Self> {
        let mut parts = cluster.split('|');
        let kind = match parts.next()? {
            "outbound" => ClusterKind::Outbound,
            "inbound-vip" => ClusterKind::InboundVip,
            _ => return None,
        };
        let port = parts.next()?.parse().ok()?;
        let slot = parts.next()?;
        let host = parts.next()?;
        if host.is_empty() || parts.next().is_some() {
            return None;
        }
        let subset = match kind {
            ClusterKind::Outbound => slot,
            ClusterKind::InboundVip => match slot.split_once('/') {
                Some(("http" | "tcp", subset)) => subset,
                None if matches!(slot, "http" | "tcp") => "",
                _ => return None,
            },
        };
        Some(Self {
            kind,
            port,
            subset,
            host,
        })
    }

    /// Whether `self` is the same Service port as `other`, whatever the naming and subset: a
    /// port with no ready endpoint has none in any subset, and a waypoint's `inbound-vip`
    /// cluster carries the traffic a gateway routes to `outbound`.
    pub fn same_port(&self, other: &ServiceCluster<'_>) -> bool {
        self.port == other.port && self.host == other.host
    }
}

/// Whether a cold-list `entry` covers the cluster a proxy routes a request to (and names in its
/// `held[]`): the same name, or, for an entry without a subset (`outbound|<port>||<host>`), any
/// cluster of that Service port, a subset's or a waypoint's (`inbound-vip|...`): a Service port
/// with no ready endpoint has none in any subset, whichever proxy routes to it.
pub fn cold_entry_covers(entry: &str, cluster: &str) -> bool {
    if entry == cluster {
        return true;
    }
    match (ServiceCluster::parse(entry), ServiceCluster::parse(cluster)) {
        (Some(entry), Some(cluster)) => {
            entry.kind == ClusterKind::Outbound
                && entry.subset.is_empty()
                && entry.same_port(&cluster)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_clusters_parse_with_and_without_subset() {
        let c = ServiceCluster::parse("outbound|8080||app.web.svc.cluster.local").unwrap();
        assert_eq!(
            (c.kind, c.port, c.subset, c.host),
            (ClusterKind::Outbound, 8080, "", "app.web.svc.cluster.local")
        );
        let c = ServiceCluster::parse("outbound|80|v1|app.web.svc.cluster.local").unwrap();
        assert_eq!(c.subset, "v1");
    }

    #[test]
    fn waypoint_clusters_parse_without_their_protocol() {
        let c = ServiceCluster::parse("inbound-vip|8080|http|app.web.svc.cluster.local").unwrap();
        assert_eq!(
            (c.kind, c.port, c.subset, c.host),
            (
                ClusterKind::InboundVip,
                8080,
                "",
                "app.web.svc.cluster.local"
            )
        );
        let c = ServiceCluster::parse("inbound-vip|80|http/v2|app.web.svc.cluster.local").unwrap();
        assert_eq!(c.subset, "v2");
        let c = ServiceCluster::parse("inbound-vip|5432|tcp|db.data.svc.cluster.local").unwrap();
        assert_eq!(c.port, 5432);
        let out = ServiceCluster::parse("outbound|80||app.web.svc.cluster.local").unwrap();
        let vip =
            ServiceCluster::parse("inbound-vip|80|http/v2|app.web.svc.cluster.local").unwrap();
        assert!(vip.same_port(&out) && out.same_port(&vip));
    }

    #[test]
    fn a_cold_entry_covers_its_service_ports_clusters_only() {
        let entry = "outbound|8080||app.web.svc.cluster.local";
        assert!(cold_entry_covers(entry, entry));
        assert!(cold_entry_covers(
            entry,
            "outbound|8080|v1|app.web.svc.cluster.local"
        ));
        assert!(cold_entry_covers(
            entry,
            "inbound-vip|8080|http|app.web.svc.cluster.local"
        ));
        assert!(!cold_entry_covers(
            entry,
            "inbound-vip|9090|http|app.web.svc.cluster.local"
        ));
        assert!(!cold_entry_covers(
            entry,
            "outbound|8080||api.web.svc.cluster.local"
        ));
        let subset = "outbound|8080|v1|app.web.svc.cluster.local";
        assert!(!cold_entry_covers(
            subset,
            "outbound|8080|v2|app.web.svc.cluster.local"
        ));
        assert!(!cold_entry_covers(
            subset,
            "inbound-vip|8080|http/v1|app.web.svc.cluster.local"
        ));
    }

    #[test]
    fn other_clusters_do_not_parse() {
        for cluster in [
            "inbound|8080||",
            "inbound-pod|8080||10.0.0.1",
            "inbound-vip|8080|grpc|app.web.svc.cluster.local",
            "inbound-vip|8080|http|",
            "outbound|x||app",
            "outbound|80||app|extra",
            "main_internal",
            "encap",
            "BlackHoleCluster",
            "",
        ] {
            assert_eq!(ServiceCluster::parse(cluster), None, "{cluster}");
        }
    }
}

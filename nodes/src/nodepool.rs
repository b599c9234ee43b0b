//! The NodePool and KWOKNodeClass Karpenter provisions from: `deploy/karpenter/nodepool.yaml`'s
//! pool (`surge-burst`: labels, consolidation, budgets, limits) with the kwok node class in
//! place of the EC2NodeClass, and the instance types named directly instead of through AWS's
//! instance-category labels, which kwok's instance types do not carry.

use std::time::Duration;

use serde_json::{Value, json};

/// The NodePool's (and its node class's) name, as in `deploy/karpenter/nodepool.yaml`.
pub const POOL: &str = "surge-burst";
/// The label the pool puts on its nodes.
pub const CAPACITY_LABEL: &str = "surge.dev/capacity";

/// What the pool may launch.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// kwok instance types the pool may choose from (`c-4x-amd64-linux`: 4 CPU, 8 GiB, 64 pods).
    pub instance_types: Vec<String>,
    /// The most CPU the pool's nodes may have in all (`spec.limits.cpu`).
    pub cpu_limit: u32,
    /// How long a new instance takes to boot and register: the KWOKNodeClass's
    /// `nodeRegistrationDelay`, after which its Node appears (and the sandbox's kubelet reports
    /// it Ready).
    pub boot_delay: Duration,
    /// How long a node must be empty or underused before Karpenter gives it back.
    pub consolidate_after: Duration,
}

impl Default for PoolSettings {
    /// One instance type, 40 CPU in all, 30 s to boot (the figure Karpenter's maintainers quote
    /// for a new node to turn Ready), consolidation after 1 min (as `deploy/karpenter/`).
    fn default() -> Self {
        Self {
            instance_types: vec!["c-4x-amd64-linux".to_owned()],
            cpu_limit: 40,
            boot_delay: Duration::from_secs(30),
            consolidate_after: Duration::from_secs(60),
        }
    }
}

/// A duration as the CRDs' patterns take it (`^([0-9]+(s|m|h))+$`): whole seconds, at least 0.
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

/// The KWOKNodeClass (`karpenter.kwok.sh/v1alpha1`).
pub fn node_class(settings: &PoolSettings) -> Value {
    json!({
        "apiVersion": "karpenter.kwok.sh/v1alpha1",
        "kind": "KWOKNodeClass",
        "metadata": {"name": POOL},
        "spec": {"nodeRegistrationDelay": seconds(settings.boot_delay)},
    })
}

/// The NodePool (`karpenter.sh/v1`).
pub fn node_pool(settings: &PoolSettings) -> Value {
    json!({
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": POOL},
        "spec": {
            "template": {
                "metadata": {"labels": {CAPACITY_LABEL: "burst"}},
                "spec": {
                    "nodeClassRef": {
                        "group": "karpenter.kwok.sh",
                        "kind": "KWOKNodeClass",
                        "name": POOL,
                    },
                    "requirements": [
                        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                        {"key": "karpenter.sh/capacity-type", "operator": "In",
                         "values": ["on-demand"]},
                        {"key": "node.kubernetes.io/instance-type", "operator": "In",
                         "values": settings.instance_types},
                    ],
                    "expireAfter": "720h",
                },
            },
            "disruption": {
                "consolidationPolicy": "WhenEmptyOrUnderutilized",
                "consolidateAfter": seconds(settings.consolidate_after),
                "budgets": [{"nodes": "10%"}],
            },
            "limits": {"cpu": settings.cpu_limit.to_string()},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_names_its_class_and_instance_types() {
        let settings = PoolSettings {
            instance_types: vec!["c-2x-amd64-linux".into(), "c-4x-amd64-linux".into()],
            cpu_limit: 12,
            boot_delay: Duration::from_millis(2500),
            consolidate_after: Duration::from_secs(60),
        };
        let pool = node_pool(&settings);
        assert_eq!(
            pool["spec"]["template"]["spec"]["nodeClassRef"]["name"],
            POOL
        );
        assert_eq!(
            pool["spec"]["template"]["spec"]["requirements"][2]["values"],
            json!(["c-2x-amd64-linux", "c-4x-amd64-linux"])
        );
        assert_eq!(pool["spec"]["limits"]["cpu"], "12");
        assert_eq!(pool["spec"]["disruption"]["consolidateAfter"], "60s");
        // Whole seconds: the CRD's pattern has no fractions.
        assert_eq!(node_class(&settings)["spec"]["nodeRegistrationDelay"], "2s");
    }
}

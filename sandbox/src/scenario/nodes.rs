//! A scenario's nodes (`nodes:`, real control plane only): how big the first node is, and the
//! Karpenter pool that adds nodes when the app's pods no longer fit; and Surge's node headroom
//! for the app (`scaler.headroom`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use surge_nodes::nodepool::PoolSettings;

/// The first node and Karpenter's pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nodes {
    /// The first node's CPU (capacity and allocatable), as a Kubernetes quantity: small, so
    /// that a burst's pods do not fit (it also runs the scaler pods).
    pub first_node_cpu: String,
    /// The kwok instance type Karpenter launches (`c-4x-amd64-linux`: 4 CPU, 3.9 allocatable).
    pub instance_type: String,
    /// Seconds from a launch until the node has booted and registered (the KWOKNodeClass's
    /// `nodeRegistrationDelay`); its kubelet reports it Ready at once.
    pub boot_s: u64,
    /// The pool's CPU limit.
    pub cpu_limit: u32,
    /// Seconds a node must be empty or underused before Karpenter gives it back.
    pub consolidate_after_s: u64,
}

impl Default for Nodes {
    fn default() -> Self {
        let pool = PoolSettings::default();
        Self {
            first_node_cpu: "4".into(),
            instance_type: pool.instance_types[0].clone(),
            boot_s: pool.boot_delay.as_secs(),
            cpu_limit: pool.cpu_limit,
            consolidate_after_s: pool.consolidate_after.as_secs(),
        }
    }
}

impl Nodes {
    /// Karpenter's pool for these settings.
    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            instance_types: vec![self.instance_type.clone()],
            cpu_limit: self.cpu_limit,
            boot_delay: Duration::from_secs(self.boot_s),
            consolidate_after: Duration::from_secs(self.consolidate_after_s),
        }
    }
}

/// `spec.headroom` of the app's SurgeScaler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Headroom {
    /// Spare pods kept before any burst (`minReplicas`).
    pub min_replicas: u32,
    /// How long the largest burst is remembered (`burstWindowSeconds`).
    pub burst_window_s: u32,
    /// The most spare pods (`maxReplicas`); no cap when absent.
    pub max_replicas: Option<u32>,
}

impl Default for Headroom {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            burst_window_s: 3600,
            max_replicas: None,
        }
    }
}

//! The autoscaler models: each a pure struct implementing [`Autoscaler`], tested against its
//! anchor's documented behaviour (shared/reference/autoscalers.md).
//!
//! All systems get the same bounds and plan for the same headroom: a per-pod target of 70 % of
//! the pod's capacity, which is Knative's default target utilization (70 %) applied to the pod's
//! capacity, and the threshold a platform team would give the classic chain's ScaledObject.

use serde::{Deserialize, Serialize};

use super::sim::{Autoscaler, PodModel};

pub mod classic;
pub mod hpa;
pub mod kpa;
pub mod prometheus;

/// Bounds and per-pod target shared by the systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleTarget {
    /// Fewest replicas (0 allows scale to zero where the system supports it).
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// Requests per second each replica should carry.
    pub target_rps_per_pod: f64,
}

impl ScaleTarget {
    /// The common target for `pod`: 70 % of its capacity (Knative's default target utilization,
    /// shared/reference/autoscalers.md).
    pub fn for_pod(pod: &PodModel, min_replicas: u32, max_replicas: u32) -> Self {
        Self {
            min_replicas,
            max_replicas,
            target_rps_per_pod: pod.capacity_rps * kpa::TARGET_UTILIZATION,
        }
    }
}

/// The anchors' models for one run: the classic chain, the tutorial's counter variant and
/// Knative's KPA, with loop phases drawn from `seed`.
pub fn anchors(target: ScaleTarget, pod: &PodModel, seed: u64) -> Vec<Box<dyn Autoscaler>> {
    vec![
        Box::new(classic::ClassicChain::new(target, seed)),
        Box::new(classic::ClassicChain::tutorial(
            target.target_rps_per_pod,
            seed,
        )),
        Box::new(kpa::Kpa::new(target, pod.capacity_rps, seed)),
    ]
}

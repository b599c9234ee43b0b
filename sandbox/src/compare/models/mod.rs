//! The autoscaler models: each a pure struct implementing [`Autoscaler`], tested against its
//! anchor's documented behaviour (shared/reference/autoscalers.md).
//!
//! All systems get the same bounds and plan for the same load per pod: the scenario's
//! SurgeScaler target (70 rps for a 100 rps pod), which is also the ScaledObject threshold a
//! platform team would pick and what Knative plans for with a per-pod target of the pod's
//! capacity at its default 70 % target utilization.

use serde::{Deserialize, Serialize};

use super::sim::{Autoscaler, PodModel};

pub mod classic;
pub mod hpa;
pub mod kpa;
pub mod prometheus;
pub mod surge;

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

/// The anchors' models for one run: the classic chain, the tutorial's counter variant and
/// Knative's KPA, with loop phases drawn from `seed`.
pub fn anchors(target: ScaleTarget, _pod: &PodModel, seed: u64) -> Vec<Box<dyn Autoscaler>> {
    vec![
        Box::new(classic::ClassicChain::new(target, seed)),
        Box::new(classic::ClassicChain::tutorial(
            target.target_rps_per_pod,
            seed,
        )),
        Box::new(kpa::Kpa::new(target, seed)),
    ]
}

/// Every system the comparison runs, for one seed: the anchors and Surge's replayed code.
pub fn all(
    target: ScaleTarget,
    pod: &PodModel,
    seed: u64,
) -> Result<Vec<Box<dyn Autoscaler>>, String> {
    let mut systems = anchors(target, pod, seed);
    let surge = surge::SurgeReplay::new(&target, pod.service_time_ms)
        .map_err(|e| format!("the default SurgeScaler spec does not parse: {e}"))?;
    systems.push(Box::new(surge));
    Ok(systems)
}

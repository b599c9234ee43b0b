//! The run's node figures, when Karpenter adds nodes (`nodes:` in the scenario): when the
//! first node after the step was launched and turned Ready, how long the time to enough ready
//! capacity spent deciding, waiting for a node and starting pods, and the node-seconds the
//! added nodes cost. Pure: times are seconds since the start of the run.

use serde::{Deserialize, Serialize};

/// What happened to nodes during a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFigures {
    /// Nodes Karpenter launched (NodeClaims) by the end of the load.
    pub launched: u32,
    /// Of those, launched before the step: room made ahead (headroom) or for the warm-up.
    pub launched_before_step: u32,
    /// From the step to the first launch after it, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_node_launched_ms: Option<f64>,
    /// From the step to the first node launched after it turning Ready, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_node_ready_ms: Option<f64>,
    /// The summary's time to enough ready capacity, split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_split: Option<CapacitySplit>,
    /// Node-seconds of the added nodes, from each launch to the end of the load.
    pub node_seconds: f64,
}

/// Where the time from the step to enough ready capacity went, in milliseconds; the three add
/// up to the summary's `enough_capacity_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacitySplit {
    /// From the step to the first scale write (the autoscaler's reaction).
    pub decision_ms: f64,
    /// From then until the last node launched after the step that turned Ready before
    /// capacity was enough (0 when the new pods fit on nodes that were up).
    pub node_ms: f64,
    /// The rest: scheduling and the pods' own start-up.
    pub pod_start_ms: f64,
}

/// What [`figures`] works from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// When the step began.
    pub step_at: Option<f64>,
    /// From the step to the first scale write, ms.
    pub first_scale_patch_ms: Option<f64>,
    /// From the step to enough ready capacity, ms.
    pub enough_capacity_ms: Option<f64>,
    /// Each launch (NodeClaim first seen).
    pub launches: &'a [f64],
    /// Each added node's Ready time (joined the fleet).
    pub ready: &'a [f64],
    /// The end of the load.
    pub end: f64,
}

/// The node figures of a run.
pub fn figures(inputs: &Inputs<'_>) -> NodeFigures {
    let played = |t: &&f64| **t <= inputs.end;
    let launches: Vec<f64> = inputs.launches.iter().filter(played).copied().collect();
    let ready: Vec<f64> = inputs.ready.iter().filter(played).copied().collect();
    let step = inputs.step_at;
    let after_step = |t: f64| step.is_some_and(|s| t >= s);
    let first_launch = launches
        .iter()
        .copied()
        .filter(|t| after_step(*t))
        .reduce(f64::min);
    // The first Ready among nodes launched after the step: nodes become Ready in launch order
    // give or take a boot, so the earliest Ready after the first launch.
    let first_ready = first_launch.and_then(|launch| {
        ready
            .iter()
            .copied()
            .filter(|t| *t >= launch)
            .reduce(f64::min)
    });
    let ms_after_step = |t: Option<f64>| step.zip(t).map(|(s, t)| (t - s) * 1000.0);
    let capacity_split = step.zip(inputs.enough_capacity_ms).map(|(s, enough)| {
        let decision = inputs.first_scale_patch_ms.unwrap_or(enough).min(enough);
        let enough_at = s + enough / 1000.0;
        let decided_at = s + decision / 1000.0;
        let node_ready = first_launch.and_then(|launch| {
            ready
                .iter()
                .copied()
                .filter(|t| *t >= launch && *t <= enough_at)
                .reduce(f64::max)
        });
        let node = node_ready.map_or(0.0, |t| {
            ((t - decided_at) * 1000.0).clamp(0.0, enough - decision)
        });
        CapacitySplit {
            decision_ms: decision,
            node_ms: node,
            pod_start_ms: enough - decision - node,
        }
    });
    NodeFigures {
        launched: launches.len() as u32,
        launched_before_step: launches.iter().filter(|t| !after_step(**t)).count() as u32,
        first_node_launched_ms: ms_after_step(first_launch),
        first_node_ready_ms: ms_after_step(first_ready),
        capacity_split,
        node_seconds: launches.iter().map(|t| (inputs.end - t).max(0.0)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_waits_for_a_node_splits_into_decision_node_and_pod_start() {
        // Step at 10 s; Surge writes 0.2 s later; Karpenter launches at 11.5 s, the node is
        // Ready at 41.5 s, enough pods ready at 44 s.
        let f = figures(&Inputs {
            step_at: Some(10.0),
            first_scale_patch_ms: Some(200.0),
            enough_capacity_ms: Some(34_000.0),
            launches: &[11.5],
            ready: &[41.5],
            end: 60.0,
        });
        assert_eq!((f.launched, f.launched_before_step), (1, 0));
        assert_eq!(f.first_node_launched_ms, Some(1500.0));
        assert_eq!(f.first_node_ready_ms, Some(31_500.0));
        let split = f.capacity_split.unwrap();
        assert_eq!(split.decision_ms, 200.0);
        assert!((split.node_ms - 31_300.0).abs() < 1e-6, "{split:?}");
        assert!((split.pod_start_ms - 2_500.0).abs() < 1e-6, "{split:?}");
        assert!((f.node_seconds - 48.5).abs() < 1e-9);
    }

    #[test]
    fn with_room_made_ahead_no_time_goes_to_nodes() {
        // A node of headroom launched during the warm-up; after the step the pods start on it
        // and the room behind them is launched, Ready only after capacity was enough.
        let f = figures(&Inputs {
            step_at: Some(40.0),
            first_scale_patch_ms: Some(150.0),
            enough_capacity_ms: Some(2_300.0),
            launches: &[3.0, 41.0],
            ready: &[33.0, 71.0],
            end: 80.0,
        });
        assert_eq!((f.launched, f.launched_before_step), (2, 1));
        assert_eq!(f.first_node_launched_ms, Some(1000.0));
        assert_eq!(f.first_node_ready_ms, Some(31_000.0));
        let split = f.capacity_split.unwrap();
        assert_eq!((split.decision_ms, split.node_ms), (150.0, 0.0));
        assert!((split.pod_start_ms - 2_150.0).abs() < 1e-6);
        assert!((f.node_seconds - (77.0 + 39.0)).abs() < 1e-9);
    }

    #[test]
    fn nothing_after_the_end_of_the_load_counts() {
        let f = figures(&Inputs {
            step_at: Some(5.0),
            first_scale_patch_ms: None,
            enough_capacity_ms: None,
            launches: &[70.0],
            ready: &[],
            end: 60.0,
        });
        assert_eq!(f, NodeFigures::default());
    }
}

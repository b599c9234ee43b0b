//! The HorizontalPodAutoscaler's replica calculation for one `AverageValue` external metric (what
//! a KEDA ScaledObject creates), with its default behaviour: tolerance, stabilization windows and
//! rate policies. Pure: the caller passes `now`, the current replicas and the metric.
//!
//! Sources: shared/reference/autoscalers.md ("The classic chain": formula, tolerance, behaviour
//! defaults, stabilization semantics) and the order of operations of the HPA controller in
//! kubernetes/pkg/controller/podautoscaler (min/max checks, then stabilization, then rate limits).

use std::collections::VecDeque;

/// A scaling policy: at most `value` pods, or `value` percent, per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// A number of pods per period.
    Pods {
        /// Pods.
        value: u32,
        /// Period, milliseconds.
        period_ms: i64,
    },
    /// A percentage of the replicas at the period's start, per period.
    Percent {
        /// Percent.
        value: u32,
        /// Period, milliseconds.
        period_ms: i64,
    },
}

/// `spec.behavior`, with `selectPolicy: Max` (the default) in both directions.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    /// Scale-up stabilization window, milliseconds.
    pub up_stabilization_ms: i64,
    /// Scale-up policies.
    pub up_policies: Vec<Policy>,
    /// Scale-down stabilization window, milliseconds.
    pub down_stabilization_ms: i64,
    /// Scale-down policies.
    pub down_policies: Vec<Policy>,
}

impl Default for Behavior {
    /// The HPA's defaults (shared/reference/autoscalers.md): scale up stabilization 0 s, policies
    /// max(100 %, 4 pods) per 15 s; scale down stabilization 300 s, 100 % per 15 s.
    fn default() -> Self {
        Self {
            up_stabilization_ms: 0,
            up_policies: vec![
                Policy::Percent {
                    value: 100,
                    period_ms: 15_000,
                },
                Policy::Pods {
                    value: 4,
                    period_ms: 15_000,
                },
            ],
            down_stabilization_ms: 300_000,
            down_policies: vec![Policy::Percent {
                value: 100,
                period_ms: 15_000,
            }],
        }
    }
}

/// The HPA's default tolerance (shared/reference/autoscalers.md: "skipped when within tolerance
/// 0.1").
pub const TOLERANCE: f64 = 0.1;

/// One HPA object's replica calculation and the history its behaviour needs.
#[derive(Debug, Clone)]
pub struct Hpa {
    min_replicas: u32,
    max_replicas: u32,
    target_average_value: f64,
    tolerance: f64,
    behavior: Behavior,
    recommendations: VecDeque<(i64, u32)>,
    initialized: bool,
    /// Replica changes this HPA made: (time, added) and (time, removed).
    up_events: VecDeque<(i64, u32)>,
    down_events: VecDeque<(i64, u32)>,
}

impl Hpa {
    /// An HPA with the default tolerance and behaviour. `min_replicas` is at least 1: with a
    /// KEDA ScaledObject, KEDA itself handles 0 <-> 1.
    pub fn new(min_replicas: u32, max_replicas: u32, target_average_value: f64) -> Self {
        Self {
            min_replicas: min_replicas.max(1),
            max_replicas: max_replicas.max(min_replicas.max(1)),
            target_average_value,
            tolerance: TOLERANCE,
            behavior: Behavior::default(),
            recommendations: VecDeque::new(),
            initialized: false,
            up_events: VecDeque::new(),
            down_events: VecDeque::new(),
        }
    }

    /// One reconciliation at `now_ms`, with the scale's current replicas and the metric's value
    /// (the sum over the workload, for an `AverageValue` target), `None` if it could not be read.
    /// Returns the replicas the HPA writes (the current ones when it does not act).
    pub fn reconcile(&mut self, now_ms: i64, current: u32, metric: Option<f64>) -> u32 {
        // A scale of zero disables the HPA (KEDA owns 0 <-> 1).
        if current == 0 {
            return 0;
        }
        let desired = if current > self.max_replicas {
            self.max_replicas
        } else if current < self.min_replicas {
            self.min_replicas
        } else {
            // A metric that cannot be read changes nothing (the HPA reports ScalingActive=False).
            let Some(value) = metric else {
                return current;
            };
            let proposal = self.proposal(current, value);
            let stabilized = self.stabilize(now_ms, current, proposal);
            self.limit_rate(now_ms, current, stabilized)
        };
        self.record_change(now_ms, current, desired);
        desired
    }

    /// `desired = ceil(sum / target)`, unless `sum / (target * current)` is within the tolerance
    /// of 1 (shared/reference/autoscalers.md, "HPA").
    fn proposal(&self, current: u32, value: f64) -> u32 {
        if self.target_average_value <= 0.0 {
            return current;
        }
        let usage_ratio = value / (self.target_average_value * f64::from(current));
        if (1.0 - usage_ratio).abs() <= self.tolerance {
            return current;
        }
        let desired = (value / self.target_average_value).ceil();
        if desired.is_finite() && desired >= 0.0 {
            desired.min(f64::from(u32::MAX)) as u32
        } else {
            current
        }
    }

    /// Stabilization: the minimum of the recommendations in the scale-up window and the maximum
    /// of those in the scale-down window bound the result. A new HPA starts its history with
    /// the current replicas, so it cannot scale down before a full window has passed
    /// (the controller's `maybeInitScaleDownStabilizationWindow`).
    fn stabilize(&mut self, now_ms: i64, current: u32, proposal: u32) -> u32 {
        if !self.initialized {
            self.initialized = true;
            self.recommendations.push_back((now_ms, current));
        }
        let up_cutoff = now_ms - self.behavior.up_stabilization_ms;
        let down_cutoff = now_ms - self.behavior.down_stabilization_ms;
        let mut up = proposal;
        let mut down = proposal;
        for &(t, r) in &self.recommendations {
            if t > up_cutoff {
                up = up.min(r);
            }
            if t > down_cutoff {
                down = down.max(r);
            }
        }
        let keep = self
            .behavior
            .up_stabilization_ms
            .max(self.behavior.down_stabilization_ms);
        while self
            .recommendations
            .front()
            .is_some_and(|&(t, _)| t <= now_ms - keep)
        {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back((now_ms, proposal));
        current.max(up).min(down)
    }

    /// Replicas added and removed by this HPA within `period_ms` before `now_ms`.
    fn changes_within(&self, now_ms: i64, period_ms: i64) -> (u32, u32) {
        let cutoff = now_ms - period_ms;
        let added = self
            .up_events
            .iter()
            .filter(|&&(t, _)| t > cutoff)
            .map(|&(_, n)| n)
            .sum();
        let removed = self
            .down_events
            .iter()
            .filter(|&&(t, _)| t > cutoff)
            .map(|&(_, n)| n)
            .sum();
        (added, removed)
    }

    /// Rate policies (`selectPolicy: Max`: the policy allowing the largest change wins), then
    /// the min/max bounds.
    fn limit_rate(&self, now_ms: i64, current: u32, desired: u32) -> u32 {
        if desired > current {
            let mut limit = 0u32;
            for policy in &self.behavior.up_policies {
                let proposed = match *policy {
                    Policy::Pods { value, period_ms } => {
                        let start = self.period_start_up(now_ms, period_ms, current);
                        start.saturating_add(value)
                    }
                    Policy::Percent { value, period_ms } => {
                        let start = self.period_start_up(now_ms, period_ms, current);
                        (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as u32
                    }
                };
                limit = limit.max(proposed);
            }
            let allowed = limit.max(current).min(self.max_replicas);
            desired.min(allowed)
        } else if desired < current {
            let mut limit = u32::MAX;
            for policy in &self.behavior.down_policies {
                let proposed = match *policy {
                    Policy::Pods { value, period_ms } => {
                        let start = self.period_start_down(now_ms, period_ms, current);
                        start.saturating_sub(value)
                    }
                    Policy::Percent { value, period_ms } => {
                        let start = self.period_start_down(now_ms, period_ms, current);
                        (f64::from(start) * (1.0 - f64::from(value) / 100.0)).max(0.0) as u32
                    }
                };
                limit = limit.min(proposed);
            }
            let allowed = limit.min(current).max(self.min_replicas);
            desired.max(allowed)
        } else {
            desired
        }
    }

    /// Replicas at the start of the period, as the scale-up limit sees them.
    fn period_start_up(&self, now_ms: i64, period_ms: i64, current: u32) -> u32 {
        let (added, removed) = self.changes_within(now_ms, period_ms);
        current.saturating_sub(added).saturating_add(removed)
    }

    /// Replicas at the start of the period, as the scale-down limit sees them.
    fn period_start_down(&self, now_ms: i64, period_ms: i64, current: u32) -> u32 {
        let (added, removed) = self.changes_within(now_ms, period_ms);
        current.saturating_add(removed).saturating_sub(added)
    }

    fn record_change(&mut self, now_ms: i64, current: u32, desired: u32) {
        let keep = self
            .behavior
            .up_policies
            .iter()
            .chain(&self.behavior.down_policies)
            .map(|p| match *p {
                Policy::Pods { period_ms, .. } | Policy::Percent { period_ms, .. } => period_ms,
            })
            .max()
            .unwrap_or(0);
        for events in [&mut self.up_events, &mut self.down_events] {
            while events.front().is_some_and(|&(t, _)| t <= now_ms - keep) {
                events.pop_front();
            }
        }
        if desired > current {
            self.up_events.push_back((now_ms, desired - current));
        } else if desired < current {
            self.down_events.push_back((now_ms, current - desired));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn within_tolerance_nothing_changes() {
        let mut hpa = Hpa::new(1, 10, 70.0);
        // 4 pods at target 70: 280 +- 10 % (252..=308) keeps 4.
        assert_eq!(hpa.reconcile(0, 4, Some(300.0)), 4);
        assert_eq!(hpa.reconcile(15_000, 4, Some(255.0)), 4);
        assert_eq!(hpa.reconcile(30_000, 4, Some(320.0)), 5);
    }

    #[test]
    fn scale_up_is_limited_to_double_or_four_pods_per_15_s() {
        let mut hpa = Hpa::new(1, 100, 10.0);
        // Wants 100 from 1: +4 pods beats +100 %.
        assert_eq!(hpa.reconcile(0, 1, Some(1_000.0)), 5);
        // From 5: 100 % (10) beats +4 (9).
        assert_eq!(hpa.reconcile(15_000, 5, Some(1_000.0)), 10);
        assert_eq!(hpa.reconcile(30_000, 10, Some(1_000.0)), 20);
        // Within the same 15 s period, nothing more is allowed than the period's start allows.
        assert_eq!(hpa.reconcile(35_000, 20, Some(1_000.0)), 20);
    }

    #[test]
    fn a_new_hpa_does_not_scale_down_before_a_full_window() {
        let mut hpa = Hpa::new(1, 10, 70.0);
        assert_eq!(hpa.reconcile(0, 9, Some(60.0)), 9);
        assert_eq!(hpa.reconcile(285_000, 9, Some(60.0)), 9);
        assert_eq!(hpa.reconcile(300_000, 9, Some(60.0)), 1);
    }

    #[test]
    fn scale_down_waits_for_the_300_s_stabilization_window() {
        let mut hpa = Hpa::new(1, 10, 70.0);
        assert_eq!(hpa.reconcile(0, 9, Some(600.0)), 9);
        let mut replicas = 9;
        let mut t = 15_000;
        while t < 300_000 {
            replicas = hpa.reconcile(t, replicas, Some(60.0));
            assert_eq!(replicas, 9, "at {t}");
            t += 15_000;
        }
        // At 300 s the recommendation of 9 made at 0 s has left the window; 100 % per 15 s
        // lets it go straight to 1.
        assert_eq!(hpa.reconcile(300_000, replicas, Some(60.0)), 1);
    }

    #[test]
    fn bounds_and_missing_metrics() {
        let mut hpa = Hpa::new(2, 5, 10.0);
        assert_eq!(hpa.reconcile(0, 1, Some(0.0)), 2, "below min goes to min");
        assert_eq!(
            hpa.reconcile(15_000, 7, Some(0.0)),
            5,
            "above max goes to max"
        );
        assert_eq!(hpa.reconcile(30_000, 3, None), 3, "no metric, no change");
        assert_eq!(
            hpa.reconcile(45_000, 0, Some(100.0)),
            0,
            "zero disables the HPA"
        );
        assert_eq!(
            hpa.reconcile(60_000, 3, Some(10_000.0)),
            5,
            "max bounds the rate limit"
        );
    }

    proptest! {
        /// Reconciling every 15 s, the HPA never more than doubles and never adds more than 4
        /// pods (whichever allows more) from one loop to the next, and stays within bounds.
        #[test]
        fn never_grows_more_than_max_of_double_or_four_per_15_s(
            metrics in proptest::collection::vec(proptest::option::of(0.0f64..5_000.0), 1..80),
            start in 1u32..20,
        ) {
            let mut hpa = Hpa::new(1, 50, 25.0);
            let mut replicas = start.min(50);
            for (i, m) in metrics.iter().enumerate() {
                let next = hpa.reconcile(i as i64 * 15_000, replicas, *m);
                prop_assert!(next <= (replicas * 2).max(replicas + 4), "{replicas} -> {next}");
                prop_assert!((1..=50).contains(&next));
                replicas = next;
            }
        }
    }
}

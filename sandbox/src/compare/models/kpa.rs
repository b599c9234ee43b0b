//! Knative's autoscaler (KPA) with its defaults, on the RPS metric.
//!
//! Every constant cites shared/reference/autoscalers.md ("Knative KPA"). The autoscaler pulls
//! per-second stats every second, keeps them in a 60 s stable and a 6 s panic window, and decides
//! every 2 s; the decision ([`Kpa::decide`]) is pure and follows the documented formulas:
//! `ready = max(1, readyPods)`, `dspc = ceil(stableAvg / target)`, `dppc = ceil(panicAvg /
//! target)`, each clamped to `[floor(ready / 2), ceil(1000 * ready)]`; panic starts when
//! `dppc / ready >= 2`; while panicking `desired = max(desired so far, dspc, dppc)` and it never
//! scales down; it leaves panic after a full stable window below the threshold. At zero scale the
//! activator's first request pokes an immediate decision; scale to zero needs the stable window
//! to show no traffic, then the 30 s grace period.
//!
//! Approximations: all pods are sampled (Knative samples at most ~16; our scenarios stay at 10 or
//! fewer); window averages are plain means of the per-second samples in the window.

use std::collections::VecDeque;

use super::super::rng::SplitMix64;
use super::super::sim::{Autoscaler, Observation, STEP_MS};
use super::ScaleTarget;

/// Stats are pulled every 1 s.
pub const STATS_PERIOD_MS: i64 = 1_000;
/// Decision tick: every 2 s.
pub const TICK_MS: i64 = 2_000;
/// Stable window: 60 s.
pub const STABLE_WINDOW_MS: i64 = 60_000;
/// Panic window: 10 % of the stable window, 6 s.
pub const PANIC_WINDOW_MS: i64 = 6_000;
/// Panic threshold: 200 %.
pub const PANIC_THRESHOLD: f64 = 2.0;
/// Target utilization: 70 %.
pub const TARGET_UTILIZATION: f64 = 0.7;
/// Max scale-up rate per tick: 1000x.
pub const MAX_SCALE_UP_RATE: f64 = 1000.0;
/// Max scale-down rate per tick: 2x.
pub const MAX_SCALE_DOWN_RATE: f64 = 2.0;
/// Scale-to-zero grace period after the stable window: 30 s.
pub const SCALE_TO_ZERO_GRACE_MS: i64 = 30_000;

/// The outcome of one decision, for tests and inspection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Desired pods, within the bounds.
    pub desired: u32,
    /// Whether the autoscaler is in panic mode after this decision.
    pub panicking: bool,
}

/// Knative's KPA, stepped by the simulation.
#[derive(Debug, Clone)]
pub struct Kpa {
    target: ScaleTarget,
    /// RPS per pod the decider divides by: Knative's per-pod target x utilization.
    target_per_pod: f64,
    stats_phase_ms: i64,
    tick_phase_ms: i64,
    last_total: Option<f64>,
    stats: VecDeque<(i64, f64)>,
    panic_since_ms: Option<i64>,
    max_panic_pods: u32,
    zero_since_ms: Option<i64>,
}

impl Kpa {
    /// A KPA planning for `target.target_rps_per_pod` per pod: Knative's per-pod target times
    /// its target utilization (70 %), so a revision whose target is the pod's capacity (100 rps)
    /// plans for 70 rps, the load every system in the comparison plans for. Phases drawn from
    /// `seed`.
    pub fn new(target: ScaleTarget, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x4b50_4100);
        Self {
            target,
            target_per_pod: target.target_rps_per_pod,
            stats_phase_ms: rng.phase_ms(STATS_PERIOD_MS, STEP_MS),
            tick_phase_ms: rng.phase_ms(TICK_MS, STEP_MS),
            last_total: None,
            stats: VecDeque::new(),
            panic_since_ms: None,
            max_panic_pods: 0,
            zero_since_ms: None,
        }
    }

    /// Whether the autoscaler is in panic mode.
    pub fn panicking(&self) -> bool {
        self.panic_since_ms.is_some()
    }

    fn window_average(&self, now_ms: i64, window_ms: i64) -> Option<f64> {
        let (sum, n) = self
            .stats
            .iter()
            .filter(|&&(t, _)| t > now_ms - window_ms)
            .fold((0.0, 0u32), |(s, n), &(_, v)| (s + v, n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// One decision at `now_ms` from the window averages (requests per second over the whole
    /// revision) and the ready pods.
    pub fn decide(
        &mut self,
        now_ms: i64,
        ready_pods: u32,
        stable_rps: f64,
        panic_rps: f64,
    ) -> Decision {
        let ready = f64::from(ready_pods.max(1));
        let max_up = (MAX_SCALE_UP_RATE * ready).ceil();
        let max_down = (ready / MAX_SCALE_DOWN_RATE).floor();
        let dspc = (stable_rps / self.target_per_pod).ceil();
        let dppc = (panic_rps / self.target_per_pod).ceil();
        let stable_pods = dspc.max(max_down).min(max_up) as u32;
        let panic_pods = dppc.max(max_down).min(max_up) as u32;

        if dppc / ready >= PANIC_THRESHOLD {
            // Entering panic, or staying in it: the stable window below the threshold restarts.
            self.panic_since_ms = Some(now_ms);
        } else if self
            .panic_since_ms
            .is_some_and(|since| since + STABLE_WINDOW_MS < now_ms)
        {
            self.panic_since_ms = None;
            self.max_panic_pods = 0;
        }

        let mut desired = stable_pods;
        if self.panic_since_ms.is_some() {
            // In panic, never scale down.
            self.max_panic_pods = self.max_panic_pods.max(panic_pods).max(stable_pods);
            desired = self.max_panic_pods;
        }

        // Scale to zero only after the window shows nothing for the grace period.
        if desired == 0 {
            let since = *self.zero_since_ms.get_or_insert(now_ms);
            if now_ms - since < SCALE_TO_ZERO_GRACE_MS {
                desired = 1;
            }
        } else {
            self.zero_since_ms = None;
        }
        let desired = desired
            .max(self.target.min_replicas)
            .min(self.target.max_replicas.max(self.target.min_replicas));
        Decision {
            desired,
            panicking: self.panicking(),
        }
    }
}

fn due(now_ms: i64, phase_ms: i64, period_ms: i64) -> bool {
    (now_ms - phase_ms).rem_euclid(period_ms) == 0
}

impl Autoscaler for Kpa {
    fn name(&self) -> &str {
        "Knative KPA"
    }

    fn observe(&mut self, o: &Observation) -> u32 {
        let now = o.now_ms;
        // The queue-proxy counts a request when it arrives (its request-in event), queued or not.
        if due(now, self.stats_phase_ms, STATS_PERIOD_MS) {
            if let Some(last) = self.last_total {
                let rps = (o.requests_total - last) * 1000.0 / STATS_PERIOD_MS as f64;
                self.stats.push_back((now, rps.max(0.0)));
            }
            self.last_total = Some(o.requests_total);
            while self
                .stats
                .front()
                .is_some_and(|&(t, _)| t <= now - STABLE_WINDOW_MS)
            {
                self.stats.pop_front();
            }
        }
        // The activator pokes the autoscaler at once on a request at zero scale.
        if o.replicas == 0 && o.step_requests > 0.0 {
            return self.target.min_replicas.max(1);
        }
        if !due(now, self.tick_phase_ms, TICK_MS) {
            return o.replicas;
        }
        match (
            self.window_average(now, STABLE_WINDOW_MS),
            self.window_average(now, PANIC_WINDOW_MS),
        ) {
            (Some(stable), Some(panic)) => self.decide(now, o.ready_pods, stable, panic).desired,
            _ => o.replicas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::sim::{PodModel, SimConfig, simulate};
    use super::*;
    use proptest::prelude::*;

    fn kpa(min: u32, max: u32) -> Kpa {
        // Target 100 rps x 70 % utilization: 70 rps per pod planned.
        Kpa::new(
            ScaleTarget {
                min_replicas: min,
                max_replicas: max,
                target_rps_per_pod: 100.0 * TARGET_UTILIZATION,
            },
            1,
        )
    }

    #[test]
    fn enters_panic_when_the_6_s_estimate_reaches_twice_the_ready_pods() {
        let mut k = kpa(1, 100);
        // 2 ready pods; 6 s average 210 rps -> dppc 3 -> 1.5x: no panic.
        let d = k.decide(0, 2, 140.0, 210.0);
        assert!(!d.panicking);
        assert_eq!(d.desired, 2);
        // 280 rps -> dppc 4 = 2x ready: panic, and the panic estimate rules.
        let d = k.decide(2_000, 2, 140.0, 280.0);
        assert!(d.panicking);
        assert_eq!(d.desired, 4);
    }

    #[test]
    fn in_panic_it_never_scales_down_and_leaves_after_a_stable_window_below_threshold() {
        let mut k = kpa(1, 100);
        assert_eq!(k.decide(0, 2, 140.0, 700.0).desired, 10);
        // Load gone: still panicking, still 10, for a full stable window.
        let mut t = 2_000;
        while t <= STABLE_WINDOW_MS {
            let d = k.decide(t, 10, 70.0, 70.0);
            assert!(d.panicking, "at {t}");
            assert_eq!(d.desired, 10, "at {t}");
            t += 2_000;
        }
        let d = k.decide(t, 10, 70.0, 70.0);
        assert!(!d.panicking);
        // Out of panic, scale-down is limited to half the ready pods per tick.
        assert_eq!(d.desired, 5);
    }

    #[test]
    fn scale_up_rate_is_1000x_and_scale_down_rate_2x_per_tick() {
        let mut k = kpa(0, 100_000);
        // Stable estimate 1_000_000 rps with 1 ready pod (stable and panic alike): capped at 1000.
        assert_eq!(k.decide(0, 1, 1.0e6, 1.0e6).desired, 1_000);
        let mut k = kpa(0, 100);
        // 8 ready pods, no load: at most halves.
        assert_eq!(k.decide(0, 8, 0.0, 0.0).desired, 4);
    }

    #[test]
    fn reacts_to_a_10x_step_within_the_derived_1_to_4_s() {
        let trace: Vec<f64> = (0..90).map(|s| if s < 30 { 60.0 } else { 600.0 }).collect();
        for seed in 0..20 {
            let mut k = Kpa::new(
                ScaleTarget {
                    min_replicas: 1,
                    max_replicas: 10,
                    target_rps_per_pod: 70.0,
                },
                seed,
            );
            let config = SimConfig {
                pod: PodModel::default(),
                warmup_s: 90,
                warmup_rps: None,
                initial_replicas: 1,
            };
            let out = simulate(&trace, 30.0, &config, &mut k);
            let first = out.metrics.first_scale_up_s;
            // Derived: the panic average reaches 2x after 6/(k-1) s (0.67 s for 10x, from a load
            // at the target; sooner here, as 60 rps is under one pod's 70), plus up to 1 s for
            // stats and 2 s for the tick.
            assert!(
                first.is_some_and(|s| (0.0..=3.7).contains(&s)),
                "seed {seed}: {first:?}"
            );
        }
    }

    #[test]
    fn scales_to_zero_after_stable_window_and_grace_and_back_on_the_first_request() {
        let trace: Vec<f64> = (0..400)
            .map(|s| if (30..300).contains(&s) { 0.0 } else { 50.0 })
            .collect();
        let config = SimConfig {
            pod: PodModel::default(),
            warmup_s: 90,
            warmup_rps: None,
            initial_replicas: 1,
        };
        let mut k = kpa(0, 10);
        let out = simulate(&trace, 300.0, &config, &mut k);
        let zero_at = out.series.iter().find(|s| s.desired == 0).map(|s| s.t_s);
        assert!(
            zero_at.is_some_and(|t| (30 + 60 + 30..=30 + 60 + 30 + 4).contains(&t)),
            "{zero_at:?}"
        );
        assert_eq!(out.metrics.first_scale_up_s, Some(0.1));
    }

    proptest! {
        /// While panicking, desired never goes down; and it always stays within the bounds.
        #[test]
        fn never_scales_down_while_panicking(
            inputs in proptest::collection::vec((0u32..20, 0.0f64..3_000.0, 0.0f64..3_000.0), 1..100),
        ) {
            let mut k = kpa(1, 30);
            let mut last: Option<Decision> = None;
            for (i, (ready, stable, panic)) in inputs.into_iter().enumerate() {
                let d = k.decide(i as i64 * 2_000, ready, stable, panic);
                prop_assert!((1..=30).contains(&d.desired));
                if let Some(prev) = last
                    && prev.panicking
                    && d.panicking
                {
                    prop_assert!(d.desired >= prev.desired, "{prev:?} -> {d:?}");
                }
                last = Some(d);
            }
        }
    }
}

//! The classic chain Surge replaces: Istio sidecar counter -> Prometheus scrape -> KEDA
//! Prometheus trigger -> external metrics API -> HPA loop -> Deployment; and, as a second
//! configuration of the same chain, the literal setup of a common tutorial (a threshold on the raw
//! cumulative counter, without `rate()`).
//!
//! Every constant cites shared/reference/autoscalers.md ("The classic chain") unless noted.
//! Phases: Prometheus' scrape offset, the HPA loop's offset and KEDA's polling offset are drawn
//! from a seed (uniform on the 100 ms grid), so a run is deterministic and a set of seeds shows
//! the spread the real, unsynchronised loops produce.

use super::super::rng::SplitMix64;
use super::super::sim::{Autoscaler, Observation, STEP_MS};
use super::ScaleTarget;
use super::hpa::Hpa;
use super::prometheus::ScrapedCounter;

/// Prometheus scrape interval "in the typical setup": 15 s.
pub const SCRAPE_INTERVAL_MS: i64 = 15_000;
/// The HPA controller's cluster-wide loop: 15 s.
pub const HPA_LOOP_MS: i64 = 15_000;
/// KEDA's default pollingInterval: 30 s (decides only 0 <-> 1).
pub const KEDA_POLLING_MS: i64 = 30_000;
/// KEDA's default cooldownPeriod: 300 s (applies only to scaling to zero).
pub const KEDA_COOLDOWN_MS: i64 = 300_000;
/// The query's range: `rate(...[1m])`.
pub const RATE_RANGE_MS: i64 = 60_000;
/// The tutorial's pollingInterval: 1 s.
pub const TUTORIAL_POLLING_MS: i64 = 1_000;
/// The tutorial's cooldownPeriod: 30 s.
pub const TUTORIAL_COOLDOWN_MS: i64 = 30_000;
/// The tutorial's minReplicaCount.
pub const TUTORIAL_MIN_REPLICAS: u32 = 1;
/// The tutorial's maxReplicaCount.
pub const TUTORIAL_MAX_REPLICAS: u32 = 10;

/// What the ScaledObject's Prometheus query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `sum(rate(istio_requests_total{...}[1m]))`: requests per second.
    Rate1m,
    /// `sum(istio_requests_total{...})`: the cumulative counter itself (the tutorial's trap).
    RawCounter,
}

/// The chain's loop settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainSettings {
    /// The query.
    pub query: Query,
    /// KEDA's pollingInterval.
    pub polling_ms: i64,
    /// KEDA's cooldownPeriod.
    pub cooldown_ms: i64,
    /// Bounds and the per-pod threshold (the trigger's `threshold`, an `AverageValue`).
    pub target: ScaleTarget,
}

/// The name of the classic chain's row (the corrected query).
pub const NAME: &str = "classic (Prometheus+KEDA+HPA)";

/// Prometheus + KEDA + HPA, stepped by the simulation.
#[derive(Debug, Clone)]
pub struct ClassicChain {
    name: String,
    settings: ChainSettings,
    counter: ScrapedCounter,
    hpa: Hpa,
    hpa_phase_ms: i64,
    keda_phase_ms: i64,
    last_active_ms: Option<i64>,
}

impl ClassicChain {
    /// The chain as platform teams run it: `rate(...[1m])`, KEDA and HPA defaults.
    pub fn new(target: ScaleTarget, seed: u64) -> Self {
        Self::with_settings(
            NAME,
            ChainSettings {
                query: Query::Rate1m,
                polling_ms: KEDA_POLLING_MS,
                cooldown_ms: KEDA_COOLDOWN_MS,
                target,
            },
            seed,
        )
    }

    /// The tutorial's ScaledObject: `sum(istio_requests_total)` without `rate()`,
    /// pollingInterval 1 s, cooldown 30 s, min 1, max 10; `threshold` as the per-pod target.
    pub fn tutorial(threshold: f64, seed: u64) -> Self {
        Self::with_settings(
            "tutorial (counter, no rate)",
            ChainSettings {
                query: Query::RawCounter,
                polling_ms: TUTORIAL_POLLING_MS,
                cooldown_ms: TUTORIAL_COOLDOWN_MS,
                target: ScaleTarget {
                    min_replicas: TUTORIAL_MIN_REPLICAS,
                    max_replicas: TUTORIAL_MAX_REPLICAS,
                    target_rps_per_pod: threshold,
                },
            },
            seed,
        )
    }

    /// A chain with explicit settings and the loops' phases drawn from `seed`.
    pub fn with_settings(name: &str, settings: ChainSettings, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let scrape_phase = rng.phase_ms(SCRAPE_INTERVAL_MS, STEP_MS);
        let hpa_phase_ms = rng.phase_ms(HPA_LOOP_MS, STEP_MS);
        let keda_phase_ms = rng.phase_ms(settings.polling_ms, STEP_MS);
        Self {
            name: name.to_string(),
            counter: ScrapedCounter::new(SCRAPE_INTERVAL_MS, scrape_phase),
            hpa: Hpa::new(
                settings.target.min_replicas,
                settings.target.max_replicas,
                settings.target.target_rps_per_pod,
            ),
            settings,
            hpa_phase_ms,
            keda_phase_ms,
            last_active_ms: None,
        }
    }

    /// The query's value at `now_ms`, as KEDA's metrics server gets it from Prometheus (live,
    /// on each request).
    fn query(&self, now_ms: i64) -> Option<f64> {
        match self.settings.query {
            Query::Rate1m => self.counter.rate(now_ms, RATE_RANGE_MS),
            Query::RawCounter => self.counter.instant(now_ms),
        }
    }
}

fn due(now_ms: i64, phase_ms: i64, period_ms: i64) -> bool {
    (now_ms - phase_ms).rem_euclid(period_ms.max(1)) == 0
}

impl Autoscaler for ClassicChain {
    fn name(&self) -> &str {
        &self.name
    }

    fn observe(&mut self, o: &Observation) -> u32 {
        let now = o.now_ms;
        // istio_requests_total is recorded when the response is logged.
        self.counter.observe(now, o.completed_total);
        let mut replicas = o.replicas;
        let last_active = *self.last_active_ms.get_or_insert(now);

        // KEDA polls the trigger and decides activation only: 0 -> 1 when the metric is above
        // the activation threshold (0 by default), N -> 0 after cooldownPeriod inactive.
        if due(now, self.keda_phase_ms, self.settings.polling_ms) {
            let active = self.query(now).is_some_and(|v| v > 0.0);
            if active {
                self.last_active_ms = Some(now);
            }
            if self.settings.target.min_replicas == 0 {
                if replicas == 0 && active {
                    replicas = 1;
                } else if replicas > 0 && !active && now - last_active >= self.settings.cooldown_ms
                {
                    replicas = 0;
                }
            }
        }
        // The HPA asks KEDA's metrics server every loop; it is disabled at zero replicas.
        if due(now, self.hpa_phase_ms, HPA_LOOP_MS) {
            replicas = self.hpa.reconcile(now, replicas, self.query(now));
        }
        replicas
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::sim::{PodModel, SimConfig, simulate};
    use super::*;
    use proptest::prelude::*;

    fn target(min: u32, max: u32) -> ScaleTarget {
        ScaleTarget {
            min_replicas: min,
            max_replicas: max,
            target_rps_per_pod: 70.0,
        }
    }

    fn step_trace(base: f64, factor: f64, at_s: usize, len_s: usize) -> Vec<f64> {
        (0..len_s)
            .map(|s| if s < at_s { base } else { base * factor })
            .collect()
    }

    fn config(initial: u32) -> SimConfig {
        SimConfig {
            pod: PodModel::default(),
            warmup_s: 120,
            warmup_rps: None,
            initial_replicas: initial,
        }
    }

    #[test]
    fn first_decision_after_a_10x_step_falls_within_0_to_30_s_for_any_phase() {
        let trace = step_trace(60.0, 10.0, 30, 150);
        // Pods big enough that nothing queues: the counter then follows the load at once, and
        // only the chain's own delays (scrape 0-15 s, HPA loop 0-15 s) are left.
        let roomy = SimConfig {
            pod: PodModel {
                capacity_rps: 1_000.0,
                ..PodModel::default()
            },
            ..config(1)
        };
        let mut seen = Vec::new();
        for seed in 0..60 {
            let mut chain = ClassicChain::new(target(1, 10), seed);
            let out = simulate(&trace, 30.0, &roomy, &mut chain);
            let first = out.metrics.first_scale_up_s;
            assert!(
                first.is_some_and(|s| (0.0..=30.0).contains(&s)),
                "seed {seed}: {first:?}"
            );
            seen.push(first.unwrap_or(0.0));
        }
        // The phases really vary the answer.
        let min = seen.iter().copied().fold(f64::INFINITY, f64::min);
        let max = seen.iter().copied().fold(0.0, f64::max);
        assert!(max - min > 10.0, "{min}..{max}");
    }

    #[test]
    fn reaches_full_replicas_only_after_the_1m_rate_catches_up() {
        // 10x step from 60 to 600 rps: 600 / 70 = 8.6 replicas; 8 is within the 0.1 tolerance.
        let trace = step_trace(60.0, 10.0, 30, 200);
        let mut chain = ClassicChain::new(target(1, 10), 1);
        let out = simulate(&trace, 30.0, &config(1), &mut chain);
        let full_at = out
            .series
            .iter()
            .find(|s| s.desired >= 8)
            .map(|s| s.t_s as f64 - 30.0);
        // rate(...[1m]) needs the whole minute to reflect the step, plus scrape and loop delays.
        assert!(
            full_at.is_some_and(|s| (45.0..=105.0).contains(&s)),
            "{full_at:?}"
        );
    }

    #[test]
    fn scales_down_only_after_the_300_s_stabilization() {
        let trace: Vec<f64> = (0..700)
            .map(|s| if s < 300 { 600.0 } else { 60.0 })
            .collect();
        let mut chain = ClassicChain::new(target(1, 10), 5);
        let out = simulate(&trace, 300.0, &config(9), &mut chain);
        let first_down = out
            .series
            .iter()
            .find(|s| s.t_s > 300 && s.desired < 9)
            .map(|s| s.t_s - 300);
        // 300 s after the last loop that still recommended 9: that loop is up to 15 s before the
        // drop (the next one may already see rate() 10 % lower) or up to 30 s after it.
        assert!(
            first_down.is_some_and(|s| (285..=345).contains(&s)),
            "{first_down:?}"
        );
        assert_eq!(out.series.last().map(|s| s.desired), Some(1));
    }

    #[test]
    fn keda_scales_to_zero_after_cooldown_and_back_on_its_polling_interval() {
        let trace: Vec<f64> = (0..900)
            .map(|s| if (60..600).contains(&s) { 0.0 } else { 100.0 })
            .collect();
        let mut chain = ClassicChain::new(target(0, 10), 2);
        let out = simulate(&trace, 600.0, &config(2), &mut chain);
        let zero_at = out.series.iter().find(|s| s.desired == 0).map(|s| s.t_s);
        // rate() falls to 0 within the 1 m range (+ a scrape), then 300 s cooldown, checked
        // every 30 s.
        assert!(
            zero_at.is_some_and(|t| (60 + 300..=60 + 60 + 15 + 300 + 30).contains(&t)),
            "{zero_at:?}"
        );
        // Back from zero: the next scrape shows traffic (<= 15 s), KEDA polls within 30 s.
        let first = out.metrics.first_scale_up_s;
        assert!(first.is_some_and(|s| s <= 45.0), "{first:?}");
    }

    #[test]
    fn tutorial_counter_setup_climbs_to_max_even_on_light_steady_load() {
        // 10 rps, well under one pod's threshold of 70, still reaches max 10 once the counter
        // passes 10 x 70 requests.
        let trace = vec![10.0; 300];
        let mut chain = ClassicChain::tutorial(70.0, 3);
        let out = simulate(
            &trace,
            0.0,
            &SimConfig {
                warmup_s: 0,
                ..config(1)
            },
            &mut chain,
        );
        assert_eq!(out.series.last().map(|s| s.desired), Some(10));
    }

    proptest! {
        /// Whatever the traffic (including none), the tutorial's setup never scales down: the
        /// counter it thresholds never decreases.
        #[test]
        fn tutorial_counter_setup_never_scales_down(
            load in proptest::collection::vec(0.0f64..500.0, 30..200),
            seed in 0u64..1_000,
        ) {
            // Traffic in bursts separated by silence, so a rate-based setup would scale down.
            let trace: Vec<f64> = load.iter().enumerate()
                .flat_map(|(i, &v)| {
                    let v = if i % 3 == 0 { v } else { 0.0 };
                    std::iter::repeat_n(v, 5)
                })
                .collect();
            let mut chain = ClassicChain::tutorial(70.0, seed);
            let out = simulate(&trace, 0.0, &SimConfig { warmup_s: 0, ..config(1) }, &mut chain);
            for pair in out.series.windows(2) {
                prop_assert!(pair[1].desired >= pair[0].desired, "{:?}", pair);
            }
            prop_assert_eq!(out.metrics.reversals, 0);
        }
    }
}

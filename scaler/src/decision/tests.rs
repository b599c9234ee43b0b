use super::*;
use crate::crd::{PolicyType, SelectPolicy};
use proptest::prelude::*;

fn spec_policy() -> Policy {
    let spec: SurgeScalerSpec = serde_json::from_value(serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "web"},
        "minReplicas": 1,
        "maxReplicas": 20,
        "metric": {"type": "rps", "target": 100}
    }))
    .unwrap();
    Policy::from_spec(&spec)
}

fn fresh(stable: f64, panic: f64) -> Observation {
    Observation {
        stable,
        panic,
        burst: None,
        freshness: Freshness::Fresh,
    }
}

fn input(current: i32, observation: Observation) -> Input {
    Input {
        current,
        ready: current,
        observation,
    }
}

/// A state that has seen a full stable window already (no restart guard left).
fn settled(policy: &Policy) -> DecisionState {
    let mut state = DecisionState::after_restart(0);
    let now = policy.stable_window_ms + 1;
    let _ = decide(policy, &mut state, &input(1, fresh(0.0, 0.0)), now);
    assert!(!state.panicking());
    state
}

/// Simulates a target: load (rps) per 100 ms tick, exact window averages, decisions each tick,
/// replicas applied at once. Returns (time ms, replicas, panic) after each tick.
struct Sim {
    policy: Policy,
    state: DecisionState,
    history: Vec<f64>,
    current: i32,
    now: Millis,
    surge_since: Option<Millis>,
}

const TICK: Millis = 100;

impl Sim {
    fn new(policy: Policy, current: i32, start: Millis) -> Self {
        Self {
            state: DecisionState::after_restart(start),
            policy,
            history: Vec::new(),
            current,
            now: start,
            surge_since: None,
        }
    }

    fn average(&self, window_ms: Millis) -> f64 {
        let n = (window_ms / TICK) as usize;
        let recent = &self.history[self.history.len().saturating_sub(n)..];
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        }
    }

    /// One tick with `load` rps; `surge` marks a report sent early because of a surge, whose
    /// burst estimate is the new load itself.
    fn step(&mut self, load: f64, surge: bool, freshness: Freshness) -> Decision {
        self.now += TICK;
        self.history.push(load);
        if surge && self.surge_since.is_none() {
            self.surge_since = Some(self.now);
        }
        let burst = match self.surge_since {
            Some(since) if self.now - since < 6_000 => Some(load),
            _ => {
                self.surge_since = None;
                None
            }
        };
        let observation = Observation {
            stable: self.average(self.policy.stable_window_ms),
            panic: self.average(6_000),
            burst,
            freshness,
        };
        let decision = decide(
            &self.policy,
            &mut self.state,
            &input(self.current, observation),
            self.now,
        );
        if decision.desired != self.current {
            self.state
                .record_scale(self.now, self.current, decision.desired);
            self.current = decision.desired;
        }
        decision
    }

    fn run(&mut self, seconds: u64, load: f64) -> Vec<i32> {
        (0..seconds * 10)
            .map(|_| self.step(load, false, Freshness::Fresh).desired)
            .collect()
    }
}

#[test]
fn a_load_of_exactly_n_targets_needs_n_replicas_despite_rounding() {
    // 300 requests over a second and a few milliseconds, plus the few milliseconds since the
    // report at the same rate: exactly 300 rps on paper, a rounding error above in floats.
    let stable = (300.0 + 300.0 * 0.007) / 1.007;
    assert!(stable > 300.0, "{stable}");
    assert_eq!(ceil_replicas(stable, 100.0), 3);
    assert_eq!(ceil_replicas(300.001, 100.0), 4);
    let policy = spec_policy();
    let mut state = settled(&policy);
    let decision = decide(
        &policy,
        &mut state,
        &input(1, fresh(stable, stable)),
        200_000,
    );
    assert_eq!(decision.desired, 3);
}

#[test]
fn a_10x_step_with_a_surge_report_is_acted_on_at_the_first_decision() {
    let mut sim = Sim::new(spec_policy(), 1, 0);
    sim.run(120, 80.0);
    assert_eq!(sim.current, 1);
    let decision = sim.step(800.0, true, Freshness::Fresh);
    assert_eq!(decision.desired, 8);
    assert_eq!(decision.reason, Reason::ScaleUp);
    assert!(decision.panic);
}

#[test]
fn a_10x_step_without_a_surge_report_panics_within_a_second() {
    let mut sim = Sim::new(spec_policy(), 1, 0);
    sim.run(120, 80.0);
    let mut reached = None;
    for tick in 1..=20 {
        let d = sim.step(800.0, false, Freshness::Fresh);
        if d.panic && reached.is_none() {
            reached = Some(tick);
        }
    }
    // From 80 to 800 rps on one pod of 100: the 6 s average reaches 200 (twice the ready
    // capacity) after 6 * (200 - 80) / (800 - 80) = 1 s.
    let tick = reached.unwrap();
    assert!(tick <= 10, "panic after {tick} ticks");
    assert!(sim.current >= 2);
}

#[test]
fn a_short_spike_scales_up_and_is_not_undone_while_panicking() {
    let mut sim = Sim::new(spec_policy(), 2, 0);
    sim.run(120, 150.0);
    assert_eq!(sim.current, 2);
    for _ in 0..30 {
        sim.step(1500.0, true, Freshness::Fresh);
    }
    let peak = sim.current;
    assert_eq!(peak, 15);
    // Back to the old load: panic holds for a stable window, then the scale-down
    // stabilization (300 s) holds the peak; afterwards it comes down.
    let after: Vec<i32> = sim.run(60, 150.0);
    assert!(after.iter().all(|&r| r == peak), "{after:?}");
    sim.run(300, 150.0);
    assert_eq!(sim.current, 2);
}

#[test]
fn a_ramp_scales_up_monotonically_and_tracks_the_load() {
    let mut sim = Sim::new(spec_policy(), 1, 0);
    sim.run(60, 50.0);
    let mut previous = sim.current;
    for second in 0..120u32 {
        let load = 50.0 + 10.0 * f64::from(second);
        for _ in 0..10 {
            let d = sim.step(load, false, Freshness::Fresh);
            assert!(d.desired >= previous, "down during a ramp at {second}s");
            previous = d.desired;
        }
    }
    // 1240 rps at the end; a ramp never doubles within 6 s, so no panic: the scale follows
    // the 60 s average (940 rps, 10 replicas), kept at 9 by the tolerance, as the HPA would.
    assert!(!sim.state.panicking());
    assert!((9..=10).contains(&sim.current), "{}", sim.current);
}

#[test]
fn noisy_flat_load_within_the_tolerance_never_changes_the_scale() {
    let mut sim = Sim::new(spec_policy(), 5, 0);
    let mut seed = 7u64;
    for _ in 0..6000 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let noise = ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.16;
        let d = sim.step(470.0 * (1.0 + noise), false, Freshness::Fresh);
        assert_eq!(d.desired, 5);
    }
}

#[test]
fn a_drop_to_zero_scales_down_only_after_the_stabilization_window() {
    let mut sim = Sim::new(spec_policy(), 1, 0);
    sim.run(120, 800.0);
    assert_eq!(sim.current, 8);
    // The stable average falls over 60 s; each lower recommendation must then age through the
    // 300 s scale-down window, so nothing moves for 300 s and the floor is reached by 360 s.
    let replicas = sim.run(300, 0.0);
    assert!(replicas.iter().all(|&r| r == 8), "{replicas:?}");
    sim.run(61, 0.0);
    assert_eq!(sim.current, 1);
}

#[test]
fn stale_data_holds_the_current_scale_whatever_the_values_say() {
    let policy = spec_policy();
    let mut state = settled(&policy);
    let observation = Observation {
        stable: 0.0,
        panic: 0.0,
        burst: None,
        freshness: Freshness::Stale,
    };
    for t in 0..1000u64 {
        let d = decide(
            &policy,
            &mut state,
            &input(7, observation),
            100_000 + t * 1000,
        );
        assert_eq!((d.desired, d.reason), (7, Reason::MetricsStale));
    }
}

#[test]
fn stale_data_still_brings_a_target_inside_its_bounds() {
    let policy = spec_policy();
    let mut state = settled(&policy);
    let obs = Observation {
        stable: 0.0,
        panic: 0.0,
        burst: None,
        freshness: Freshness::Stale,
    };
    let d = decide(&policy, &mut state, &input(50, obs), 100_000);
    assert_eq!((d.desired, d.limit), (20, Some(Limit::TooManyReplicas)));
}

#[test]
fn incomplete_data_never_scales_down() {
    let policy = spec_policy();
    let mut state = settled(&policy);
    let mut obs = fresh(100.0, 100.0);
    obs.freshness = Freshness::Incomplete;
    for t in 0..600u64 {
        let d = decide(&policy, &mut state, &input(6, obs), 100_000 + t * 1000);
        assert_eq!(d.desired, 6);
    }
    // ...but it still scales up.
    obs.stable = 900.0;
    obs.panic = 900.0;
    let d = decide(&policy, &mut state, &input(6, obs), 800_000);
    assert_eq!(d.desired, 9);
}

#[test]
fn after_a_restart_the_scale_is_held_for_a_stable_window_then_stabilized() {
    let policy = spec_policy();
    let mut sim = Sim::new(policy, 8, 1_000_000);
    // Fresh but near-zero data right after the restart: no scale-down for 60 s.
    let held = sim.run(59, 10.0);
    assert!(held.iter().all(|&r| r == 8), "{held:?}");
    // Then the 300 s scale-down stabilization still remembers the held 8.
    sim.run(250, 10.0);
    assert_eq!(sim.current, 8);
    sim.run(120, 10.0);
    assert_eq!(sim.current, 1);
}

#[test]
fn a_restart_still_scales_up_at_once() {
    let mut sim = Sim::new(spec_policy(), 2, 0);
    let d = sim.step(1000.0, true, Freshness::Fresh);
    assert_eq!(d.desired, 10);
}

#[test]
fn within_the_tolerance_the_stable_recommendation_keeps_the_scale() {
    let policy = spec_policy();
    let table = [
        (4, 440.0, 4), // 1.10: inside
        (4, 460.0, 5), // 1.15: outside, up
        (4, 370.0, 4), // 0.925: inside
        (10, 850.0, 9),
    ];
    for (current, load, expected) in table {
        let mut state = settled(&policy);
        // No down-stabilization memory of a higher value: the settled state saw 1 replica.
        let mut p = policy.clone();
        p.scale_down.stabilization_ms = 0;
        let d = decide(&p, &mut state, &input(current, fresh(load, load)), 100_000);
        assert_eq!(d.desired, expected, "current {current}, load {load}");
    }
}

#[test]
fn a_burst_acts_on_its_own_only_beyond_the_burst_tolerance() {
    let policy = spec_policy();
    assert_eq!(policy.burst_tolerance, 0.2);
    // Stable average at the target of 4 replicas (400 rps, target 100); a clear burst estimate
    // (the window gives it only once it stands 4 sigmas out) of each size:
    let table = [
        (460.0, 4), // 1.15 of 4 replicas' worth: left to the stable window
        (480.0, 4), // 1.20: still inside
        (500.0, 5), // 1.25: acted on at once, for all of it
        (700.0, 7), // 1.75: the same, below the panic threshold
    ];
    for (burst, expected) in table {
        let mut state = settled(&policy);
        let mut observation = fresh(400.0, 400.0);
        observation.burst = Some(burst);
        let d = decide(&policy, &mut state, &input(4, observation), 100_000);
        assert_eq!(d.desired, expected, "burst {burst}");
        assert!(!d.panic, "burst {burst}");
    }
}

#[test]
fn a_freshly_started_scaler_scales_up_on_noise_no_more_than_a_settled_one() {
    // A scaler starts guarded (no scale-down before a stable window of data). Seen on the real
    // control plane when that guard was a panic: one replica at 33 of its 35 rps, and 1 -> 2 on
    // a burst estimate of 40, then (the burst fixed) on a 6 s panic average of 39.5.
    let mut policy = spec_policy();
    policy.target = 35.0;
    let cases = [
        (33.0, 34.0, Some(40.0), 1), // a burst inside the tolerance
        (33.0, 34.0, Some(45.0), 2), // past it
        (33.0, 39.5, None, 1),       // the panic average
        (40.0, 40.0, None, 2),       // the stable average
    ];
    for (stable, panic, burst, expected) in cases {
        let mut state = DecisionState::after_restart(0);
        let mut observation = fresh(stable, panic);
        observation.burst = burst;
        let d = decide(&policy, &mut state, &input(1, observation), 5_000);
        assert!(!d.panic, "{stable} {panic} {burst:?}");
        assert_eq!(d.desired, expected, "{stable} {panic} {burst:?}");
    }
}

#[test]
fn one_second_peaks_of_a_noisy_load_buy_no_replica() {
    // 20 % noise per second around 350 rps (4 replicas at target 100, usage 0.875), each peak
    // seen as a burst estimate: the scale stays, as the minute's average asks.
    let mut sim = Sim::new(spec_policy(), 4, 0);
    sim.run(120, 350.0);
    let mut seed = 11u64;
    for second in 0..600u32 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let noise = ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.4;
        let load = 350.0 * (1.0 + noise);
        for tick in 0..10 {
            let d = sim.step(load, tick == 0 && noise > 0.1, Freshness::Fresh);
            assert_eq!(d.desired, 4, "second {second}: load {load:.0}");
        }
    }
}

#[test]
fn a_burst_on_a_cold_target_always_counts() {
    let policy = spec_policy();
    let mut state = settled(&policy);
    let mut observation = fresh(0.0, 0.0);
    observation.burst = Some(30.0);
    let d = decide(&policy, &mut state, &input(0, observation), 100_000);
    assert_eq!(d.desired, 1);
}

#[test]
fn hpa_default_scale_up_policies_limit_growth_per_period() {
    let mut policy = spec_policy();
    policy.scale_up.policies = vec![
        RatePolicy {
            kind: PolicyType::Percent,
            value: 100,
            period_ms: 15_000,
        },
        RatePolicy {
            kind: PolicyType::Pods,
            value: 4,
            period_ms: 15_000,
        },
    ];
    let mut sim = Sim::new(policy, 1, 0);
    sim.run(61, 50.0);
    let d = sim.step(2000.0, true, Freshness::Fresh);
    assert_eq!((d.desired, d.limit), (5, Some(Limit::ScaleUpLimit)));
    // Within the same 15 s period nothing more is allowed.
    sim.run(10, 2000.0);
    assert_eq!(sim.current, 5);
    // Next period: max(5 * 2, 5 + 4) = 10.
    sim.run(6, 2000.0);
    assert_eq!(sim.current, 10);
}

#[test]
fn select_policy_min_takes_the_smallest_change() {
    let mut policy = spec_policy();
    policy.scale_up.select = SelectPolicy::Min;
    policy.scale_up.policies = vec![
        RatePolicy {
            kind: PolicyType::Percent,
            value: 100,
            period_ms: 15_000,
        },
        RatePolicy {
            kind: PolicyType::Pods,
            value: 4,
            period_ms: 15_000,
        },
    ];
    let mut state = settled(&policy);
    let d = decide(
        &policy,
        &mut state,
        &input(4, fresh(2000.0, 2000.0)),
        100_000,
    );
    assert_eq!(d.desired, 8);
}

#[test]
fn a_disabled_direction_never_scales_that_way() {
    let mut policy = spec_policy();
    policy.scale_down.select = SelectPolicy::Disabled;
    policy.scale_down.stabilization_ms = 0;
    let mut state = settled(&policy);
    let d = decide(&policy, &mut state, &input(9, fresh(0.0, 0.0)), 100_000);
    assert_eq!((d.desired, d.limit), (9, Some(Limit::ScaleDownLimit)));
}

#[test]
fn scale_down_percent_policy_halves_per_period() {
    let mut policy = spec_policy();
    policy.scale_down.stabilization_ms = 0;
    policy.scale_down.policies = vec![RatePolicy {
        kind: PolicyType::Percent,
        value: 50,
        period_ms: 15_000,
    }];
    let mut state = settled(&policy);
    let d = decide(&policy, &mut state, &input(16, fresh(0.0, 0.0)), 100_000);
    assert_eq!(d.desired, 8);
    state.record_scale(100_000, 16, 8);
    let d = decide(&policy, &mut state, &input(8, fresh(0.0, 0.0)), 105_000);
    assert_eq!(d.desired, 8);
    let d = decide(&policy, &mut state, &input(8, fresh(0.0, 0.0)), 115_000);
    assert_eq!(d.desired, 4);
}

#[test]
fn bounds_clamp_and_say_so() {
    let policy = spec_policy();
    let mut state = settled(&policy);
    let d = decide(&policy, &mut state, &input(10, fresh(1e9, 1e9)), 100_000);
    assert_eq!((d.desired, d.limit), (20, Some(Limit::TooManyReplicas)));
}

#[test]
fn scale_from_zero_happens_on_the_first_request() {
    let mut policy = spec_policy();
    policy.min = 0;
    let mut state = settled(&policy);
    let d = decide(&policy, &mut state, &input(0, fresh(0.5, 5.0)), 100_000);
    assert_eq!(d.desired, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_decision_never_leaves_min_max(
        min in 0i32..5, span in 0i32..30, current in 0i32..100,
        stable in 0.0f64..1e6, panic in 0.0f64..1e6, burst in proptest::option::of(0.0f64..1e6),
        stale in any::<bool>(), steps in 1usize..20,
    ) {
        let mut policy = spec_policy();
        policy.min = min;
        policy.max = min + span.max(if min == 0 { 1 } else { 0 });
        let mut state = DecisionState::after_restart(0);
        let mut current = current;
        for i in 0..steps {
            let obs = Observation {
                stable: stable / (i as f64 + 1.0), panic, burst,
                freshness: if stale { Freshness::Stale } else { Freshness::Fresh },
            };
            let d = decide(&policy, &mut state, &input(current, obs), i as u64 * 500);
            prop_assert!(d.desired >= policy.min && d.desired <= policy.max, "{d:?}");
            state.record_scale(i as u64 * 500, current, d.desired);
            current = d.desired;
        }
    }

    #[test]
    fn panic_never_scales_down(
        loads in proptest::collection::vec(0.0f64..5000.0, 1..200),
        start in 1i32..20,
    ) {
        let mut sim = Sim::new(spec_policy(), start, 0);
        for load in loads {
            let before = sim.current;
            let was_panicking = sim.state.panicking();
            let d = sim.step(load, load > 1000.0, Freshness::Fresh);
            if was_panicking || d.panic {
                prop_assert!(d.desired >= before, "down from {before} to {} in panic", d.desired);
            }
        }
    }

    #[test]
    fn flat_noisy_load_never_moves_a_settled_scale(
        level in 0.2f64..19.5, noise in 0.0f64..0.2, seed in any::<u64>(),
    ) {
        // Load at `level` replicas' worth with +-noise/2 around it (within the 10 % tolerance),
        // starting at the count the level asks for: the replica count never changes.
        let start = level.ceil() as i32;
        let mut sim = Sim::new(spec_policy(), start, 0);
        let mut rng = seed;
        for _ in 0..4000 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = (rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let d = sim.step(level * 100.0 * (1.0 + noise * r), false, Freshness::Fresh);
            prop_assert_eq!(d.desired, start, "level {}, noise {}", level, noise);
        }
    }

    #[test]
    fn flat_noisy_load_never_flaps_from_any_start(
        level in 0.2f64..19.0, noise in 0.0f64..0.3, seed in any::<u64>(),
        start in 1i32..20,
    ) {
        // From any start the count may overshoot once while the first averages are short, and
        // correct once; it never oscillates (at most one reversal of direction).
        let mut sim = Sim::new(spec_policy(), start, 0);
        let mut rng = seed;
        let mut directions = Vec::new();
        for _ in 0..4000 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = (rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let before = sim.current;
            let d = sim.step(level * 100.0 * (1.0 + noise * r), false, Freshness::Fresh);
            if d.desired != before {
                let up = d.desired > before;
                if directions.last() != Some(&up) {
                    directions.push(up);
                }
            }
        }
        prop_assert!(directions.len() <= 2, "flapped: {directions:?}");
    }
}

#[test]
fn a_calm_decision_in_the_same_millisecond_does_not_hold_a_surge_back() {
    // The default scale-up stabilization is 0 s: no earlier recommendation bounds a scale-up,
    // not even one made in the same millisecond (a calm report's decision that ran late).
    let policy = spec_policy();
    assert_eq!(policy.scale_up.stabilization_ms, 0);
    let mut state = settled(&policy);
    let now = policy.stable_window_ms + 5_000;
    let calm = decide(&policy, &mut state, &input(1, fresh(41.0, 41.0)), now);
    assert_eq!(calm.desired, 1);
    let surge = decide(&policy, &mut state, &input(1, fresh(860.0, 860.0)), now);
    assert_eq!(surge.desired, 9, "{surge:?}");
}

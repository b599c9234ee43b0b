//! The scale-to-zero rules as tables: the idle clock, the held demand, the temperature, the
//! warm delay, and a whole cycle warm -> idle -> 0 -> held -> activating -> warm.

use super::*;
use crate::crd::{PolicyType, SelectPolicy};
use crate::decision::{Freshness, Observation, RatePolicy, Rules};

fn fresh_zero(quiet_since: Millis) -> Evidence {
    Evidence {
        freshness: Freshness::Fresh,
        sources: 3,
        quiet_since: Some(quiet_since),
        held: 0,
        holders: 0,
    }
}

#[test]
fn the_idle_clock_advances_only_while_fresh_reports_say_zero() {
    let mut clock = IdleClock::restarted();
    // Quiet since 0, first seen at 1 s: the clock starts when it first sees it, not before.
    assert_eq!(clock.observe(1_000, &fresh_zero(0)), Some(0));
    assert_eq!(clock.observe(5_000, &fresh_zero(0)), Some(4_000));
    assert_eq!(clock.observe(11_000, &fresh_zero(0)), Some(10_000));
}

#[test]
fn the_idle_clock_restarts_on_a_request_a_late_or_gone_source_or_a_hold() {
    type Change = fn(&mut Evidence);
    let cases: [(&str, Change); 6] = [
        ("a request", |e| e.quiet_since = None),
        ("a late source", |e| e.freshness = Freshness::Incomplete),
        ("every source gone", |e| e.freshness = Freshness::Stale),
        ("no source at all", |e| e.sources = 0),
        ("a held request", |e| e.held = 1),
        ("a request between two looks", |e| {
            e.quiet_since = Some(7_500)
        }),
    ];
    for (what, change) in cases {
        let mut clock = IdleClock::restarted();
        clock.observe(1_000, &fresh_zero(0));
        assert_eq!(clock.observe(6_000, &fresh_zero(0)), Some(5_000), "{what}");
        let mut evidence = fresh_zero(0);
        change(&mut evidence);
        let at_8 = clock.observe(8_000, &evidence);
        // Quiet again afterwards: counted from then, never from before the interruption.
        let at_10 = clock.observe(10_000, &fresh_zero(8_000));
        match what {
            "a request between two looks" => {
                assert_eq!(at_8, Some(500), "{what}");
                assert_eq!(at_10, Some(2_000), "{what}: from the later quiet start");
            }
            _ => {
                assert_eq!(at_8, None, "{what}");
                assert_eq!(at_10, Some(0), "{what}: restarted at 10 s");
            }
        }
    }
}

#[test]
fn a_restarted_clock_starts_from_zero_however_long_the_reports_were_quiet() {
    // The reports say quiet since 0; a scaler started at 100 s has seen none of that.
    let mut clock = IdleClock::restarted();
    assert_eq!(clock.observe(100_000, &fresh_zero(0)), Some(0));
    assert_eq!(clock.observe(104_000, &fresh_zero(0)), Some(4_000));
}

#[test]
fn the_held_demand_asks_for_ceil_held_over_target_within_1_and_max() {
    let cases = [
        // (held, target, max, replicas, limited)
        (0, 1.0, 10, 0, false),
        (1, 100.0, 10, 1, false),
        (3, 1.0, 10, 3, false),
        (3, 2.0, 10, 2, false),
        (250, 100.0, 10, 3, false),
        (100, 10.0, 10, 10, false),
        (101, 10.0, 10, 10, true),
        (5, 1.0, 0, 1, true),
        (u64::MAX, 0.001, i32::MAX, i32::MAX, true),
    ];
    for (held, target, max, replicas, limited) in cases {
        let (got, limit) = held_replicas(held, target, max);
        assert_eq!(got, replicas, "held {held}, target {target}, max {max}");
        assert_eq!(
            limit == Some(Limit::TooManyReplicas),
            limited,
            "held {held}, target {target}, max {max}"
        );
    }
}

#[test]
fn a_target_is_cold_at_zero_replicas_and_while_it_has_no_ready_endpoint() {
    let cases = [
        (Some(0), None, Temperature::Cold),
        (Some(0), Some(0), Temperature::Cold),
        (Some(0), Some(2), Temperature::Cold),
        (Some(3), Some(0), Temperature::Activating),
        (None, Some(0), Temperature::Activating),
        (Some(3), Some(1), Temperature::Warm),
        // Unknown endpoints never make a target cold.
        (Some(3), None, Temperature::Warm),
        (None, None, Temperature::Warm),
    ];
    for (replicas, ready, expected) in cases {
        assert_eq!(
            temperature(replicas, ready),
            expected,
            "{replicas:?} {ready:?}"
        );
        assert_eq!(expected.listed(), expected != Temperature::Warm);
    }
}

#[test]
fn a_first_ready_endpoint_counts_only_after_the_warm_delay_and_a_lost_one_at_once() {
    let delay = 500;
    let mut readiness = Readiness::default();
    assert_eq!(readiness.seen(0, delay), None, "not listed yet");
    readiness.observe(0, 1_000);
    assert_eq!(readiness.seen(1_000, delay), Some(0));
    assert_eq!(readiness.settles_at(1_000, delay), None);
    readiness.observe(1, 2_000);
    assert_eq!(readiness.seen(2_000, delay), Some(0));
    assert_eq!(readiness.seen(2_499, delay), Some(0));
    assert_eq!(readiness.settles_at(2_100, delay), Some(2_500));
    assert_eq!(readiness.seen(2_500, delay), Some(1));
    assert_eq!(readiness.settles_at(2_500, delay), None);
    // A second endpoint while warm: at once (the first already carries the requests).
    readiness.observe(2, 3_000);
    assert_eq!(readiness.seen(3_000, delay), Some(2));
    // All gone: at once.
    readiness.observe(0, 4_000);
    assert_eq!(readiness.seen(4_000, delay), Some(0));
    // Back: the delay again.
    readiness.observe(1, 5_000);
    assert_eq!(readiness.seen(5_100, delay), Some(0));
    assert_eq!(readiness.seen(5_500, delay), Some(1));
    // No delay: at once.
    assert_eq!(readiness.seen(5_000, 0), Some(1));
}

fn policy() -> Policy {
    Policy {
        min: 1,
        max: 10,
        target: 1.0,
        tolerance: 0.1,
        burst_tolerance: 0.2,
        panic_threshold: 2.0,
        stable_window_ms: 60_000,
        scale_up: Rules {
            stabilization_ms: 0,
            select: SelectPolicy::Max,
            policies: Vec::new(),
        },
        scale_down: Rules {
            stabilization_ms: 300_000,
            select: SelectPolicy::Max,
            policies: vec![RatePolicy {
                kind: PolicyType::Percent,
                value: 100,
                period_ms: 15_000,
            }],
        },
    }
}

const IDLE: ZeroPolicy = ZeroPolicy { idle_ms: 10_000 };

fn input(current: i32, freshness: Freshness, evidence: Evidence, can_go_cold: bool) -> ZeroInput {
    ZeroInput {
        input: Input {
            current,
            ready: current,
            observation: Observation {
                stable: 0.0,
                panic: 0.0,
                burst: None,
                freshness,
            },
        },
        evidence: Evidence {
            freshness,
            ..evidence
        },
        can_go_cold,
    }
}

fn held(requests: u64, holders: usize) -> Evidence {
    Evidence {
        freshness: Freshness::Stale,
        sources: 0,
        quiet_since: None,
        held: requests,
        holders,
    }
}

fn none_reporting() -> Evidence {
    held(0, 0)
}

#[test]
fn a_warm_target_goes_to_zero_only_after_the_idle_period_of_fresh_zero_reports() {
    let policy = policy();
    let mut state = DecisionState::after_restart(0);
    let mut clock = IdleClock::restarted();
    let mut last = None;
    for second in 0..=10u64 {
        let now = second * 1_000;
        let zero = decide(
            &policy,
            &IDLE,
            &mut state,
            &mut clock,
            &input(1, Freshness::Fresh, fresh_zero(0), true),
            now,
        );
        last = Some((second, zero));
        if second < 10 {
            assert_eq!(zero.decision.desired, 1, "at {second} s");
            assert_eq!(zero.idle_ms, Some(now), "at {second} s");
        }
    }
    let (_, zero) = last.unwrap();
    assert_eq!(zero.decision.desired, 0);
    assert_eq!(zero.decision.reason, Reason::ScaleToZero);
    assert_eq!(zero.idle_ms, Some(10_000));
}

#[test]
fn missing_or_stale_reports_never_take_a_target_to_zero() {
    let policy = policy();
    for freshness in [Freshness::Stale, Freshness::Incomplete] {
        let mut state = DecisionState::after_restart(0);
        let mut clock = IdleClock::restarted();
        for second in 0..=600u64 {
            let zero = decide(
                &policy,
                &IDLE,
                &mut state,
                &mut clock,
                &input(2, freshness, fresh_zero(0), true),
                second * 1_000,
            );
            assert_eq!(zero.decision.desired, 2, "{freshness:?} at {second} s");
            assert_eq!(zero.idle_ms, None);
        }
    }
}

#[test]
fn idle_but_unnamed_or_unwatched_the_target_stays_up() {
    let policy = policy();
    let mut state = DecisionState::after_restart(0);
    let mut clock = IdleClock::restarted();
    for second in 0..=30u64 {
        let zero = decide(
            &policy,
            &IDLE,
            &mut state,
            &mut clock,
            &input(1, Freshness::Fresh, fresh_zero(0), false),
            second * 1_000,
        );
        assert_eq!(zero.decision.desired, 1, "at {second} s");
    }
}

#[test]
fn at_zero_the_target_stays_there_without_held_or_arriving_requests() {
    let policy = policy();
    let mut state = DecisionState::after_restart(0);
    let mut clock = IdleClock::restarted();
    // Quiet sources (a gateway still reporting), and none at all: 0 stays 0, no MetricsStale.
    for evidence in [fresh_zero(0), none_reporting()] {
        let zero = decide(
            &policy,
            &IDLE,
            &mut state,
            &mut clock,
            &input(0, evidence.freshness, evidence, true),
            60_000,
        );
        assert_eq!(zero.decision.desired, 0);
        assert_eq!(zero.decision.reason, Reason::Steady);
    }
}

#[test]
fn held_requests_scale_a_target_at_zero_to_their_demand_at_once() {
    let policy = policy();
    let cases = [
        // (held, holders, replicas): target 1 per replica, max 10.
        (1, 1, 1),
        (3, 1, 3),
        (5, 2, 5),
        (400, 4, 10),
    ];
    for (requests, holders, replicas) in cases {
        let mut state = DecisionState::after_restart(0);
        let mut clock = IdleClock::restarted();
        let zero = decide(
            &policy,
            &IDLE,
            &mut state,
            &mut clock,
            &input(0, Freshness::Stale, held(requests, holders), true),
            1_000,
        );
        assert_eq!(zero.decision.desired, replicas, "held {requests}");
        assert_eq!(zero.decision.reason, Reason::ScaleFromZero);
        assert_eq!(zero.held_replicas, replicas);
    }
}

#[test]
fn requests_arriving_at_zero_without_a_hold_bring_up_one_replica() {
    let policy = policy();
    let mut state = DecisionState::after_restart(0);
    let mut clock = IdleClock::restarted();
    let mut arriving = fresh_zero(0);
    arriving.quiet_since = None;
    let zero = decide(
        &policy,
        &IDLE,
        &mut state,
        &mut clock,
        &input(0, Freshness::Fresh, arriving, true),
        1_000,
    );
    assert_eq!(
        (zero.decision.desired, zero.decision.reason),
        (1, Reason::ScaleFromZero)
    );
}

#[test]
fn a_cycle_goes_warm_idle_zero_held_activating_warm_and_keeps_its_size() {
    let policy = policy();
    let mut state = DecisionState::after_restart(0);
    let mut clock = IdleClock::restarted();
    let step = |state: &mut DecisionState, clock: &mut IdleClock, zero_input: ZeroInput, now| {
        decide(&policy, &IDLE, state, clock, &zero_input, now)
    };

    // Warm at 1, idle: at 10 s of fresh zeros, to 0.
    let mut replicas = 1;
    let mut ready_endpoints = Some(1);
    assert_eq!(
        temperature(Some(replicas), ready_endpoints),
        Temperature::Warm
    );
    for second in 0..=10u64 {
        let zero = step(
            &mut state,
            &mut clock,
            input(replicas, Freshness::Fresh, fresh_zero(0), true),
            second * 1_000,
        );
        replicas = zero.decision.desired;
    }
    assert_eq!(replicas, 0);
    ready_endpoints = Some(0);
    assert_eq!(
        temperature(Some(replicas), ready_endpoints),
        Temperature::Cold
    );

    // At zero for a minute: nothing reports (no pod, so no sidecar), nothing moves.
    for second in 11..=70u64 {
        let zero = step(
            &mut state,
            &mut clock,
            input(0, Freshness::Stale, none_reporting(), true),
            second * 1_000,
        );
        assert_eq!(zero.decision.desired, 0, "at {second} s");
    }

    // A proxy holds 3 requests: 0 -> 3 at once; still cold until an endpoint is ready.
    let zero = step(
        &mut state,
        &mut clock,
        input(0, Freshness::Stale, held(3, 1), true),
        71_000,
    );
    assert_eq!(
        (zero.decision.desired, zero.decision.reason),
        (3, Reason::ScaleFromZero)
    );
    replicas = 3;
    assert_eq!(
        temperature(Some(replicas), ready_endpoints),
        Temperature::Activating
    );

    // Its next reports hold the same 3 (latest count per instance, not a sum over reports):
    // 3 stays 3, and the pods' missing reports do not lower it.
    for tenth in 1..=20u64 {
        let zero = step(
            &mut state,
            &mut clock,
            input(replicas, Freshness::Stale, held(3, 1), true),
            71_000 + tenth * 100,
        );
        assert_eq!(zero.decision.desired, 3, "at +{tenth}00 ms");
    }

    // Ready: warm, the held requests resume. The pods' sidecars report little load: the
    // scale-down stabilization keeps 3 (the activation counts as a recommendation).
    ready_endpoints = Some(3);
    assert_eq!(
        temperature(Some(replicas), ready_endpoints),
        Temperature::Warm
    );
    let mut busy = fresh_zero(0);
    busy.quiet_since = None;
    for second in 74..=120u64 {
        let zero = step(
            &mut state,
            &mut clock,
            input(replicas, Freshness::Fresh, busy, true),
            second * 1_000,
        );
        assert_eq!(zero.decision.desired, 3, "at {second} s");
    }
}

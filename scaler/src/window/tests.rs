use super::*;
use surge_wire::{Proxy, Role, RouteCounters, VERSION};

fn report(instance: &str, seq: u64, time_ms: u64, routes: &[(&str, u64, u64)]) -> Report {
    Report {
        version: VERSION,
        proxy: Proxy {
            namespace: "web".into(),
            workload: "api".into(),
            pod: format!("api-{instance}"),
            owner: String::new(),
            role: Role::Sidecar,
        },
        instance: instance.into(),
        seq,
        time_ms,
        surge: false,
        routes: routes
            .iter()
            .map(|&(route, requests, busy)| RouteCounters {
                route: route.into(),
                cluster: "inbound|8080||".into(),
                requests_total: requests,
                errors_total: 0,
                duration_us_total: busy,
                inflight: 0,
            })
            .collect(),
    }
}

fn deltas(applied: &Applied) -> Vec<u64> {
    match applied {
        Applied::Deltas { routes, .. } => routes.iter().map(|d| d.requests).collect(),
        other => panic!("expected deltas, got {other:?}"),
    }
}

#[test]
fn the_first_report_of_an_instance_is_a_baseline() {
    let mut counters = Counters::default();
    let (_, applied) = counters.apply(&report("a", 1, 1000, &[("r", 5000, 0)]), 10);
    assert_eq!(applied, Applied::Baseline);
}

#[test]
fn successive_reports_give_deltas_over_the_proxy_interval() {
    let mut counters = Counters::default();
    counters.apply(&report("a", 1, 1000, &[("r", 100, 0), ("s", 7, 0)]), 10);
    let (_, applied) = counters.apply(&report("a", 2, 2000, &[("r", 150, 0), ("s", 9, 0)]), 1030);
    assert_eq!(deltas(&applied), [50, 2]);
    let Applied::Deltas { interval_ms, .. } = applied else {
        unreachable!()
    };
    assert_eq!(interval_ms, 1000);
}

#[test]
fn duplicates_and_out_of_order_reports_change_nothing() {
    let mut counters = Counters::default();
    counters.apply(&report("a", 5, 1000, &[("r", 100, 0)]), 10);
    counters.apply(&report("a", 7, 3000, &[("r", 300, 0)]), 2010);
    for seq in [7, 6, 5, 1] {
        let (_, applied) = counters.apply(&report("a", seq, 2000, &[("r", 200, 0)]), 2020);
        assert_eq!(applied, Applied::Duplicate, "seq {seq}");
    }
    let (_, applied) = counters.apply(&report("a", 8, 4000, &[("r", 400, 0)]), 3010);
    assert_eq!(deltas(&applied), [100]);
}

#[test]
fn a_counter_that_goes_down_is_a_new_baseline_not_negative_traffic() {
    let mut counters = Counters::default();
    counters.apply(&report("a", 1, 1000, &[("r", 1000, 0)]), 10);
    let (_, applied) = counters.apply(&report("a", 2, 2000, &[("r", 3, 0)]), 1010);
    assert_eq!(applied, Applied::Baseline);
    let (_, applied) = counters.apply(&report("a", 3, 3000, &[("r", 13, 0)]), 2010);
    assert_eq!(deltas(&applied), [10]);
}

#[test]
fn a_route_seen_for_the_first_time_counts_from_zero() {
    let mut counters = Counters::default();
    counters.apply(&report("a", 1, 1000, &[("r", 10, 0)]), 10);
    let (_, applied) = counters.apply(&report("a", 2, 2000, &[("s", 4, 0), ("r", 20, 0)]), 1010);
    assert_eq!(deltas(&applied), [4, 10]);
}

#[test]
fn a_jumped_proxy_clock_falls_back_to_the_receiver_clock() {
    let mut counters = Counters::default();
    counters.apply(&report("a", 1, 1000, &[("r", 0, 0)]), 10);
    let (_, applied) = counters.apply(&report("a", 2, 900_000, &[("r", 100, 0)]), 1010);
    let Applied::Deltas { interval_ms, .. } = applied else {
        panic!("{applied:?}")
    };
    assert_eq!(interval_ms, 1000);
}

#[test]
fn instances_expire_after_their_ttl() {
    let mut counters = Counters::default();
    counters.apply(&report("a", 1, 1000, &[("r", 0, 0)]), 0);
    counters.apply(&report("b", 1, 1000, &[("r", 0, 0)]), 5000);
    counters.expire(6000, 3000);
    assert_eq!(counters.instances(), 1);
    assert_eq!(counters.routes(), 1);
}

fn config() -> WindowConfig {
    WindowConfig {
        stable_ms: 60_000,
        panic_ms: 6_000,
        stale_ms: 5_000,
    }
}

fn delta(requests: u64, busy_us: u64) -> Option<(RouteDelta, Millis)> {
    Some((RouteDelta { requests, busy_us }, 1000))
}

/// Three sources at 100 rps each, reporting once a second at staggered phases, for `seconds`.
fn steady(window: &mut TargetWindow, from: Millis, seconds: u64) -> Millis {
    let sources: Vec<Arc<str>> = ["a", "b", "c"].iter().map(|s| Arc::from(*s)).collect();
    let mut now = from;
    for second in 0..seconds {
        for (i, source) in sources.iter().enumerate() {
            now = from + second * 1000 + i as u64 * 300;
            window.record(now, source, delta(100, 2_000_000), 1, false);
        }
    }
    now
}

#[test]
fn averages_sum_the_sources_over_each_window() {
    let mut window = TargetWindow::new(config());
    let now = steady(&mut window, 1_000, 120);
    let obs = window.observe(now, MetricType::Rps);
    assert!((obs.stable - 300.0).abs() < 6.0, "{obs:?}");
    assert!((obs.panic - 300.0).abs() < 51.0, "{obs:?}");
    assert_eq!(obs.freshness, Freshness::Fresh);
    assert_eq!(obs.burst, None);
    // 2 s of busy time per second per source: concurrency 2 each.
    let obs = window.observe(now, MetricType::Concurrency);
    assert!((obs.stable - 6.0).abs() < 0.2, "{obs:?}");
}

#[test]
fn short_history_is_averaged_over_the_time_it_covers() {
    let mut window = TargetWindow::new(config());
    let now = steady(&mut window, 1_000, 10);
    let obs = window.observe(now, MetricType::Rps);
    // 10 s of data, not 60: the stable average is not diluted by time before the data.
    assert!(obs.stable > 250.0, "{obs:?}");
}

#[test]
fn a_silent_source_makes_the_data_incomplete_until_it_expires() {
    let mut window = TargetWindow::new(config());
    let now = steady(&mut window, 1_000, 60);
    let a: Arc<str> = Arc::from("a");
    let b: Arc<str> = Arc::from("b");
    // Only `a` and `b` keep reporting.
    let mut t = now;
    for _ in 0..3 {
        t += 1000;
        window.record(t, &a, delta(100, 0), 0, false);
        window.record(t, &b, delta(100, 0), 0, false);
    }
    assert_eq!(
        window.observe(t, MetricType::Rps).freshness,
        Freshness::Incomplete
    );
    for _ in 0..4 {
        t += 1000;
        window.record(t, &a, delta(100, 0), 0, false);
        window.record(t, &b, delta(100, 0), 0, false);
    }
    let obs = window.observe(t, MetricType::Rps);
    assert_eq!(window.sources(), 2);
    assert_eq!(obs.freshness, Freshness::Fresh);
}

#[test]
fn when_every_source_is_gone_the_data_is_stale_not_zero() {
    let mut window = TargetWindow::new(config());
    let now = steady(&mut window, 1_000, 30);
    let obs = window.observe(now + 5_001 + 600, MetricType::Rps);
    assert_eq!(obs.freshness, Freshness::Stale);
    assert_eq!(window.sources(), 0);
}

#[test]
fn a_window_without_traffic_data_yet_is_stale() {
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    window.record(1000, &a, None, 0, false);
    assert_eq!(
        window.observe(1000, MetricType::Rps).freshness,
        Freshness::Stale
    );
}

#[test]
fn a_surge_report_gives_a_burst_estimate_for_one_panic_window() {
    let mut window = TargetWindow::new(config());
    let now = steady(&mut window, 1_000, 60);
    let a: Arc<str> = Arc::from("a");
    // `a` jumps to 1000 rps completed, reported 100 ms after its last report, while its queue
    // grows from 1 to 40 in flight: 1390 rps arrive.
    let t = now + 100;
    let change = window.record(
        t,
        &a,
        Some((
            RouteDelta {
                requests: 100,
                busy_us: 0,
            },
            100,
        )),
        40,
        true,
    );
    assert_eq!(change, Change::Surge);
    let obs = window.observe(t, MetricType::Rps);
    assert_eq!(obs.burst, Some(1590.0));
    assert_eq!(window.observe(t + 6_001, MetricType::Rps).burst, None);
}

#[test]
fn buckets_older_than_the_ring_are_never_counted() {
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    window.record(1_000, &a, delta(1_000_000, 0), 0, false);
    window.record(200_000, &a, delta(10, 0), 0, false);
    let obs = window.observe(200_000, MetricType::Rps);
    assert!(obs.stable < 1.0, "{obs:?}");
}

#[test]
fn a_tracked_route_costs_little_memory() {
    // The per-(instance, route) record: two boxed strings and two counters.
    assert!(std::mem::size_of::<RouteLast>() <= 48);
}

#[test]
fn a_surge_on_a_saturated_pod_is_estimated_from_arrivals_in_the_filter_window() {
    // One pod at 30 rps reports every second; the load steps to 300 rps 190 ms before the
    // next (early) report. The pod completes at most ~100 rps, so its queue grows by ~38.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let mut t = 1_000;
    for _ in 0..10 {
        t += 1000;
        window.record(t, &a, delta(30, 0), 0, false);
    }
    t += 1090;
    let surge = Some((
        RouteDelta {
            requests: 46,
            busy_us: 0,
        },
        1090,
    ));
    window.record(t, &a, surge, 38, true);
    let burst = window.observe(t, MetricType::Rps).burst.unwrap();
    // Completions alone over the interval: 42 rps. Arrivals in the last 200 ms: ~285 rps.
    assert!((250.0..=320.0).contains(&burst), "{burst}");
}

#[test]
fn a_periodic_report_during_a_surge_is_not_reattributed() {
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let b: Arc<str> = Arc::from("b");
    window.record(1_000, &a, delta(100, 0), 0, false);
    window.record(1_000, &b, delta(100, 0), 0, false);
    // `a` surges; `b` sends its periodic report at the same rate as before.
    window.record(2_000, &a, delta(300, 0), 0, true);
    window.record(2_000, &b, delta(100, 0), 0, false);
    let burst = window.observe(2_000, MetricType::Rps).burst.unwrap();
    // a: (300 - 100 * 0.8) / 0.2 = 1100; b: 100.
    assert!((burst - 1200.0).abs() < 1.0, "{burst}");
}

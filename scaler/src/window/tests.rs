use super::*;
use surge_wire::{Proxy, Report, Role, RouteCounters, VERSION};

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
        window_ms: None,
        routes: routes
            .iter()
            .map(|&(route, requests, busy)| RouteCounters {
                route: route.into(),
                cluster: "inbound|8080||".into(),
                requests_total: requests,
                errors_total: 0,
                duration_us_total: busy,
                inflight: 0,
                window_requests: None,
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

/// Records a report without a recent window (a proxy that does not send one).
fn record(
    window: &mut TargetWindow,
    now: Millis,
    source: &Arc<str>,
    delta: Option<(RouteDelta, Millis)>,
    inflight: u64,
    surge: bool,
) -> Change {
    window.record(
        now,
        source,
        SourceReport {
            delta,
            inflight,
            window: None,
            surge,
        },
    )
}

/// Records a report carrying `window` requests in a 200 ms recent window.
fn record_window(
    window: &mut TargetWindow,
    now: Millis,
    source: &Arc<str>,
    delta: Option<(RouteDelta, Millis)>,
    recent: u64,
    surge: bool,
) -> Change {
    window.record(
        now,
        source,
        SourceReport {
            delta,
            inflight: 0,
            window: Some((recent, 200)),
            surge,
        },
    )
}

fn delta(requests: u64, busy_us: u64) -> Option<(RouteDelta, Millis)> {
    Some((RouteDelta { requests, busy_us }, 1000))
}

/// `requests` completed over `interval_ms`.
fn over(requests: u64, interval_ms: Millis) -> Option<(RouteDelta, Millis)> {
    Some((
        RouteDelta {
            requests,
            busy_us: 0,
        },
        interval_ms,
    ))
}

/// A proxy reporting every 250 ms with `inflight` in flight: a baseline at `t`, then one
/// report of each of `counts`. The time of the last.
fn every_250_ms(
    window: &mut TargetWindow,
    source: &Arc<str>,
    mut t: Millis,
    counts: impl IntoIterator<Item = u64>,
    inflight: u64,
) -> Millis {
    record(window, t, source, None, inflight, false);
    for requests in counts {
        t += 250;
        record(window, t, source, over(requests, 250), inflight, false);
    }
    t
}

/// Three sources at 100 rps each, reporting once a second at staggered phases, for `seconds`.
fn steady(window: &mut TargetWindow, from: Millis, seconds: u64) -> Millis {
    let sources: Vec<Arc<str>> = ["a", "b", "c"].iter().map(|s| Arc::from(*s)).collect();
    let mut now = from;
    for second in 0..seconds {
        for (i, source) in sources.iter().enumerate() {
            now = from + second * 1000 + i as u64 * 300;
            record(window, now, source, delta(100, 2_000_000), 1, false);
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
        record(&mut window, t, &a, delta(100, 0), 0, false);
        record(&mut window, t, &b, delta(100, 0), 0, false);
    }
    assert_eq!(
        window.observe(t, MetricType::Rps).freshness,
        Freshness::Incomplete
    );
    for _ in 0..4 {
        t += 1000;
        record(&mut window, t, &a, delta(100, 0), 0, false);
        record(&mut window, t, &b, delta(100, 0), 0, false);
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
    record(&mut window, 1000, &a, None, 0, false);
    assert_eq!(
        window.observe(1000, MetricType::Rps).freshness,
        Freshness::Stale
    );
}

#[test]
fn a_surge_on_one_source_raises_the_burst_estimate_at_once() {
    let mut window = TargetWindow::new(config());
    let now = steady(&mut window, 1_000, 60);
    let a: Arc<str> = Arc::from("a");
    // `a` jumps to 1000 rps completed, reported 100 ms after its last report, while its queue
    // grows from 1 to 40 in flight: 1390 rps arrive.
    let t = now + 100;
    let change = record(
        &mut window,
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
fn a_report_during_a_rise_wakes_the_decision_though_it_is_no_news() {
    // One pod at 30 rps, then a step: it completes its capacity (50 rps) in every interval
    // from the step on, so its completions do not move between reports. The evidence of the
    // rise grows, and with it whether the burst stands out: the report must wake the decision.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let t = calm(&mut window, &a, 30);
    // A steady report moves nothing.
    assert_eq!(
        record_window(&mut window, t + 1_000, &a, delta(30, 0), 6, false),
        Change::Minor
    );
    let t = t + 1_000;
    let early = record_window(&mut window, t + 200, &a, over(10, 200), 18, true);
    assert_eq!(early, Change::Surge);
    // The filter's next report of the same surge adds to the rise: no news, but evidence.
    let lasting = record_window(&mut window, t + 400, &a, over(10, 200), 18, true);
    assert_eq!(lasting, Change::Significant);
    let periodic = record_window(&mut window, t + 1_000, &a, over(30, 600), 18, false);
    assert_eq!(periodic, Change::Significant);
}

#[test]
fn buckets_older_than_the_ring_are_never_counted() {
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    record(&mut window, 1_000, &a, delta(1_000_000, 0), 0, false);
    record(&mut window, 200_000, &a, delta(10, 0), 0, false);
    let obs = window.observe(200_000, MetricType::Rps);
    assert!(obs.stable < 1.0, "{obs:?}");
}

#[test]
fn a_tracked_route_costs_little_memory() {
    // The per-(instance, route) record: two boxed strings and two counters.
    assert!(std::mem::size_of::<RouteLast>() <= 48);
}

#[test]
fn a_surge_on_a_saturated_pod_is_read_from_the_window_the_proxy_reports() {
    // One pod at 30 rps reports every second; the load steps to 300 rps 190 ms before the
    // next (early) report. The pod completes at most ~100 rps, so its queue grows by ~38; the
    // filter's 200 ms window saw 57 requests arrive.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let mut t = 1_000;
    for _ in 0..10 {
        t += 1000;
        record_window(&mut window, t, &a, delta(30, 0), 6, false);
    }
    t += 1090;
    let surge = Some((
        RouteDelta {
            requests: 46,
            busy_us: 0,
        },
        1090,
    ));
    record_window(&mut window, t, &a, surge, 57, true);
    assert_eq!(window.observe(t, MetricType::Rps).burst, Some(285.0));
}

#[test]
fn without_a_window_the_burst_is_the_arrivals_over_the_interval() {
    // The same surge from a proxy that sends no window: completions plus the queue's growth
    // over the 1.09 s since its last report, an average that lags the step (only the panic
    // window and the next reports catch up).
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let mut t = 1_000;
    for _ in 0..10 {
        t += 1000;
        record(&mut window, t, &a, delta(30, 0), 0, false);
    }
    t += 1090;
    let surge = Some((
        RouteDelta {
            requests: 46,
            busy_us: 0,
        },
        1090,
    ));
    record(&mut window, t, &a, surge, 38, true);
    let burst = window.observe(t, MetricType::Rps).burst.unwrap();
    assert!((burst - 84.0 / 1.09).abs() < 0.01, "{burst}");
}

#[test]
fn a_step_soon_after_a_source_is_first_seen_reads_at_its_own_rate() {
    // As at a scaler replica that just started (a rollout): a sidecar at 50 rps, one report
    // each 250 ms, seen for 2 s; then a step to 180 rps over a 600 ms interval. Read as a
    // rise begun at the first report (from "nothing" to 50 rps), the step would be averaged
    // with the calm before it: 86 rps, no scale-up (kube_ha's rolling restart saw this).
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let t = every_250_ms(&mut window, &a, 30_000, [12, 13, 13, 12, 13, 13, 13], 3) + 600;
    record(&mut window, t, &a, over(108, 600), 3, true);
    let burst = window.observe(t, MetricType::Rps).burst;
    assert_eq!(burst, Some(180.0));
}

#[test]
fn a_moderate_step_is_judged_over_a_second_of_short_intervals() {
    // A proxy reporting every 250 ms, at 280 rps for a minute, then at 380 rps. One interval
    // of the step (95 requests) stands only 2.6 standard deviations above the stable 280; a
    // second of them stands 5.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let mut t = every_250_ms(&mut window, &a, 1_000, [70; 240], 0);
    let mut bursts = Vec::new();
    for _ in 0..4 {
        t += 250;
        record(&mut window, t, &a, over(95, 250), 0, false);
        bursts.push(window.observe(t, MetricType::Rps).burst);
    }
    assert_eq!(bursts, [None, None, None, Some(380.0)]);
}

#[test]
fn a_burst_is_judged_against_the_load_before_its_evidence() {
    // A window that covers 3 s of 280 rps (a replica that just started), then a second at
    // 380 rps. Over the whole 4 s the stable average (305) holds a quarter of the step, and
    // 380 stands only 3.8 standard deviations above it; above the 280 before, 5.1.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let calm_then_step = [[70; 12].as_slice(), &[95; 4]].concat();
    let t = every_250_ms(&mut window, &a, 1_000, calm_then_step, 0);
    assert_eq!(window.observe(t, MetricType::Rps).burst, Some(380.0));
}

#[test]
fn a_periodic_report_during_a_surge_counts_at_its_own_rate() {
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let b: Arc<str> = Arc::from("b");
    record_window(&mut window, 1_000, &a, delta(100, 0), 20, false);
    record_window(&mut window, 1_000, &b, delta(100, 0), 20, false);
    // `a` surges to 1100 rps; `b` sends its periodic report at the same rate as before.
    record_window(&mut window, 2_000, &a, delta(300, 0), 220, true);
    record_window(&mut window, 2_000, &b, delta(100, 0), 20, false);
    assert_eq!(window.observe(2_000, MetricType::Rps).burst, Some(1200.0));
    // The next periodic report of `a`, still at 1100 rps, is not read as more.
    record_window(&mut window, 3_000, &a, delta(1100, 0), 220, true);
    assert_eq!(window.observe(3_000, MetricType::Rps).burst, Some(1200.0));
}

/// A pod at `rps` for a minute, one report a second, each with a 200 ms window at that rate.
fn calm(window: &mut TargetWindow, source: &Arc<str>, rps: u64) -> Millis {
    let mut t = 1_000;
    record_window(window, t, source, None, rps / 5, false);
    for _ in 0..60 {
        t += 1_000;
        record_window(window, t, source, delta(rps, 0), rps / 5, false);
    }
    t
}

#[test]
fn a_window_after_a_stall_is_read_over_the_span_since_the_rise() {
    // One sidecar during a 30 -> 300 rps step on the real control plane (2026-12-05, the third
    // run of compare.md's trace): its event loop stalled while new pods' proxies started on the
    // same cores, and the windows after the stall read 545 and 705 rps. Each row: time after
    // the calm, arrivals and interval since the last report, the window's arrivals (200 ms),
    // and the burst (rounded).
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let t0 = calm(&mut window, &a, 30);
    let rows: [(Millis, u64, Millis, u64, Option<f64>); 4] = [
        // The first window of the rise stands.
        (700, 40, 700, 30, Some(150.0)),
        // The stall: 40 arrivals in the 310 ms since.
        (1_010, 40, 310, 25, Some(129.0)),
        // The catch-up: 124 arrivals in 406 ms, not the window's 545 rps.
        (1_106, 84, 96, 109, Some(305.0)),
        (1_613, 150, 507, 141, Some(300.0)),
    ];
    for (at, arrivals, interval_ms, recent, burst) in rows {
        let delta = RouteDelta {
            requests: arrivals,
            busy_us: 0,
        };
        window.record(
            t0 + at,
            &a,
            SourceReport {
                delta: Some((delta, interval_ms)),
                inflight: 0,
                window: Some((recent, 200)),
                surge: true,
            },
        );
        let read = window.observe(t0 + at, MetricType::Rps).burst;
        assert_eq!(read.map(f64::round), burst, "at {at}");
    }
}

#[test]
fn the_panic_average_counts_arrivals_not_a_draining_queue() {
    // A pod saturated at 100 completions a second under 300 rps has queued 200 requests; then
    // new pods take their share and the queue drains. Over the next 6 s (the panic window)
    // 1800 requests arrive and 2000 complete: the backlog is served once, it is not load.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let mut t = calm(&mut window, &a, 30);
    // Each report: completions over the last second, in flight at the report.
    let reports: [(u64, u64); 7] = [
        (100, 200),
        (400, 100),
        (400, 0),
        (300, 0),
        (300, 0),
        (300, 0),
        (300, 0),
    ];
    for (completed, inflight) in reports {
        t += 1_000;
        let delta = RouteDelta {
            requests: completed,
            busy_us: 0,
        };
        window.record(
            t,
            &a,
            SourceReport {
                delta: Some((delta, 1_000)),
                inflight,
                window: Some((60, 200)),
                surge: false,
            },
        );
    }
    let obs = window.observe(t, MetricType::Rps);
    // Completions alone would read 333 rps here (10 replicas of 35, not 9).
    assert!((obs.panic - 300.0).abs() < 1.0, "{obs:?}");
}

#[test]
fn a_report_straddling_the_panic_window_counts_only_its_share_inside() {
    // `a` carried 300 rps alone; at t0 `b` (reporting zero until then) turns ready and each
    // carries 150. `a`'s report 150 ms after t0 covers the second before, at the old rate:
    // counted whole inside a window that starts at t0 + 50 ms, it read 312.7 rps (on the
    // real control plane's 10x step, 317-330 where 300 arrived: a tenth replica).
    let mut window = TargetWindow::new(config());
    let [a, b]: [Arc<str>; 2] = ["a", "b"].map(Arc::from);
    let t0 = 100_000;
    record(&mut window, t0 - 60_850, &a, None, 0, false);
    record(&mut window, t0 - 60_350, &b, None, 0, false);
    for k in (1..=60).rev() {
        record(
            &mut window,
            t0 + 150 - k * 1_000,
            &a,
            delta(300, 0),
            0,
            false,
        );
        record(&mut window, t0 + 650 - k * 1_000, &b, delta(0, 0), 0, false);
    }
    // 850 ms at 300 rps and 150 ms at 150; then a second at 150 each.
    record(&mut window, t0 + 150, &a, delta(278, 0), 0, false);
    record(&mut window, t0 + 650, &b, delta(98, 0), 0, false);
    for k in 1..=5 {
        record(
            &mut window,
            t0 + 150 + k * 1_000,
            &a,
            delta(150, 0),
            0,
            false,
        );
        record(
            &mut window,
            t0 + 650 + k * 1_000,
            &b,
            delta(150, 0),
            0,
            false,
        );
    }
    let obs = window.observe(t0 + 6_050, MetricType::Rps);
    assert!((obs.panic - 300.0).abs() < 6.0, "{obs:?}");
}

#[test]
fn a_pod_joining_the_traffic_is_not_counted_on_top_of_the_share_it_took_over() {
    // `a` carries a 300 rps surge alone; two new replicas turn ready together at 3 s and the
    // load balancer gives each a third. Until `a` reports again, its 300 still holds their
    // share.
    let mut window = TargetWindow::new(config());
    let [a, b, c, d]: [Arc<str>; 4] = ["a", "b", "c", "d"].map(Arc::from);
    // A calm minute first, so the surge stands out from the stable average.
    let t0 = calm(&mut window, &a, 30) - 1_000;
    record_window(&mut window, t0 + 1_500, &a, delta(60, 0), 60, true);
    record_window(&mut window, t0 + 2_000, &b, None, 0, false);
    record_window(&mut window, t0 + 2_000, &c, None, 0, false);
    record_window(&mut window, t0 + 2_500, &a, delta(300, 0), 60, false);
    assert_eq!(
        window.observe(t0 + 2_500, MetricType::Rps).burst,
        Some(300.0)
    );
    record_window(&mut window, t0 + 3_200, &b, delta(20, 0), 20, true);
    record_window(&mut window, t0 + 3_200, &c, delta(20, 0), 20, true);
    assert_eq!(
        window.observe(t0 + 3_200, MetricType::Rps).burst,
        Some(300.0)
    );
    // `a` reports its third. `b` and `c` still wait for each other: their first windows reach
    // back before they joined. The sum errs low meanwhile, never high.
    record_window(&mut window, t0 + 3_500, &a, delta(200, 0), 20, false);
    assert_eq!(
        window.observe(t0 + 3_500, MetricType::Rps).burst,
        Some(100.0)
    );
    record_window(&mut window, t0 + 3_600, &b, delta(40, 0), 20, false);
    record_window(&mut window, t0 + 3_600, &c, delta(40, 0), 20, false);
    assert_eq!(
        window.observe(t0 + 3_600, MetricType::Rps).burst,
        Some(300.0)
    );
    // A fourth replica joins: every rate measured before it holds a quarter of its share, so
    // it waits for all of them to be renewed.
    record_window(&mut window, t0 + 3_700, &d, None, 0, false);
    record_window(&mut window, t0 + 3_900, &d, delta(15, 0), 15, true);
    record_window(&mut window, t0 + 4_000, &a, delta(80, 0), 15, false);
    assert_eq!(
        window.observe(t0 + 4_000, MetricType::Rps).burst,
        Some(275.0)
    );
    record_window(&mut window, t0 + 4_200, &b, delta(80, 0), 15, false);
    record_window(&mut window, t0 + 4_200, &c, delta(80, 0), 15, false);
    assert_eq!(
        window.observe(t0 + 4_200, MetricType::Rps).burst,
        Some(225.0)
    );
    record_window(&mut window, t0 + 4_500, &a, delta(40, 0), 15, false);
    assert_eq!(
        window.observe(t0 + 4_500, MetricType::Rps).burst,
        Some(300.0)
    );
}

#[test]
fn a_pod_that_left_is_not_counted_in_the_burst() {
    // Four pods at 25 rps; three are removed (a scale-down) and the fourth takes their
    // traffic. Until the three expire their last rates linger, and would make a burst of
    // 175 rps, 5.7 sigmas above the 100 the target really gets.
    let mut window = TargetWindow::new(config());
    let [a, b, c, d]: [Arc<str>; 4] = ["a", "b", "c", "d"].map(Arc::from);
    let mut t = 1_000;
    for _ in 0..60 {
        t += 1_000;
        for source in [&a, &b, &c, &d] {
            record_window(&mut window, t, source, delta(25, 0), 5, false);
        }
    }
    t += 1_000;
    record_window(&mut window, t, &a, delta(100, 0), 20, false);
    t += 1_000;
    record_window(&mut window, t, &a, delta(100, 0), 20, false);
    assert_eq!(window.observe(t, MetricType::Rps).burst, None);
}

#[test]
fn a_noisy_window_at_a_calm_rate_is_not_a_burst() {
    // 60 rps: 12 requests expected in 200 ms; 30 seen (150 rps) happens by chance now and
    // then, and the filter reports early on it. 3.3 sigmas: not enough to act on.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let t = calm(&mut window, &a, 60) + 300;
    record_window(&mut window, t, &a, delta(18, 0), 30, true);
    assert_eq!(window.observe(t, MetricType::Rps).burst, None);
}

#[test]
fn a_tenfold_step_is_a_burst_from_its_first_window() {
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let t = calm(&mut window, &a, 60) + 300;
    // The window caught 100 ms of the step: 66 requests, 330 rps, 6.6 sigmas.
    record_window(&mut window, t, &a, delta(24, 0), 66, true);
    assert_eq!(window.observe(t, MetricType::Rps).burst, Some(330.0));
}

#[test]
fn a_doubling_is_a_burst_once_an_interval_holds_it() {
    // 60 -> 120 rps: one 200 ms window (24 requests) is 2.4 sigmas, a whole second at the new
    // rate (120 requests) is 5.4.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let t = calm(&mut window, &a, 60);
    record_window(&mut window, t + 200, &a, delta(14, 0), 24, true);
    assert_eq!(window.observe(t + 200, MetricType::Rps).burst, None);
    record_window(&mut window, t + 1_200, &a, delta(120, 0), 24, false);
    assert_eq!(
        window.observe(t + 1_200, MetricType::Rps).burst,
        Some(120.0)
    );
}

#[test]
fn a_moderate_step_is_a_burst_once_its_early_reports_add_up() {
    // 30 -> 90 rps, as the filter reports it: the first early report's window straddled the
    // step (11 requests in 200 ms, 55 rps), then one report every window while the surge
    // lasts (18 each, 90 rps: 2.8 sigmas alone). Each adds its interval to the newest
    // intervals back to a second: by the third follow-up, 90 arrivals in 1.7 s (the calm
    // second before the step included), 4.1 sigmas. Without the follow-ups nothing would
    // come before the periodic report, up to a second after the step.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    let t = calm(&mut window, &a, 30) + 100;
    record_window(&mut window, t, &a, over(6, 100), 11, true);
    assert_eq!(window.observe(t, MetricType::Rps).burst, None);
    let mut bursts = Vec::new();
    for k in 1..=3 {
        let now = t + 200 * k;
        record_window(&mut window, now, &a, over(18, 200), 18, true);
        bursts.push(window.observe(now, MetricType::Rps).burst);
    }
    assert_eq!(bursts[0], None);
    assert_eq!(bursts[2], Some(90.0));
}

#[test]
fn a_first_source_is_counted_at_once() {
    // Traffic from nothing (a target at its first replica): nobody else's rate holds it.
    let mut window = TargetWindow::new(config());
    let a: Arc<str> = Arc::from("a");
    record_window(&mut window, 1_000, &a, None, 0, false);
    record_window(&mut window, 2_000, &a, delta(10, 0), 40, true);
    assert_eq!(window.observe(2_000, MetricType::Rps).burst, Some(200.0));
}

fn limited(min_report_interval_ms: Millis, report_burst: u32) -> Counters {
    Counters::with_limits(SourceLimits {
        min_report_interval_ms,
        report_burst,
        ..SourceLimits::default()
    })
}

/// What `apply` did, as a short word, for tables.
fn kind(applied: &Applied) -> &'static str {
    match applied {
        Applied::Duplicate => "duplicate",
        Applied::Throttled { .. } => "throttled",
        Applied::OverCapacity(_) => "over capacity",
        Applied::ForeignInstance => "foreign",
        Applied::Baseline => "baseline",
        Applied::Deltas { .. } => "deltas",
    }
}

#[test]
fn an_instance_reporting_faster_than_its_limit_is_throttled() {
    // (case, interval, burst, arrival times of seq 1.., expected outcome of each)
    type Case<'a> = (&'a str, Millis, u32, &'a [Millis], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "reports at the interval all pass",
            50,
            1,
            &[0, 50, 100, 150],
            &["baseline", "deltas", "deltas", "deltas"],
        ),
        (
            "without burst a report inside the interval is throttled",
            50,
            1,
            &[0, 49, 50],
            &["baseline", "throttled", "deltas"],
        ),
        (
            "a burst passes back to back, the next one waits",
            50,
            3,
            &[0, 0, 0, 0, 50],
            &["baseline", "deltas", "deltas", "throttled", "deltas"],
        ),
        (
            "the filter's schedule (1 s periodic, early reports 250 ms apart) passes",
            50,
            5,
            &[0, 1000, 1010, 1260, 1510, 2000, 2001],
            &[
                "baseline", "deltas", "deltas", "deltas", "deltas", "deltas", "deltas",
            ],
        ),
        (
            "the filter's densest surge passes (early reports at each 100 ms check while the rate \
             climbs, then five a lasting surge adds, 100 ms apart at the shortest settings)",
            50,
            5,
            &[0, 1000, 1100, 1200, 1300, 1400, 1500, 1600, 1700, 2000],
            &[
                "baseline", "deltas", "deltas", "deltas", "deltas", "deltas", "deltas", "deltas",
                "deltas", "deltas",
            ],
        ),
        (
            "a flood of 1000 reports a second gets one in 50 ms through, after the burst",
            50,
            5,
            &[0, 1, 2, 3, 4, 5, 6, 50, 51, 100],
            &[
                "baseline",
                "deltas",
                "deltas",
                "deltas",
                "deltas",
                "throttled",
                "throttled",
                "deltas",
                "throttled",
                "deltas",
            ],
        ),
        (
            "an interval of zero switches the limit off",
            0,
            1,
            &[0, 0, 0],
            &["baseline", "deltas", "deltas"],
        ),
    ];
    for &(case, interval, burst, arrivals, expected) in cases {
        let mut counters = limited(interval, burst);
        let got: Vec<&str> = arrivals
            .iter()
            .enumerate()
            .map(|(i, &now)| {
                let seq = i as u64 + 1;
                kind(
                    &counters
                        .apply(&report("a", seq, now, &[("r", seq * 10, 0)]), now)
                        .1,
                )
            })
            .collect();
        assert_eq!(got, expected, "{case}");
    }
}

#[test]
fn a_throttled_report_loses_no_traffic_and_says_when_to_retry() {
    let mut counters = limited(50, 1);
    counters.apply(&report("a", 1, 1000, &[("r", 100, 0)]), 1000);
    let (_, applied) = counters.apply(&report("a", 2, 1020, &[("r", 130, 0)]), 1020);
    assert_eq!(applied, Applied::Throttled { retry_after_ms: 30 });
    // The next accepted report carries the throttled one's requests too.
    let (_, applied) = counters.apply(&report("a", 3, 1060, &[("r", 160, 0)]), 1060);
    assert_eq!(deltas(&applied), [60]);
}

#[test]
fn new_instances_and_routes_beyond_the_tracking_limits_are_refused() {
    let mut counters = Counters::with_limits(SourceLimits {
        max_instances: 2,
        max_instance_routes: 3,
        ..SourceLimits::default()
    });
    let one = [("r", 1, 0)];
    let two = [("r", 1, 0), ("s", 1, 0)];
    let three = [("r", 1, 0), ("s", 1, 0), ("t", 1, 0)];
    // (case, instance, seq, routes, expected)
    type Routes<'a> = &'a [(&'a str, u64, u64)];
    let steps: &[(&str, &str, u64, Routes, Applied)] = &[
        (
            "the first instance is tracked",
            "a",
            1,
            &one,
            Applied::Baseline,
        ),
        ("a second fits both limits", "b", 1, &two, Applied::Baseline),
        (
            "a third instance is over the instance limit",
            "c",
            1,
            &one,
            Applied::OverCapacity(Capacity::Instances(2)),
        ),
        (
            "a tracked instance growing past the route limit is refused",
            "a",
            2,
            &two,
            Applied::OverCapacity(Capacity::InstanceRoutes(3)),
        ),
        (
            "an instance dropping a route frees room for others",
            "b",
            2,
            &one,
            Applied::Deltas {
                interval_ms: 1,
                routes: vec![RouteDelta::default()],
            },
        ),
        (
            "the refused report changed nothing: its seq is accepted now",
            "a",
            2,
            &two,
            Applied::Deltas {
                interval_ms: 1,
                routes: vec![
                    RouteDelta::default(),
                    RouteDelta {
                        requests: 1,
                        busy_us: 0,
                    },
                ],
            },
        ),
        (
            "still no room for three more",
            "a",
            3,
            &three,
            Applied::OverCapacity(Capacity::InstanceRoutes(3)),
        ),
    ];
    for (i, (case, instance, seq, routes, expected)) in steps.iter().enumerate() {
        let now = 1000 * (i as u64 + 1);
        let (_, applied) = counters.apply(&report(instance, *seq, *seq, routes), now);
        assert_eq!(&applied, expected, "{case}");
        assert!(
            counters.instances() <= 2 && counters.routes() <= 3,
            "{case}"
        );
    }
    counters.expire(100_000, 1000);
    let (_, applied) = counters.apply(&report("c", 1, 1, &one), 100_000);
    assert_eq!(applied, Applied::Baseline, "room again once sources expire");
}

#[test]
fn another_namespace_cannot_take_over_an_instance_id() {
    let mut counters = Counters::default();
    counters.apply(&report("a", 1, 1000, &[("r", 100, 0)]), 1000);
    // A forged report from namespace "evil" reusing the id, with a seq that would turn every
    // later report of the real proxy into a duplicate.
    let mut forged = report("a", u64::MAX, 2000, &[("r", 0, 0)]);
    forged.proxy.namespace = "evil".into();
    let (_, applied) = counters.apply(&forged, 1500);
    assert_eq!(applied, Applied::ForeignInstance);
    let (_, applied) = counters.apply(&report("a", 2, 2000, &[("r", 150, 0)]), 2000);
    assert_eq!(deltas(&applied), [50], "the real proxy still counts");
}

#[test]
fn a_namespace_rotating_instance_ids_fills_only_its_own_share() {
    let mut counters = Counters::with_limits(SourceLimits {
        max_instances: 10,
        max_instances_per_namespace: 3,
        ..SourceLimits::default()
    });
    let from = |namespace: &str, instance: &str| {
        let mut r = report(instance, 1, 1, &[("r", 1, 0)]);
        r.proxy.namespace = namespace.into();
        r
    };
    // (case, namespace, instance, expected)
    let steps = [
        ("a first id", "evil", "e1", Applied::Baseline),
        ("a second id", "evil", "e2", Applied::Baseline),
        ("a third id", "evil", "e3", Applied::Baseline),
        (
            "a fourth id is over the namespace's share",
            "evil",
            "e4",
            Applied::OverCapacity(Capacity::NamespaceInstances(3)),
        ),
        (
            "another namespace still has room",
            "web",
            "w1",
            Applied::Baseline,
        ),
    ];
    for (case, namespace, instance, expected) in steps {
        let (_, applied) = counters.apply(&from(namespace, instance), 0);
        assert_eq!(applied, expected, "{case}");
    }
    counters.expire(10_000, 1_000);
    let (_, applied) = counters.apply(&from("evil", "e4"), 10_000);
    assert_eq!(applied, Applied::Baseline, "room again once its ids expire");
}

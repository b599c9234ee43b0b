//! The surge filter in a real Envoy 1.40 (V8, several worker threads), over real HTTP, reporting
//! to a capture server that stands in for the scaler behind the Istio-named cluster.
//!
//! Needs Envoy and the built filter (`make test` provides both; see `surge_sandbox::envoy`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use surge_e2e::capture::{Capture, Captured, Mode, unused_addr};
use surge_e2e::upstream::{self, Upstream};
use surge_sandbox::envoy::{
    Bootstrap, Envoy, EnvoyError, EnvoyOptions, NodeIdentity, WasmFilter, locate_filter_wasm,
};

/// Routes of every test proxy: three named ones plus Envoy's catch-all `default`.
const ROUTES: [(&str, &str); 3] = [
    ("checkout", "/checkout"),
    ("search", "/search"),
    ("cart", "/cart"),
];
const UPSTREAM_CLUSTER: &str = "inbound|8080||";

fn work_dir(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("surge-e2e-{test}-{}", std::process::id()))
}

async fn start_envoy(
    test: &str,
    upstream: SocketAddr,
    scaler: SocketAddr,
    plugin_config: Value,
    concurrency: u32,
) -> Result<Envoy, EnvoyError> {
    let wasm = locate_filter_wasm()?;
    let mut bootstrap = Bootstrap::new(upstream, scaler)
        .node(NodeIdentity::default())
        .filter(WasmFilter::surge(wasm, &plugin_config));
    for (name, prefix) in ROUTES {
        bootstrap = bootstrap.route(name, prefix);
    }
    let mut options = EnvoyOptions::new(work_dir(test))?;
    options.concurrency = concurrency;
    // Envoy::start blocks while it waits for `/ready`; block_in_place keeps the runtime's other
    // tasks (the upstream, the capture server) running meanwhile. Every test here runs on the
    // multi-thread runtime, as block_in_place needs.
    tokio::task::block_in_place(|| Envoy::start(&bootstrap, &options))
}

/// Requests per route in the latest report.
fn totals(report: &Captured) -> BTreeMap<String, u64> {
    report
        .report
        .routes
        .iter()
        .map(|r| (r.route.clone(), r.requests_total))
        .collect()
}

fn assert_one_instance_and_increasing_seq(reports: &[Captured]) {
    assert!(!reports.is_empty());
    let instance = &reports[0].report.instance;
    for pair in reports.windows(2) {
        assert_eq!(&pair[1].report.instance, instance, "one instance per proxy");
        assert!(
            pair[1].report.seq > pair[0].report.seq,
            "seq strictly increasing: {} then {}",
            pair[0].report.seq,
            pair[1].report.seq
        );
    }
}

/// Stats of one worker's listener, to show that every worker thread (VM) served traffic.
fn per_worker_connections(envoy: &Envoy) -> Vec<i64> {
    let stats = envoy.stats().unwrap();
    let mut workers: Vec<(String, i64)> = stats
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with("listener.127.0.0.1_")
                && name.contains(".worker_")
                && name.ends_with(".downstream_cx_total")
        })
        .collect();
    workers.sort();
    workers.into_iter().map(|(_, v)| v).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_totals_equal_requests_sent_per_route_across_workers() {
    let upstream = Upstream::start().await.unwrap();
    let capture = Capture::start().await.unwrap();
    let config = json!({"report_interval_ms": 200, "token": "s3cret"});
    let envoy = start_envoy("totals", upstream.addr(), capture.addr(), config, 2)
        .await
        .unwrap();
    let addr = envoy.listener_addr();

    // Three waves with pauses longer than the interval, so the totals build up over several
    // reports; 8 connections per route spread the requests over both workers.
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    for wave in [1u64, 2, 3] {
        let loads = [
            ("checkout", "/checkout/pay", 60 * wave),
            ("search", "/search?q=x", 40 * wave),
            ("cart", "/cart", 20 * wave),
            ("default", "/elsewhere", 10 * wave),
        ];
        let mut tasks = Vec::new();
        for (route, path, n) in loads {
            *sent.entry(route.to_string()).or_default() += n;
            tasks.push(tokio::spawn(upstream::send(addr, path, n, 8)));
        }
        for task in tasks {
            let result = task.await.unwrap().unwrap();
            assert_eq!(result.failed, 0);
        }
        tokio::time::sleep(Duration::from_millis(450)).await;
    }

    let expected = sent.clone();
    let converged = capture
        .wait_until(Duration::from_secs(3), |r| {
            r.last().is_some_and(|last| totals(last) == expected)
        })
        .await;
    let reports = capture.reports();
    assert!(
        converged,
        "last report {:?}, sent {sent:?}",
        reports.last().map(totals)
    );
    assert!(capture.malformed().is_empty(), "{:?}", capture.malformed());
    assert_eq!(upstream.requests(), sent.values().sum::<u64>());

    // Several reports carried traffic before the final one, and the totals only grew.
    let with_traffic: Vec<&Captured> = reports
        .iter()
        .filter(|r| !r.report.routes.is_empty())
        .collect();
    assert!(
        with_traffic.len() >= 4,
        "{} reports with traffic",
        with_traffic.len()
    );
    let distinct_totals: std::collections::BTreeSet<u64> = with_traffic
        .iter()
        .map(|r| r.report.routes.iter().map(|c| c.requests_total).sum())
        .collect();
    assert!(
        distinct_totals.len() >= 3,
        "totals over reports: {distinct_totals:?}"
    );
    for pair in with_traffic.windows(2) {
        for (route, n) in totals(pair[0]) {
            assert!(totals(pair[1]).get(&route).copied().unwrap_or(0) >= n);
        }
    }

    let last = reports.last().unwrap();
    for route in &last.report.routes {
        // A sidecar's key leaves its inbound cluster out by default.
        assert_eq!(route.cluster, "");
        assert_eq!(route.errors_total, 0);
        assert!(route.duration_us_total > 0);
        assert_eq!(route.inflight, 0);
    }
    assert_one_instance_and_increasing_seq(&reports);
    let node = NodeIdentity::default();
    assert_eq!(last.report.proxy.namespace, node.namespace);
    assert_eq!(last.report.proxy.workload, node.workload);
    assert_eq!(last.report.proxy.pod, node.pod);
    assert_eq!(last.report.proxy.owner, node.owner);
    assert_eq!(last.authorization.as_deref(), Some("Bearer s3cret"));
    assert_eq!(last.content_type.as_deref(), Some("application/json"));

    let workers = per_worker_connections(&envoy);
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(
        workers.iter().all(|&n| n > 0),
        "connections per worker: {workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_requests_in_flight_are_counted_per_route() {
    let upstream = Upstream::start().await.unwrap();
    let capture = Capture::start().await.unwrap();
    // As a gateway: the key then holds the upstream cluster (one more property read).
    let config = json!({"report_interval_ms": 100, "role": "gateway"});
    let envoy = start_envoy("errors", upstream.addr(), capture.addr(), config, 2)
        .await
        .unwrap();
    let addr = envoy.listener_addr();

    let failing = upstream::send(addr, "/cart/fail", 30, 4).await.unwrap();
    assert_eq!(failing.failed, 30, "the upstream answers 500");
    upstream::send(addr, "/cart", 20, 4).await.unwrap();
    // Six requests held 800 ms by the upstream, on six connections (both workers).
    let slow = tokio::spawn(upstream::send(addr, "/search/slow", 6, 6));

    let cart_and_search = |r: &Captured| {
        let route = |name: &str| r.report.routes.iter().find(|c| c.route == name).cloned();
        (route("cart"), route("search"))
    };
    let saw_inflight = capture
        .wait_until(Duration::from_millis(700), |reports| {
            reports
                .last()
                .and_then(|r| cart_and_search(r).1)
                .is_some_and(|search| search.inflight == 6)
        })
        .await;
    assert!(
        saw_inflight,
        "{:?}",
        capture.reports().last().map(cart_and_search)
    );
    assert_eq!(slow.await.unwrap().unwrap().ok, 6);

    let settled = capture
        .wait_until(Duration::from_secs(2), |reports| {
            reports.last().is_some_and(|r| match cart_and_search(r) {
                (Some(cart), Some(search)) => {
                    cart.requests_total == 50
                        && cart.errors_total == 30
                        && search.requests_total == 6
                        && search.inflight == 0
                }
                _ => false,
            })
        })
        .await;
    let last = capture.reports().last().map(cart_and_search);
    assert!(settled, "{last:?}");
    // The slow requests took at least 800 ms each.
    let search = last.and_then(|(_, s)| s).unwrap();
    assert!(search.duration_us_total >= 6 * 800_000, "{search:?}");
    assert_eq!(search.cluster, UPSTREAM_CLUSTER);
    let reports = capture.reports();
    assert!(
        reports
            .iter()
            .all(|r| r.report.proxy.role == surge_wire::Role::Gateway)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_report_per_interval_not_one_per_vm() {
    let upstream = Upstream::start().await.unwrap();
    let capture = Capture::start().await.unwrap();
    // Three worker VMs plus the main thread's all tick; only the lease holder reports. Early
    // reports are kept out of this test by a min_rps the load never reaches.
    let config = json!({"report_interval_ms": 250, "surge": {"min_rps": 100000}});
    let envoy = start_envoy("interval", upstream.addr(), capture.addr(), config, 3)
        .await
        .unwrap();
    let load = tokio::spawn(upstream::paced(
        envoy.listener_addr(),
        "/checkout",
        100,
        Duration::from_millis(3200),
        6,
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let to = Instant::now();
    assert_eq!(load.await.unwrap().unwrap().failed, 0);

    let reports = capture.reports();
    let in_window: Vec<&Captured> = reports
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .collect();
    // 2.5 s / 250 ms = 10 reports; one per VM would be 40.
    assert!(
        (9..=11).contains(&in_window.len()),
        "{} reports in 2.5 s",
        in_window.len()
    );
    for pair in in_window.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(150),
            "two reports {gap:?} apart"
        );
    }
    assert_one_instance_and_increasing_seq(&reports);
    assert!(reports.iter().all(|r| !r.report.surge));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenfold_step_is_reported_early_within_200_ms() {
    // The step falls between two periodic reports, so what follows it within 200 ms is an
    // early report.
    let (reports, step_at) = step_through_the_filter((30, 3), (300, 6), 1000).await;
    for r in &reports {
        let total: u64 = r.report.routes.iter().map(|c| c.requests_total).sum();
        let offset = if r.at >= step_at {
            (r.at - step_at).as_millis() as i64
        } else {
            -((step_at - r.at).as_millis() as i64)
        };
        eprintln!(
            "report seq {} at {offset} ms surge {} total {total}",
            r.report.seq, r.report.surge
        );
    }
    let before_step: Vec<&Captured> = reports.iter().filter(|r| r.at < step_at).collect();
    // The baseline was steady for a while before the step: periodic reports only by then.
    assert!(
        before_step
            .iter()
            .filter(|r| r.at + Duration::from_millis(1500) >= step_at)
            .all(|r| !r.report.surge),
        "early report during steady load"
    );
    let early = reports
        .iter()
        .find(|r| r.at >= step_at && r.report.surge)
        .expect("an early report after the step");
    let delay = early.at - step_at;
    assert!(
        delay <= Duration::from_millis(200),
        "early report {delay:?} after the step"
    );
    // The early report carries more requests than the last one before the step.
    let last_before: u64 = before_step
        .last()
        .map(|r| r.report.routes.iter().map(|c| c.requests_total).sum())
        .unwrap_or(0);
    let early_total: u64 = early.report.routes.iter().map(|c| c.requests_total).sum();
    assert!(early_total > last_before);
    assert_one_instance_and_increasing_seq(&reports);

    // Every report but the first carries the filter's recent window: the arrival rate now.
    for r in reports.iter().skip(1) {
        let span = r
            .report
            .window_ms
            .expect("a window in every report after the first");
        // 200 ms from the newest sample at or before the window's start: up to a check
        // period more, and more again when a tick of the busy reporter thread comes late.
        assert!((150..=500).contains(&span), "window of {span} ms");
    }
    let early_rate = window_rate(early).unwrap();
    assert!(
        early_rate >= 45.0,
        "early report's window: {early_rate:.0} rps"
    );
    // Within half a second of the step a report carries the step's own rate (300 rps), not
    // an average that still holds the calm before it.
    let settled_rate = reports
        .iter()
        .filter(|r| r.at >= step_at && r.at <= step_at + Duration::from_millis(500))
        .filter_map(window_rate)
        .fold(0.0, f64::max);
    assert!(
        settled_rate >= 200.0,
        "highest window rate within 500 ms of the step: {settled_rate:.0} rps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threefold_step_is_reported_again_while_it_lasts() {
    // 60 -> 180 rps: one 200 ms window of it is too little for the scaler to act on, so the
    // filter keeps reporting it, a window apart, up to five times more (a periodic report
    // among them flagged as a surge).
    let (reports, step_at) = step_through_the_filter((60, 3), (180, 4), 2000).await;
    let after: Vec<&Captured> = reports.iter().filter(|r| r.at >= step_at).collect();
    let at_ms = |r: &Captured| (r.at - step_at).as_millis();
    for r in &after {
        eprintln!(
            "report seq {} at +{} ms surge {} window {:?}",
            r.report.seq,
            at_ms(r),
            r.report.surge,
            r.report.window_ms
        );
    }
    let first = after
        .iter()
        .position(|r| r.report.surge)
        .expect("an early report after the step");
    let closed = after[first..]
        .iter()
        .position(|r| !r.report.surge)
        .map(|k| first + k)
        .expect("a report that is not the surge's after it");
    let surge_reports = &after[first..closed];
    assert!(
        surge_reports.len() >= 2,
        "one early report only: {:?}",
        after
            .iter()
            .map(|r| (at_ms(r), r.report.surge))
            .collect::<Vec<_>>()
    );
    let window_rate = |r: &Captured| window_rate(r).unwrap_or(0.0);
    let mut lasting = 0;
    for pair in surge_reports.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // At least the filter's min_gap_ms (one 100 ms check), less a little for the timer.
        assert!(
            gap >= Duration::from_millis(90),
            "early reports {gap:?} apart"
        );
        // An early report that follows another without a further 1.25x rise: only a surge
        // that lasts sends one (a first window that straddled the step is followed by a
        // rising one either way).
        if window_rate(pair[1]) < 1.25 * window_rate(pair[0]) {
            lasting += 1;
        }
    }
    assert!(
        lasting >= 1,
        "no early report for a surge that lasts: {:?}",
        surge_reports
            .iter()
            .map(|r| (at_ms(r), window_rate(r)))
            .collect::<Vec<_>>()
    );
    // Once the surge's reports are over, the steady 180 rps is no surge.
    let steady_until = step_at + Duration::from_millis(1900);
    assert!(
        after[closed..]
            .iter()
            .filter(|r| r.at <= steady_until)
            .all(|r| !r.report.surge),
        "early report at the steady new rate"
    );
    assert_one_instance_and_increasing_seq(&reports);
}

/// Through an Envoy with the filter's defaults (1 s interval, factor 1.5, checks every 100 ms
/// over a 200 ms window): `(rps, connections)` of `before` for 3.4 s, which puts the step
/// between two periodic reports (the first goes out at start, then every second), then of
/// `step` for `step_ms`. Returns the reports captured and when the step began.
async fn step_through_the_filter(
    before: (u64, u64),
    step: (u64, u64),
    step_ms: u64,
) -> (Vec<Captured>, Instant) {
    let upstream = Upstream::start().await.unwrap();
    let capture = Capture::start().await.unwrap();
    let envoy = start_envoy("surge", upstream.addr(), capture.addr(), json!({}), 2)
        .await
        .unwrap();
    let addr = envoy.listener_addr();
    let calm = upstream::paced(
        addr,
        "/search",
        before.0,
        Duration::from_millis(3400),
        before.1,
    )
    .await
    .unwrap();
    assert_eq!(calm.failed, 0);
    let step_at = Instant::now();
    let stepped = upstream::paced(
        addr,
        "/search",
        step.0,
        Duration::from_millis(step_ms),
        step.1,
    )
    .await
    .unwrap();
    assert_eq!(stepped.failed, 0);
    (capture.reports(), step_at)
}

/// The arrival rate a report's recent window carries (every report but the first has one).
fn window_rate(r: &Captured) -> Option<f64> {
    let span = r.report.window_ms?.max(1);
    let requests: u64 = r
        .report
        .routes
        .iter()
        .filter_map(|c| c.window_requests)
        .sum();
    Some(requests as f64 * 1000.0 / span as f64)
}

/// Sends paced traffic while the scaler misbehaves; returns the load result and the Envoy.
async fn traffic_while_scaler(
    test: &str,
    scaler: SocketAddr,
    extra: Value,
) -> (upstream::LoadResult, u64, Envoy) {
    let upstream = Upstream::start().await.unwrap();
    let mut config = json!({"report_interval_ms": 100, "timeout_ms": 200});
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    let envoy = start_envoy(test, upstream.addr(), scaler, config, 2)
        .await
        .unwrap();
    let result = upstream::paced(
        envoy.listener_addr(),
        "/checkout",
        300,
        Duration::from_millis(1500),
        8,
    )
    .await
    .unwrap();
    (result, upstream.requests(), envoy)
}

fn stat(envoy: &Envoy, suffix: &str) -> i64 {
    envoy
        .stats()
        .unwrap()
        .into_iter()
        .filter(|(name, _)| name.ends_with(suffix))
        .map(|(_, v)| v)
        .sum()
}

fn log_lines_containing(envoy: &Envoy, needle: &str) -> usize {
    envoy.log().lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_when_the_scaler_is_down() {
    let (result, served, envoy) =
        traffic_while_scaler("down", unused_addr().unwrap(), json!({})).await;
    assert_eq!(result.failed, 0);
    assert_eq!(result.ok, served);
    assert!(result.ok >= 400);
    // Envoy answers a refused connection with a local 503.
    assert!(stat(&envoy, "surge.report_failures_status_total") > 0);
    assert_eq!(
        log_lines_containing(&envoy, "answered 503"),
        1,
        "{}",
        envoy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_when_the_scaler_hangs() {
    let capture = Capture::start().await.unwrap();
    capture.set_mode(Mode::Hang);
    let (result, served, envoy) = traffic_while_scaler("hang", capture.addr(), json!({})).await;
    assert_eq!(result.failed, 0);
    assert_eq!(result.ok, served);
    assert!(capture.attempts() > 0);
    // Timed-out calls come back as 504; at most one report is in flight at a time.
    assert!(stat(&envoy, "surge.report_failures_status_total") > 0);
    assert!(stat(&envoy, "surge.reports_skipped_in_flight_total") > 0);
    assert_eq!(
        log_lines_containing(&envoy, "answered 504"),
        1,
        "{}",
        envoy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_when_the_scaler_answers_500() {
    let capture = Capture::start().await.unwrap();
    capture.set_mode(Mode::Fail500);
    let (result, served, envoy) = traffic_while_scaler("fail500", capture.addr(), json!({})).await;
    assert_eq!(result.failed, 0);
    assert_eq!(result.ok, served);
    let failures = stat(&envoy, "surge.report_failures_status_total");
    assert!(failures >= 5, "{failures} failed reports");
    assert_eq!(
        log_lines_containing(&envoy, "answered 500"),
        1,
        "{}",
        envoy.log()
    );

    // Recovery is logged once too, and reports flow again.
    capture.set_mode(Mode::Accept);
    assert!(
        capture
            .wait_until(Duration::from_secs(2), |r| !r.is_empty())
            .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log_lines_containing(&envoy, "delivered again"),
        1,
        "{}",
        envoy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_when_the_scaler_cluster_is_unknown() {
    let capture = Capture::start().await.unwrap();
    let (result, served, envoy) = traffic_while_scaler(
        "nocluster",
        capture.addr(),
        json!({"cluster": "outbound|8080||missing.surge-system.svc.cluster.local"}),
    )
    .await;
    assert_eq!(result.failed, 0);
    assert_eq!(result.ok, served);
    assert_eq!(capture.attempts(), 0);
    assert!(stat(&envoy, "surge.report_failures_dispatch_total") > 0);
    assert_eq!(
        log_lines_containing(&envoy, "refused the call"),
        1,
        "{}",
        envoy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_plugin_config_is_refused_with_one_clear_log_line() {
    let upstream = Upstream::start().await.unwrap();
    let capture = Capture::start().await.unwrap();
    let config = json!({"surge": {"factor": 0.5}});
    let outcome = start_envoy("badconfig", upstream.addr(), capture.addr(), config, 2).await;
    let log = match outcome {
        Err(EnvoyError::Exited { .. }) => {
            std::fs::read_to_string(work_dir("badconfig").join("envoy.log")).unwrap()
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(envoy) => panic!("Envoy accepted a bad pluginConfig:\n{}", envoy.log()),
    };
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("invalid pluginConfig"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("field `surge.factor`"), "{}", lines[0]);
    assert!(lines[0].contains("above 1"), "{}", lines[0]);
}

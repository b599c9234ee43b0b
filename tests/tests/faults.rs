//! Faults injected for real, while real parts run: the kernel resets or drops the filter's
//! report packets (nftables, one port on loopback), a delaying proxy slows the scaler's
//! Kubernetes API calls past and below its timeout, and the embedded API cuts the scaler's
//! SurgeScaler watch.
//!
//! ```text
//!  load --> Envoy 1.40 + surge_filter.wasm --reports--> [nft: reset / random drop] --> capture
//!  reports --> surge-scaler --kube--> [delaying proxy] --> embedded API (watch cut hook)
//! ```
//!
//! Needs Envoy and the built filter (`make test` provides both), the scaler binary, and for
//! the nftables cases root and `nft` (`scripts/tools.sh` installs it): a test that cannot
//! inject its fault fails, it never passes without it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use surge_e2e::capture::{Capture, Captured};
use surge_e2e::nft::{Counters, NftTable};
use surge_e2e::upstream::{self, Upstream};
use surge_sandbox::envoy::{
    Bootstrap, Envoy, EnvoyOptions, NodeIdentity, WasmFilter, locate_filter_wasm,
};

fn work_dir(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("surge-faults-{test}-{}", std::process::id()))
}

/// Requests the report carries, over every route.
fn total(report: &Captured) -> u64 {
    report.report.routes.iter().map(|r| r.requests_total).sum()
}

fn inflight(report: &Captured) -> u64 {
    report.report.routes.iter().map(|r| r.inflight).sum()
}

/// The filter's own counters, from Envoy's stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FilterStats {
    sent: i64,
    delivered: i64,
    failed_dispatch: i64,
    failed_status: i64,
    failed_reset: i64,
    skipped_in_flight: i64,
}

impl FilterStats {
    fn read(envoy: &Envoy) -> Self {
        let stats: BTreeMap<String, i64> = envoy.stats().unwrap();
        let stat = |suffix: &str| {
            stats
                .iter()
                .filter(|(name, _)| name.ends_with(suffix))
                .map(|(_, v)| *v)
                .sum()
        };
        Self {
            sent: stat("surge.reports_sent_total"),
            delivered: stat("surge.reports_delivered_total"),
            failed_dispatch: stat("surge.report_failures_dispatch_total"),
            failed_status: stat("surge.report_failures_status_total"),
            failed_reset: stat("surge.report_failures_reset_total"),
            skipped_in_flight: stat("surge.reports_skipped_in_flight_total"),
        }
    }

    fn failed(&self) -> i64 {
        self.failed_dispatch + self.failed_status + self.failed_reset
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            sent: self.sent - earlier.sent,
            delivered: self.delivered - earlier.delivered,
            failed_dispatch: self.failed_dispatch - earlier.failed_dispatch,
            failed_status: self.failed_status - earlier.failed_status,
            failed_reset: self.failed_reset - earlier.failed_reset,
            skipped_in_flight: self.skipped_in_flight - earlier.skipped_in_flight,
        }
    }
}

async fn start_envoy(test: &str, upstream: SocketAddr, scaler: SocketAddr) -> Envoy {
    let wasm = locate_filter_wasm().unwrap();
    // Reports every 100 ms with a 150 ms timeout: a fault of a few seconds fails dozens of
    // reports, and one lost segment (TCP retransmits after at least 200 ms) fails its report.
    let config = json!({"report_interval_ms": 100, "timeout_ms": 150});
    let bootstrap = Bootstrap::new(upstream, scaler)
        .node(NodeIdentity::default())
        .filter(WasmFilter::surge(wasm, &config))
        .route("checkout", "/checkout");
    let options = EnvoyOptions::new(work_dir(test)).unwrap();
    // On the test's own thread: Envoy gets SIGTERM when the thread that spawned it exits
    // (PR_SET_PDEATHSIG), and tokio retires idle blocking threads.
    tokio::task::block_in_place(|| Envoy::start(&bootstrap, &options)).unwrap()
}

/// Steady load through Envoy: 200 rps over 4 keep-alive connections.
async fn steady(envoy: &Envoy, duration: Duration) -> upstream::LoadResult {
    upstream::paced(envoy.listener_addr(), "/checkout", 200, duration, 4)
        .await
        .unwrap()
}

/// What one nftables case measured.
#[derive(Debug)]
struct FaultRun {
    /// Requests sent through Envoy before the fault ended (all answered 2xx).
    sent_before_recovery: u64,
    /// Requests sent in all (all answered 2xx).
    sent: u64,
    /// The filter's counters over the fault (from its start to its removal).
    during: FilterStats,
    /// Reports that reached the capture server while the fault was on.
    captured_during: usize,
    /// What the rules matched.
    counters: Counters,
    /// From the fault's removal to the first new report at the capture server.
    recovery: Duration,
    /// Reports captured after the removal with a seq below one already seen: sent during
    /// the fault, delivered late by TCP retransmission (the scaler drops them as duplicates).
    late: usize,
    /// The first new report after the removal.
    first_after: Captured,
}

/// Steady traffic through a real Envoy whose filter reports to a capture server on loopback
/// (the witness: it keeps every report as it arrived). `inject` adds the nftables rules for
/// the capture server's port while load flows; the load stops 2 s later and the rules are
/// removed 1 s after that, so the requests sent are known exactly when the reports resume;
/// then load flows again.
async fn traffic_through_a_report_fault(
    test: &str,
    inject: impl FnOnce(&NftTable, u16),
) -> FaultRun {
    // Before anything else, so a machine where nft cannot work fails here, clearly.
    let table = NftTable::create().expect("nftables must work here (root and `nft` needed)");
    let upstream = Upstream::start().await.unwrap();
    let capture = Capture::start().await.unwrap();
    let envoy = start_envoy(test, upstream.addr(), capture.addr()).await;

    let before = steady(&envoy, Duration::from_secs(1)).await;
    assert_eq!(before.failed, 0, "requests failed before the fault");
    assert!(
        capture
            .wait_until(Duration::from_secs(2), |r| r
                .last()
                .is_some_and(|l| total(l) == before.ok))
            .await,
        "reports did not carry the {} requests before the fault",
        before.ok
    );

    // The fault goes in while load flows: 2.5 s of it, the rules added 0.5 s in.
    let load = tokio::spawn(upstream::paced(
        envoy.listener_addr(),
        "/checkout",
        200,
        Duration::from_millis(2500),
        4,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    inject(&table, capture.addr().port());
    let fault_on = Instant::now();
    // Counted from a moment after the rules are in, so that no report already on its way
    // when they went in is taken for one sent through the fault.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let at_fault = FilterStats::read(&envoy);
    let during = load.await.unwrap().unwrap();
    assert_eq!(during.failed, 0, "requests failed during the fault");
    // Quiet for longer than the report timeout, so every report sent while load flowed has
    // failed or been delivered before the fault ends.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent_before_recovery = before.ok + during.ok;

    let at_removal = FilterStats::read(&envoy);
    // Reports between `removing` and `fault_off` (while nft runs) count as neither.
    let removing = Instant::now();
    let counters = table.clear().unwrap();
    let fault_off = Instant::now();
    let seen_before: u64 = capture
        .reports()
        .iter()
        .map(|r| r.report.seq)
        .max()
        .unwrap_or(0);
    assert!(
        capture
            .wait_until(Duration::from_secs(5), |r| r
                .iter()
                .any(|c| c.at > fault_off && c.report.seq > seen_before))
            .await,
        "no new report within 5 s of the fault's removal"
    );
    let after_removal: Vec<Captured> = capture
        .reports()
        .into_iter()
        .filter(|c| c.at > fault_off)
        .collect();
    let first_after = after_removal
        .iter()
        .find(|c| c.report.seq > seen_before)
        .cloned()
        .unwrap();
    let late = after_removal
        .iter()
        .filter(|c| c.report.seq <= seen_before)
        .count();

    let after = steady(&envoy, Duration::from_secs(1)).await;
    assert_eq!(after.failed, 0, "requests failed after the fault");
    let sent = sent_before_recovery + after.ok;
    assert!(
        capture
            .wait_until(Duration::from_secs(2), |r| r
                .last()
                .is_some_and(|l| total(l) == sent))
            .await,
        "reports did not reach the {sent} requests sent in all: last {:?}",
        capture.reports().last().map(total)
    );
    // Envoy passed every request on: none was lost or answered locally.
    assert_eq!(upstream.requests(), sent);
    assert!(capture.malformed().is_empty(), "{:?}", capture.malformed());
    // One instance throughout: the fault restarted nothing.
    let reports = capture.reports();
    assert!(
        reports
            .iter()
            .all(|r| r.report.instance == reports[0].report.instance)
    );

    let captured_during = reports
        .iter()
        .filter(|c| c.at > fault_on + Duration::from_millis(50) && c.at <= removing)
        .count();
    let run = FaultRun {
        sent_before_recovery,
        sent,
        during: at_removal.since(&at_fault),
        captured_during,
        counters,
        recovery: first_after.at - fault_off,
        late,
        first_after,
    };
    println!(
        "{test}: sent {} ({} before recovery), filter during the fault {:?}, captured during {}, \
         nft {:?}, first new report {:?} after removal (seq {}, total {}), late {}",
        run.sent,
        run.sent_before_recovery,
        run.during,
        run.captured_during,
        run.counters,
        run.recovery,
        run.first_after.report.seq,
        total(&run.first_after),
        run.late
    );
    drop(envoy);
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_reset_by_the_kernel_fail_no_request_and_resume_with_the_exact_total() {
    let run = traffic_through_a_report_fault("nft-reset", |table, port| {
        table.reset_to(port).unwrap();
    })
    .await;
    // The fault was real: the kernel answered report packets with resets.
    assert!(run.counters.reset > 0, "{:?}", run.counters);
    // Nothing got through while it was on, and the filter counted every report as failed.
    assert_eq!(run.captured_during, 0);
    assert_eq!(run.during.delivered, 0, "{:?}", run.during);
    assert!(run.during.failed() >= 20, "{:?}", run.during);
    // Every report sent through the fault failed; one may still be on its way (a refused
    // connection fails within a millisecond) when the counters are read.
    assert!(
        (run.during.sent - 1..=run.during.sent).contains(&run.during.failed()),
        "{:?}",
        run.during
    );
    // Cumulative counters: the first report after the fault carries every request sent.
    assert_eq!(total(&run.first_after), run.sent_before_recovery);
    assert_eq!(inflight(&run.first_after), 0);
    assert_eq!(run.late, 0, "a reset connection delivers nothing late");
    assert!(
        run.recovery < Duration::from_millis(500),
        "{:?}",
        run.recovery
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_losing_packets_at_random_fail_no_request_and_resume_with_the_exact_total() {
    let run = traffic_through_a_report_fault("nft-drop", |table, port| {
        table.drop_random(port, 30).unwrap();
    })
    .await;
    // The fault was real and random: some of the packets on the port were dropped, not all.
    assert!(run.counters.dropped > 0, "{:?}", run.counters);
    assert!(
        run.counters.dropped < run.counters.seen,
        "{:?}",
        run.counters
    );
    assert!(run.during.failed() > 0, "{:?}", run.during);
    // Each report sent was delivered or failed, but for at most one still in flight: the
    // filter never queues reports behind a stuck one (it skips the turn instead).
    let settled = run.during.delivered + run.during.failed();
    assert!(
        (run.during.sent - 1..=run.during.sent).contains(&settled),
        "{:?}",
        run.during
    );
    assert_eq!(inflight(&run.first_after), 0);
    assert_eq!(total(&run.first_after), run.sent_before_recovery);
}

//! Faults injected for real, while real parts run: the kernel resets or drops the filter's
//! report packets and the scaler's Kubernetes API traffic (nftables, one port on loopback), a
//! delaying proxy slows the scaler's API calls past and below its timeout, and the embedded API
//! cuts the scaler's SurgeScaler watch.
//!
//! ```text
//!  load --> Envoy 1.40 + surge_filter.wasm --reports--> [nft: reset / random drop] --> capture
//!  reports --> surge-scaler --kube--> [delaying proxy] --> embedded API (watch cut hook)
//!  reports --> surge-scaler --kube--> [nft: reset / drop every packet] --> embedded API
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
use surge_e2e::delay_proxy::DelayProxy;
use surge_e2e::nft::{Counters, NftTable};
use surge_e2e::scaler::{
    HttpClient, RunningScaler, api_with_one_target_using, http_client, is_ready, request,
    wait_ready,
};
use surge_e2e::upstream::{self, Upstream};
use surge_sandbox::envoy::{
    Bootstrap, Envoy, EnvoyOptions, NodeIdentity, WasmFilter, locate_filter_wasm,
};
use surge_sandbox::kubeapi::{KubeApi, Options, RequestRecord, WatchCut};

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
    // Envoy::start blocks while it waits for `/ready`; block_in_place keeps the runtime's other
    // tasks (the upstream, the capture server) running meanwhile.
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

// ---------------------------------------------------------------------------------------
// A delaying proxy between the scaler and the Kubernetes API.

/// An upstream that records what it receives, with the time: the far side of the proxy.
async fn recording_upstream() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(Instant, Vec<u8>)>>>,
) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    log.lock()
                        .unwrap()
                        .push((Instant::now(), buf[..n].to_vec()));
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delaying_proxy_holds_each_chunk_and_drops_what_a_departed_client_sent() {
    use tokio::io::AsyncWriteExt;
    let (upstream, received) = recording_upstream().await;
    let proxy = DelayProxy::start(upstream).await.unwrap();
    let arrived = |bytes: &[u8]| {
        received
            .lock()
            .unwrap()
            .iter()
            .find(|(_, b)| b == bytes)
            .map(|(at, _)| *at)
    };
    let wait_for = async |bytes: &'static [u8]| {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(at) = arrived(bytes) {
                return at;
            }
            assert!(Instant::now() < deadline, "{bytes:?} never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };

    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.set_read_delay(Duration::from_millis(300));
    let sent = Instant::now();
    client.write_all(b"held").await.unwrap();
    let late = wait_for(b"held").await - sent;
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(450)).contains(&late),
        "{late:?}"
    );
    proxy.set_read_delay(Duration::ZERO);
    let sent = Instant::now();
    client.write_all(b"at once").await.unwrap();
    let late = wait_for(b"at once").await - sent;
    assert!(late < Duration::from_millis(100), "{late:?}");

    // A client that gives up (closes) before its bytes are due: they never arrive.
    proxy.set_read_delay(Duration::from_millis(500));
    client.write_all(b"abandoned").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(arrived(b"abandoned"), None);
    let stats = proxy.stats();
    assert_eq!(
        (stats.connections, stats.forwarded, stats.dropped),
        (1, 2, 1),
        "{stats:?}"
    );

    // A slow connection set-up: a new connection's first bytes wait for the connect delay.
    proxy.set_read_delay(Duration::ZERO);
    proxy.set_connect_delay(Duration::from_millis(200));
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let sent = Instant::now();
    client.write_all(b"slow start").await.unwrap();
    let late = wait_for(b"slow start").await - sent;
    assert!(
        (Duration::from_millis(190)..Duration::from_millis(350)).contains(&late),
        "{late:?}"
    );
}

/// A sidecar report for `web/api` (one instance), as the filter sends it.
fn report(seq: u64, time_ms: u64, requests_total: u64, surge: bool) -> serde_json::Value {
    json!({
        "version": 1,
        "proxy": {"namespace": "web", "workload": "api", "pod": "api-7d9f-abcde",
                  "owner": "kubernetes://apis/apps/v1/namespaces/web/deployments/api",
                  "role": "sidecar"},
        "instance": "api-7d9f-abcde/faults",
        "seq": seq,
        "time_ms": time_ms,
        "surge": surge,
        "routes": [{"route": "default", "cluster": "inbound|8080||",
                    "requests_total": requests_total, "errors_total": 0,
                    "duration_us_total": requests_total * 2_000, "inflight": 0}]
    })
}

/// Replicas a scale write asked for.
fn replicas(record: &RequestRecord) -> Option<i64> {
    let body: serde_json::Value = serde_json::from_str(record.body.as_deref()?).ok()?;
    body.pointer("/spec/replicas")?.as_i64()
}

fn scale_writes(api: &KubeApi) -> Vec<RequestRecord> {
    api.requests()
        .into_iter()
        .filter(RequestRecord::is_scale_write)
        .collect()
}

/// Reports of one proxy instance, sent with `time_ms` advancing as the scaler's clock does.
struct Reporter {
    client: HttpClient,
    url: String,
    seq: u64,
    time_ms: u64,
    total: u64,
}

impl Reporter {
    /// Sends the next report: `requests` more over the last `ms` milliseconds.
    async fn send(&mut self, ms: u64, requests: u64, surge: bool) -> Instant {
        self.seq += 1;
        self.time_ms += ms;
        self.total += requests;
        let sent = Instant::now();
        let answer = request(
            &self.client,
            "POST",
            &self.url,
            "e2e-token",
            Some(&report(self.seq, self.time_ms, self.total, surge)),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        sent
    }

    /// Calm, then 800 rps in 100 ms: returns when that report went and the 8-replica PATCH it
    /// caused.
    async fn calm_then_800_rps(&mut self, api: &KubeApi) -> (Instant, RequestRecord) {
        self.send(0, 0, false).await;
        self.send(1000, 50, false).await;
        let sent = self.send(100, 80, true).await;
        let patch = api
            .wait_for_request(Duration::from_secs(3), |r| r.is_scale_write())
            .await
            .expect("a scale PATCH for 800 rps");
        assert_eq!(replicas(&patch), Some(8));
        (sent, patch)
    }
}

/// A scaler reaching the API through `kubeconfig` (directly or through a fault), with a 1 s
/// API timeout and a one-minute tick (so every step is woken by a report), once its first step
/// has written the status; and a reporter for it.
async fn scaler_woken_by_reports(
    api: &KubeApi,
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> (RunningScaler, HttpClient, Reporter) {
    let scaler = RunningScaler::start(
        dir,
        kubeconfig,
        "info",
        &["--kube-timeout-ms", "1000", "--tick-ms", "60000"],
    );
    let client = http_client();
    wait_ready(&client, scaler.admin, Duration::from_secs(10)).await;
    api.wait_for_request(Duration::from_secs(5), |r| {
        r.path.ends_with("/surgescalers/api/status")
    })
    .await
    .expect("the first step writes the status");
    let reporter = Reporter {
        client: client.clone(),
        url: scaler.reports_url(),
        seq: 0,
        time_ms: 10_000,
        total: 0,
    };
    (scaler, client, reporter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_delays_the_scale_patch_and_one_slower_than_the_timeout_writes_nothing() {
    // Bookmarks every 250 ms: the watch's data is held by the proxy too, and a steady flow of it
    // shows the delay applies to every byte from the API.
    let api = api_with_one_target_using(
        Options {
            bookmark_interval: Duration::from_millis(250),
        },
        20,
    )
    .await;
    let proxy = DelayProxy::start(api.addr()).await.unwrap();
    let dir = work_dir("slow-api");
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        api.kubeconfig("web").replace(&api.url(), &proxy.url()),
    )
    .unwrap();
    let (mut scaler, client, mut reporter) = scaler_woken_by_reports(&api, &dir, &kubeconfig).await;

    // No delay.
    let (sent, patch) = reporter.calm_then_800_rps(&api).await;
    let undelayed = patch.received - sent;
    // The writes that follow it (status, Event) land before the delay starts: a target's calls
    // are serialized, so one of them caught by the delay would hold the next PATCH behind it
    // (seen once on CI: 1.2 s, three delayed calls).
    api.wait_for_request(Duration::from_secs(5), |r| {
        r.path.ends_with("/surgescalers/api/status")
            && r.body
                .as_deref()
                .is_some_and(|b| b.contains("\"desiredReplicas\":8"))
    })
    .await
    .expect("the status says 8");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 400 ms per request, below the 1 s timeout: 1600 rps in 100 ms.
    proxy.set_read_delay(Duration::from_millis(400));
    let sent = reporter.send(100, 160, true).await;
    let patch = api
        .wait_for_request(Duration::from_secs(3), |r| {
            r.is_scale_write() && r.received > sent
        })
        .await
        .expect("a scale PATCH through the delay");
    let delayed = patch.received - sent;
    assert_eq!(replicas(&patch), Some(16));
    println!("report -> scale PATCH: {undelayed:?} without delay, {delayed:?} with 400 ms");
    // Later by the delay (the PATCH went out at once), and not by more.
    assert!(
        (Duration::from_millis(400)..Duration::from_millis(700)).contains(&delayed),
        "{delayed:?}"
    );
    assert!(undelayed < Duration::from_millis(300), "{undelayed:?}");
    // The writes that follow it (Event, status) land too before the next fault starts.
    api.wait_for_request(Duration::from_secs(5), |r| {
        r.path.ends_with("/surgescalers/api/status")
            && r.body
                .as_deref()
                .is_some_and(|b| b.contains("\"desiredReplicas\":16"))
    })
    .await
    .expect("the status says 16");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2.5 s per request, beyond the 1 s timeout, while 3000 rps is reported for 3 s.
    let errors_before = api_errors(&scaler.metrics(&client).await);
    let dropped_before = proxy.stats().dropped;
    let before = api.requests().len();
    proxy.set_read_delay(Duration::from_millis(2500));
    for _ in 0..12 {
        reporter.send(250, 750, true).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during: Vec<String> = api.requests()[before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(during.is_empty(), "requests reached the API: {during:?}");
    assert_eq!(api.desired_replicas("web", "api").unwrap(), 16);
    assert!(scaler.process.is_running(), "the scaler died");
    let metrics = scaler.metrics(&client).await;
    // One PATCH attempt, failed: its client timeout and its read timeout are both 1 s, so
    // it is counted as `timeout` or `error` depending on which fires first.
    assert_eq!(api_errors_of(&metrics, "patch_scale"), 1, "{metrics}");

    // The delay goes: the next step re-reads the scale and writes the pending scale-up, valid
    // only at the version it read.
    let read_version = api
        .store()
        .get(surge_sandbox::kubeapi::resources::DEPLOYMENTS, "web", "api")
        .unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    proxy.set_read_delay(Duration::ZERO);
    let fault_off = Instant::now();
    let mut written = None;
    for _ in 0..12 {
        reporter.send(250, 750, true).await;
        written = api
            .wait_for_request(Duration::from_millis(250), |r| {
                r.is_scale_write() && r.received > fault_off
            })
            .await;
        if written.is_some() {
            break;
        }
    }
    let written = written.expect("the pending scale-up was never written");
    println!(
        "scale-up written {:?} after the delay went",
        written.received - fault_off
    );
    let scale_calls: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.received > fault_off && r.path.ends_with("/scale"))
        .map(|r| format!("{} {}", r.method, r.body.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        scale_calls,
        [
            "GET ".to_owned(),
            format!(
                r#"PATCH {{"metadata":{{"resourceVersion":"{read_version}"}},"spec":{{"replicas":20}}}}"#
            )
        ],
        "re-read the scale, then write the capped scale-up"
    );
    assert_eq!(api.desired_replicas("web", "api").unwrap(), 20);
    let all: Vec<Option<i64>> = scale_writes(&api).iter().map(replicas).collect();
    assert_eq!(
        all,
        [Some(8), Some(16), Some(20)],
        "every write within [1, 20]"
    );
    assert!(scaler.process.is_running(), "the scaler died");

    // Once a call sent just before the delay went has timed out too: every call that failed
    // was one the proxy held and dropped when the scaler gave up on it. None reached the API
    // late, none failed any other way.
    tokio::time::sleep_until((fault_off + Duration::from_millis(1200)).into()).await;
    let errors = api_errors(&scaler.metrics(&client).await) - errors_before;
    let dropped = proxy.stats().dropped - dropped_before;
    println!("slower than the timeout: {errors} API calls failed, {dropped} requests dropped");
    assert_eq!(errors, dropped);
    assert!(errors >= 3, "{errors}");
}

/// Failed Kubernetes API calls in all, from the scaler's metrics.
fn api_errors(metrics: &str) -> u64 {
    api_errors_of(metrics, "")
}

/// Failed Kubernetes API calls whose operation starts with `operation`, whatever the code.
fn api_errors_of(metrics: &str, operation: &str) -> u64 {
    let prefix = format!("surge_kube_api_errors_total{{operation=\"{operation}");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------
// The scaler's SurgeScaler watch, cut.

/// The scaler's requests for the SurgeScaler collection (its list and watches), in order.
fn surgescaler_reads(api: &KubeApi) -> Vec<RequestRecord> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/apis/surge.dev/v1alpha1/surgescalers")
        .collect()
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// Merges `spec` into the SurgeScaler `web/api` (straight in the store, as `kubectl patch`
/// would through the API); returns its new resourceVersion.
fn change_spec(api: &KubeApi, spec: serde_json::Value) -> u64 {
    let changed = api
        .store()
        .modify(
            surge_sandbox::kubeapi::resources::SURGESCALERS,
            "web",
            "api",
            surge_sandbox::kubeapi::Part::Main,
            false,
            |current| {
                let mut doc = current.unwrap();
                surge_sandbox::kubeapi::merge_patch(&mut doc, &json!({ "spec": spec }));
                Ok(doc)
            },
        )
        .unwrap();
    changed["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Sends 800 rps worth of reports every 250 ms (what one busy sidecar's filter sends) until
/// the API logs a request matching `pred`, for at most `within`.
async fn report_until(
    reporter: &mut Reporter,
    api: &KubeApi,
    within: Duration,
    pred: impl Fn(&RequestRecord) -> bool,
) -> Option<RequestRecord> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        reporter.send(250, 200, false).await;
        if let Some(found) = api
            .wait_for_request(Duration::from_millis(250), &pred)
            .await
        {
            return Some(found);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_watches_again_after_its_watch_is_cut_and_acts_on_changes_made_meanwhile() {
    // Bookmarks every second: the watch ends only when cut.
    let api = api_with_one_target_using(
        Options {
            bookmark_interval: Duration::from_secs(1),
        },
        4,
    )
    .await;
    let dir = work_dir("watch-cut");
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "web").unwrap();
    let mut scaler = RunningScaler::start(&dir, &kubeconfig, "info", &[]);
    let client = http_client();
    wait_ready(&client, scaler.admin, Duration::from_secs(10)).await;
    let mut reporter = Reporter {
        client: client.clone(),
        url: scaler.reports_url(),
        seq: 0,
        time_ms: 10_000,
        total: 0,
    };

    // 800 rps against 100 per replica and a maximum of 4: capped at 4.
    reporter.send(0, 0, false).await;
    reporter.send(250, 200, true).await;
    let capped = report_until(&mut reporter, &api, Duration::from_secs(5), |r| {
        r.is_scale_write()
    })
    .await
    .expect("a scale PATCH for the load");
    assert_eq!(replicas(&capped), Some(4));
    let reads = surgescaler_reads(&api);
    assert_eq!(reads.len(), 2, "one list, one watch: {reads:?}");
    let open = api.open_watches();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].query, reads[1].query);

    // Cut 1: the connection breaks, and while no watch is open the maximum goes up to 8.
    assert_eq!(api.cut_watches(WatchCut::Abort), 1);
    let cut = Instant::now();
    let raised_rv = change_spec(&api, json!({"maxReplicas": 8}));
    let raised = report_until(&mut reporter, &api, Duration::from_secs(10), |r| {
        r.is_scale_write() && r.received > cut
    })
    .await
    .expect("no scale PATCH after the maximum was raised");
    assert_eq!(replicas(&raised), Some(8));
    let rewatch = surgescaler_reads(&api)[2].clone();
    println!(
        "abort: watched again {:?} after the cut, scaled to 8 {:?} after it",
        rewatch.received - cut,
        raised.received - cut
    );
    // It watched again from a resourceVersion before the change, which the watch delivered:
    // no second list.
    let resumed_from: u64 = query_value(&rewatch.query, "resourceVersion")
        .unwrap()
        .parse()
        .unwrap();
    assert!(resumed_from < raised_rv, "{} >= {raised_rv}", rewatch.query);
    assert!(rewatch.query.contains("watch=true"), "{}", rewatch.query);
    api.wait_for_request(Duration::from_secs(5), |r| {
        r.path.ends_with("/surgescalers/api/status")
            && r.body
                .as_deref()
                .is_some_and(|b| b.contains("\"observedGeneration\":2"))
    })
    .await
    .expect("a status write for generation 2");

    // Cut 2: the response ends cleanly (as a server-side timeout), and the maximum goes
    // down to 6 meanwhile: scaled down at once, to the new maximum.
    assert_eq!(api.open_watches().len(), 1);
    assert_eq!(api.cut_watches(WatchCut::Close), 1);
    let cut = Instant::now();
    let lowered_rv = change_spec(&api, json!({"maxReplicas": 6}));
    let lowered = report_until(&mut reporter, &api, Duration::from_secs(10), |r| {
        r.is_scale_write() && r.received > cut
    })
    .await
    .expect("no scale PATCH after the maximum was lowered");
    assert_eq!(replicas(&lowered), Some(6));
    let reads = surgescaler_reads(&api);
    let rewatch = reads[3].clone();
    println!(
        "close: watched again {:?} after the cut, scaled to 6 {:?} after it",
        rewatch.received - cut,
        lowered.received - cut
    );
    let resumed_from: u64 = query_value(&rewatch.query, "resourceVersion")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        resumed_from < lowered_rv,
        "{} >= {lowered_rv}",
        rewatch.query
    );
    api.wait_for_request(Duration::from_secs(5), |r| {
        r.path.ends_with("/surgescalers/api/status")
            && r.body
                .as_deref()
                .is_some_and(|b| b.contains("\"observedGeneration\":3"))
    })
    .await
    .expect("a status write for generation 3");

    // Cut 3: the open watch and the next three, each as soon as it starts; the maximum goes
    // up to 7 meanwhile. The fifth watch holds, and the change arrives.
    api.cut_next_watches(3, WatchCut::Abort);
    assert_eq!(api.cut_watches(WatchCut::Abort), 1);
    let cut = Instant::now();
    change_spec(&api, json!({"maxReplicas": 7}));
    let again = report_until(&mut reporter, &api, Duration::from_secs(10), |r| {
        r.is_scale_write() && r.received > cut
    })
    .await
    .expect("no scale PATCH after the maximum was raised again");
    assert_eq!(replicas(&again), Some(7));
    let reads = surgescaler_reads(&api);
    println!(
        "four cuts in a row: the fifth watch {:?} after the first cut, scaled to 7 {:?} after it",
        reads.last().unwrap().received - cut,
        again.received - cut
    );

    // Exactly: one list, then watches only, each a resume: the first, one after each of the
    // first two cuts, four after the third; one open now; the writes 4, 8, 6, 7.
    let kinds: Vec<bool> = reads
        .iter()
        .map(|r| r.query.contains("watch=true"))
        .collect();
    assert_eq!(
        kinds,
        [false, true, true, true, true, true, true, true],
        "{reads:?}"
    );
    assert!(
        reads[1..]
            .iter()
            .all(|r| query_value(&r.query, "resourceVersion").is_some()),
        "{reads:?}"
    );
    assert_eq!(api.open_watches().len(), 1);
    let all: Vec<Option<i64>> = scale_writes(&api).iter().map(replicas).collect();
    assert_eq!(all, [Some(4), Some(8), Some(6), Some(7)]);
    assert!(scaler.process.is_running(), "the scaler died");
    let metrics = scaler.metrics(&client).await;
    // kube's client reads a watch response that breaks off as its end, not as an error: no
    // watch error counted, no backoff before watching again.
    assert_eq!(api_errors_of(&metrics, "watch"), 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_surgescaler_watch_is_not_cut_by_the_client_read_timeout() {
    // A real API server sends watch bookmarks about once a minute.
    let api = api_with_one_target_using(
        Options {
            bookmark_interval: Duration::from_secs(60),
        },
        10,
    )
    .await;
    let dir = work_dir("quiet-watch");
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "web").unwrap();
    // The default --kube-timeout-ms, 5 s.
    let scaler = RunningScaler::start(&dir, &kubeconfig, "info", &[]);
    let client = http_client();
    wait_ready(&client, scaler.admin, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let reads = surgescaler_reads(&api);
    let metrics = scaler.metrics(&client).await;
    assert_eq!(
        reads.len(),
        2,
        "one list and one watch in 12 s of quiet; watch errors {}: {:?}",
        api_errors_of(&metrics, "watch"),
        reads.iter().map(|r| &r.query).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_namespaces_the_scaler_is_ready_only_once_every_namespace_is_listed() {
    // The scaler may list web but not jobs (no Role there yet): its web watch is up, but it
    // must not report ready, so a Service does not send it reports it would judge on half its
    // SurgeScalers. Once jobs answers, it turns ready without a restart.
    let api = api_with_one_target_using(Options::default(), 10).await;
    api.forbid_namespace("jobs", true);
    let dir = work_dir("readiness-namespaces");
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "web").unwrap();
    let scaler = RunningScaler::start(
        &dir,
        &kubeconfig,
        "info",
        &["--watch-namespaces", "web,jobs"],
    );
    let client = http_client();
    let listed = |ns: &'static str, status: u16| {
        move |r: &RequestRecord| {
            r.method == "GET"
                && r.path == format!("/apis/surge.dev/v1alpha1/namespaces/{ns}/surgescalers")
                && !r.query.contains("watch=true")
                && r.status == status
        }
    };
    api.wait_for_request(Duration::from_secs(10), listed("web", 200))
        .await
        .expect("the web list");
    api.wait_for_request(Duration::from_secs(10), listed("jobs", 403))
        .await
        .expect("the jobs list, refused");
    // web's watch is open; for 3 s of jobs refusing, never ready.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(
            !is_ready(&client, scaler.admin).await,
            "ready while the jobs namespace could not be listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refusals = api
        .requests()
        .iter()
        .filter(|r| listed("jobs", 403)(r))
        .count();
    api.forbid_namespace("jobs", false);
    let allowed = Instant::now();
    wait_ready(&client, scaler.admin, Duration::from_secs(40)).await;
    println!(
        "{refusals} refused lists of jobs, ready {:?} after they were allowed",
        allowed.elapsed()
    );
    assert!(
        api.requests().iter().any(|r| listed("jobs", 200)(r)),
        "ready without having listed jobs"
    );
}

// ---------------------------------------------------------------------------------------
// The Kubernetes API cut off by the kernel (nftables on the API's port).

/// What [`scale_through_an_api_fault`] saw.
struct ApiFaultRun {
    /// Packets the rules matched while the fault was on.
    counters: Counters,
    /// Failed API calls the scaler counted while the fault was on.
    errors_during: u64,
    /// From the fault's removal to the pending scale-up reaching the API.
    recovery: Duration,
    /// Every scale write of the run, in order: replicas asked for.
    writes: Vec<Option<i64>>,
}

/// A scaler at 8 replicas of 20 while 3000 rps is reported for 3 s with `inject` cutting the
/// API's port; then the fault goes and the reports go on until the scale-up is written.
async fn scale_through_an_api_fault(
    test: &str,
    inject: impl FnOnce(&NftTable, u16),
) -> ApiFaultRun {
    let api = api_with_one_target_using(Options::default(), 20).await;
    let dir = work_dir(test);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "web").unwrap();
    let (mut scaler, client, mut reporter) = scaler_woken_by_reports(&api, &dir, &kubeconfig).await;
    // Before the fault: 8 replicas written.
    reporter.calm_then_800_rps(&api).await;
    api.wait_for_request(Duration::from_secs(5), |r| {
        r.path.ends_with("/surgescalers/api/status")
            && r.body
                .as_deref()
                .is_some_and(|b| b.contains("\"desiredReplicas\":8"))
    })
    .await
    .expect("the status says 8");
    // Let the Event and status writes that follow the PATCH finish before the fault starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let table = NftTable::create().unwrap();
    let errors_before = api_errors(&scaler.metrics(&client).await);
    let before = api.requests().len();
    inject(&table, api.addr().port());
    for _ in 0..12 {
        reporter.send(250, 750, true).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during: Vec<String> = api.requests()[before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(during.is_empty(), "requests reached the API: {during:?}");
    assert_eq!(
        api.desired_replicas("web", "api").unwrap(),
        8,
        "the scale held"
    );
    assert!(scaler.process.is_running(), "the scaler died");
    let errors_during = api_errors(&scaler.metrics(&client).await) - errors_before;

    let counters = table.clear().unwrap();
    let fault_off = Instant::now();
    let written = report_until(&mut reporter, &api, Duration::from_secs(15), |r| {
        r.is_scale_write() && r.received > fault_off
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the pending scale-up was never written; scaler log:\n{}",
            scaler.log_text()
        )
    });
    assert!(scaler.process.is_running(), "the scaler died");
    let run = ApiFaultRun {
        counters,
        errors_during,
        recovery: written.received - fault_off,
        writes: scale_writes(&api).iter().map(replicas).collect(),
    };
    println!(
        "{test}: nft {:?}, {} API calls failed during the fault, scale-up written {:?} after \
         it went, writes {:?}",
        run.counters, run.errors_during, run.recovery, run.writes
    );
    // The scaler met the fault (its calls failed), held at 8 while it lasted (no write reached
    // the API), then wrote the capped scale-up and nothing else.
    assert!(run.errors_during >= 1, "{}", run.errors_during);
    assert_eq!(
        run.writes,
        [Some(8), Some(20)],
        "every write within [1, 20]"
    );
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_port_resetting_every_connection_holds_the_scale_and_the_scale_up_lands_after() {
    let run = scale_through_an_api_fault("nft-api-reset", |table, port| {
        table.reset_to(port).unwrap();
    })
    .await;
    // The fault was real; a refused call fails at once, so the next report's step writes.
    assert!(run.counters.reset > 0, "{:?}", run.counters);
    assert!(run.recovery < Duration::from_secs(5), "{:?}", run.recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_port_dropping_every_packet_holds_the_scale_and_the_scale_up_lands_after() {
    let run = scale_through_an_api_fault("nft-api-drop", |table, port| {
        table.drop_all(port).unwrap();
    })
    .await;
    // The fault was real; its calls hang until the scaler's 1 s timeout gives up on them.
    assert!(run.counters.dropped > 0, "{:?}", run.counters);
    // A connection whose packets were dropped is given up on by its timeout, and a SYN lost
    // just before the fault went is retransmitted after 1 s: recovery may take a few seconds.
    assert!(run.recovery < Duration::from_secs(10), "{:?}", run.recovery);
}

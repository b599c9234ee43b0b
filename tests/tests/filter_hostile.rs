//! The surge filter under hostile traffic in a real Envoy 1.40 (V8, 2 worker threads), over real
//! HTTP on loopback: thousands of distinct routes against a small `max_routes`, huge headers and
//! odd paths (compared with the same Envoy without the filter), and failures from every phase of
//! a request (upstream 5xx, upstream reset, upstream refused, clients resetting mid-request).
//!
//! Each test checks that no request fails because of the filter, that the VM never traps, that
//! the reported counters stay exact and bounded, and prints the numbers recorded in
//! `docs/benchmarks/hostile-filter.md`.
//!
//! Needs Envoy and the built filter (`make test` provides both; see `surge_sandbox::envoy`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use surge_e2e::capture::{Capture, Captured, unused_addr};
use surge_e2e::upstream::{self, Upstream};
use surge_sandbox::envoy::{Bootstrap, Envoy, EnvoyOptions, WasmFilter, locate_filter_wasm};
use surge_wire::RouteCounters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn work_dir(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("surge-e2e-hostile-{test}-{}", std::process::id()))
}

fn with_filter(bootstrap: Bootstrap, plugin_config: &Value) -> Bootstrap {
    let wasm = locate_filter_wasm().unwrap();
    bootstrap.filter(WasmFilter::surge(wasm, plugin_config))
}

async fn start(test: &str, bootstrap: Bootstrap) -> Envoy {
    let options = EnvoyOptions::new(work_dir(test)).unwrap();
    assert_eq!(options.concurrency, 2);
    // Envoy::start blocks while it waits for `/ready`; block_in_place keeps the runtime's other
    // tasks (the upstream, the capture server) running meanwhile.
    tokio::task::block_in_place(|| Envoy::start(&bootstrap, &options)).unwrap()
}

/// Bytes allocated by Envoy's heap (`/memory` `allocated`).
fn allocated_bytes(envoy: &Envoy) -> u64 {
    let body = envoy.admin_get("/memory").unwrap();
    let value: Value = serde_json::from_str(&body).unwrap();
    match &value["allocated"] {
        Value::String(s) => s.parse().unwrap(),
        other => other.as_u64().unwrap(),
    }
}

/// Stats the filter defines: `/stats` lines starting with `wasmcustom.surge.`, and
/// `/stats/prometheus` sample lines (not comments) starting with `surge_`.
fn filter_stat_counts(envoy: &Envoy) -> (usize, usize) {
    let stats = envoy.admin_get("/stats").unwrap();
    let plain = stats
        .lines()
        .filter(|l| l.starts_with("wasmcustom.surge."))
        .count();
    let prometheus = envoy
        .prometheus()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("surge_"))
        .count();
    (plain, prometheus)
}

/// Log lines that would show a VM trap, a panic, or a wasm error.
fn vm_trouble(envoy: &Envoy) -> Vec<String> {
    envoy
        .log()
        .lines()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            // ("trap" alone would match "bootstrap".)
            lower.contains("panicked")
                || lower.contains(" trap")
                || lower.contains("runtimeerror")
                || lower.contains("unreachable")
                || lower.contains("wasm vm failed")
                || (lower.contains("wasm")
                    && (lower.contains("[error]") || lower.contains("[critical]")))
        })
        .map(str::to_string)
        .collect()
}

fn by_route(report: &Captured) -> BTreeMap<String, RouteCounters> {
    report
        .report
        .routes
        .iter()
        .map(|r| (r.route.clone(), r.clone()))
        .collect()
}

fn total_requests(report: &Captured) -> u64 {
    report.report.routes.iter().map(|r| r.requests_total).sum()
}

/// Sends raw bytes on a fresh connection and returns the response status, or `None` when the
/// connection closed without a status line.
async fn raw_status(addr: SocketAddr, request: Vec<u8>) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    // Envoy may answer (431) and close before it has read everything; the answer still counts.
    let _ = stream.write_all(&request).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn get(path: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut out = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A small deterministic generator (xorshift), so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MAX_ROUTES: u64 = 8;
const ROUTE_COUNT: u64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_routes_are_capped_and_the_capped_ones_stay_exact() {
    let upstream = Upstream::start().await.unwrap();
    let capture = Capture::start().await.unwrap();
    let mut bootstrap = Bootstrap::new(upstream.addr(), capture.addr());
    for i in 0..ROUTE_COUNT {
        bootstrap = bootstrap.route(format!("r{i}"), format!("/r{i}/"));
    }
    let config = json!({"report_interval_ms": 200, "max_routes": MAX_ROUTES});
    let envoy = start("routes", with_filter(bootstrap, &config)).await;
    let addr = envoy.listener_addr();

    // The first MAX_ROUTES routes are seen first, one after the other, so they take the slots.
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..MAX_ROUTES {
        let n = 5 + i;
        let result = upstream::send(addr, &format!("/r{i}/x"), n, 1)
            .await
            .unwrap();
        assert_eq!(result.failed, 0);
        *sent.entry(format!("r{i}")).or_default() += n;
    }
    let warm: u64 = sent.values().sum();
    assert!(
        capture
            .wait_until(Duration::from_secs(3), |r| r
                .last()
                .is_some_and(|l| total_requests(l) == warm))
            .await
    );
    let stats_before = filter_stat_counts(&envoy);
    let memory_before = allocated_bytes(&envoy);

    // Then every other route, three rounds, interleaved with more traffic on the capped ones.
    let mut paths = Vec::new();
    for round in 0..3u64 {
        for i in MAX_ROUTES..ROUTE_COUNT {
            paths.push(format!("/r{i}/{round}"));
            if i % 100 == 0 {
                let capped = i / 100 % MAX_ROUTES;
                paths.push(format!("/r{capped}/again"));
                *sent.entry(format!("r{capped}")).or_default() += 1;
            }
        }
    }
    let others = 3 * (ROUTE_COUNT - MAX_ROUTES);
    let result = upstream::send_each(addr, &paths, 8).await.unwrap();
    assert_eq!(result.failed, 0);
    let total = paths.len() as u64 + warm;
    assert_eq!(upstream.requests(), total);

    assert!(
        capture
            .wait_until(Duration::from_secs(3), |r| r
                .last()
                .is_some_and(|l| total_requests(l) == total))
            .await,
        "last report total {:?}, sent {total}",
        capture.reports().last().map(total_requests)
    );
    let stats_after = filter_stat_counts(&envoy);
    let memory_after = allocated_bytes(&envoy);
    let reports = capture.reports();
    let max_keys = reports
        .iter()
        .map(|r| r.report.routes.len())
        .max()
        .unwrap_or(0);
    let last = by_route(reports.last().unwrap());
    eprintln!(
        "routes: {ROUTE_COUNT} distinct, {total} requests, max keys in a report {max_keys}, \
         other {:?}, filter stats /stats {} -> {}, prometheus {} -> {}, allocated {} -> {} bytes",
        last.get("other").map(|o| o.requests_total),
        stats_before.0,
        stats_after.0,
        stats_before.1,
        stats_after.1,
        memory_before,
        memory_after
    );

    assert!(max_keys as u64 <= MAX_ROUTES + 1, "{max_keys} keys");
    for (route, n) in &sent {
        let counters = last.get(route).unwrap_or_else(|| panic!("{route} missing"));
        assert_eq!(counters.requests_total, *n, "{route}");
        assert_eq!(counters.errors_total, 0);
        assert_eq!(counters.inflight, 0);
    }
    let other = last.get("other").expect("an other bucket");
    assert_eq!(other.requests_total, others);
    assert_eq!(other.inflight, 0);
    assert_eq!(last.len() as u64, MAX_ROUTES + 1);
    // Four metrics per key; only `other`'s may be new after the warm-up, whatever the number
    // of distinct routes seen since.
    assert!(
        stats_after.0 <= stats_before.0 + 4,
        "{stats_before:?} -> {stats_after:?}"
    );
    assert!(
        stats_after.0 <= (MAX_ROUTES as usize + 1) * 4 + 16,
        "{stats_after:?}"
    );
    // Generous: 16 MiB of growth for 6000 requests over 2000 routes.
    assert!(
        memory_after < memory_before + 16 * 1024 * 1024,
        "allocated {memory_before} -> {memory_after}"
    );
    assert!(vm_trouble(&envoy).is_empty(), "{:?}", vm_trouble(&envoy));
}

/// The hostile requests of [`huge_headers_and_odd_paths_get_the_answers_envoy_alone_gives`]:
/// within Envoy's limits (60 KiB of headers, 100 headers) and beyond them, long paths, and
/// random paths with any byte.
fn hostile_requests() -> Vec<(String, Vec<u8>)> {
    let mut cases = Vec::new();
    let big = |n: usize| "a".repeat(n);
    for kib in [1usize, 16, 32, 56, 61, 100] {
        cases.push((
            format!("one {kib} KiB header"),
            get("/checkout/h", &[("x-big".into(), big(kib * 1024))]),
        ));
    }
    for count in [50usize, 95, 101, 200] {
        let headers: Vec<(String, String)> =
            (0..count).map(|i| (format!("x-h{i}"), big(300))).collect();
        cases.push((
            format!("{count} headers of 300 B"),
            get("/checkout/n", &headers),
        ));
    }
    for kib in [2usize, 8, 50, 59, 70, 200] {
        let path = format!("/checkout/{}", big(kib * 1024));
        cases.push((format!("{kib} KiB path"), get(&path, &[])));
    }
    cases.push(("asterisk".into(), get("*", &[])));
    cases.push(("absolute form".into(), get("http://test/checkout/abs", &[])));
    cases.push(("no slash".into(), get("checkout", &[])));
    cases.push((
        "bad header name".into(),
        b"GET /checkout HTTP/1.1\r\nhost: t\r\nbad name: v\r\nconnection: close\r\n\r\n".to_vec(),
    ));
    cases.push((
        "high bytes in a header value".into(),
        [
            &b"GET /checkout HTTP/1.1\r\nhost: t\r\nx-v: "[..],
            &[0xff, 0xfe, 0x80][..],
            &b"\r\nconnection: close\r\n\r\n"[..],
        ]
        .concat(),
    ));
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    for i in 0..300 {
        let len = 1 + rng.below(if i % 10 == 0 { 4000 } else { 120 }) as usize;
        let mut path = vec![b'/'];
        for _ in 0..len {
            const SAFE: &[u8] =
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/";
            if i % 3 == 0 {
                // A third only holds characters every URL may hold.
                path.push(SAFE[rng.below(SAFE.len() as u64) as usize]);
                continue;
            }
            let byte = match rng.below(20) {
                // Mostly printable ASCII (what a URL may hold, and what it may not)...
                0..=15 => 0x21 + rng.below(0x5e) as u8,
                16 => b'/',
                17 => b'%',
                // ...and now and then any byte at all (space, controls, high bytes).
                _ => rng.below(256) as u8,
            };
            path.push(byte);
        }
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(&path);
        request.extend_from_slice(b" HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
        cases.push((format!("random path {i}"), request));
    }
    cases
}

fn stat_value(envoy: &Envoy, name: &str) -> i64 {
    envoy.stat(name).unwrap().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_and_odd_paths_get_the_answers_envoy_alone_gives() {
    let capture = Capture::start().await.unwrap();
    let upstream_plain = Upstream::start().await.unwrap();
    let upstream_surge = Upstream::start().await.unwrap();
    let config = json!({"report_interval_ms": 100});
    let plain = start(
        "odd-plain",
        Bootstrap::new(upstream_plain.addr(), capture.addr()).route("checkout", "/checkout"),
    )
    .await;
    let surge = start(
        "odd-surge",
        with_filter(
            Bootstrap::new(upstream_surge.addr(), capture.addr()).route("checkout", "/checkout"),
            &config,
        ),
    )
    .await;
    let memory_before = allocated_bytes(&surge);
    let plain_memory_before = allocated_bytes(&plain);

    let cases = hostile_requests();
    let mut differ = Vec::new();
    let mut statuses: BTreeMap<Option<u16>, u64> = BTreeMap::new();
    // Envoy holds a connection it answered with an error for a second before closing it
    // (delayed close), so the cases run 128 at a time.
    for batch in cases.chunks(128) {
        let mut tasks = Vec::new();
        for (name, request) in batch {
            let (plain_addr, surge_addr) = (plain.listener_addr(), surge.listener_addr());
            let (name, request) = (name.clone(), request.clone());
            tasks.push(tokio::spawn(async move {
                let (a, b) = tokio::join!(
                    raw_status(plain_addr, request.clone()),
                    raw_status(surge_addr, request)
                );
                (name, a, b)
            }));
        }
        for task in tasks {
            let (name, a, b) = task.await.unwrap();
            *statuses.entry(b).or_default() += 1;
            if a != b {
                differ.push(format!("{name}: without filter {a:?}, with filter {b:?}"));
            }
        }
    }
    let memory_after = allocated_bytes(&surge);
    let plain_memory_after = allocated_bytes(&plain);
    let served = upstream_surge.requests();
    assert_eq!(served, upstream_plain.requests());
    let rq_total = stat_value(&surge, "http.inbound_0.0.0.0_8080.downstream_rq_total");

    let settled = capture
        .wait_until(Duration::from_secs(3), |r| {
            r.last()
                .is_some_and(|l| total_requests(l) as i64 == rq_total)
        })
        .await;
    let last = capture.reports().last().cloned();
    eprintln!(
        "hostile requests: {} sent, statuses with filter {statuses:?}, served by upstream {served}, \
         downstream_rq_total {rq_total}, reported {:?}, allocated {memory_before} -> {memory_after} bytes \
         (without the filter {plain_memory_before} -> {plain_memory_after})",
        cases.len(),
        last.as_ref().map(|l| l
            .report
            .routes
            .iter()
            .map(|r| (
                r.route.clone(),
                r.requests_total,
                r.errors_total,
                r.inflight
            ))
            .collect::<Vec<_>>())
    );
    assert!(differ.is_empty(), "{differ:#?}");
    // Some hostile requests really went beyond Envoy's limits, and some went through.
    assert!(
        statuses.get(&Some(431)).copied().unwrap_or(0) >= 4,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&Some(400)).copied().unwrap_or(0) >= 1,
        "{statuses:?}"
    );
    assert!(served >= 100, "{served} served");
    assert!(
        settled,
        "reported total != Envoy's downstream_rq_total {rq_total}"
    );
    let last = last.unwrap();
    assert!(last.report.routes.iter().all(|r| r.inflight == 0));
    assert!(vm_trouble(&surge).is_empty(), "{:?}", vm_trouble(&surge));
    assert!(
        memory_after < memory_before + 16 * 1024 * 1024,
        "allocated {memory_before} -> {memory_after}"
    );
}

/// An upstream that reads a request and resets the connection without answering.
async fn resetting_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.set_zero_linger();
            });
        }
    });
    (addr, task)
}

fn routes_of(report: &Captured) -> Vec<(String, u64, u64, i64)> {
    report
        .report
        .routes
        .iter()
        .map(|r| {
            (
                r.route.clone(),
                r.requests_total,
                r.errors_total,
                r.inflight as i64,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_every_phase_are_counted_and_leave_nothing_in_flight() {
    let upstream = Upstream::start().await.unwrap();
    let capture = Capture::start().await.unwrap();
    let config = json!({"report_interval_ms": 100});
    let envoy = start(
        "phases",
        with_filter(
            Bootstrap::new(upstream.addr(), capture.addr())
                .route("cart", "/cart")
                .route("search", "/search")
                .route("checkout", "/checkout"),
            &config,
        ),
    )
    .await;
    let addr = envoy.listener_addr();

    // Upstream answers 500.
    let failing = upstream::send(addr, "/cart/fail", 20, 4).await.unwrap();
    assert_eq!(failing.failed, 20);
    // Clients that close (FIN for even ones, RST for odd ones) while the upstream holds
    // their request.
    let mut held = Vec::new();
    for i in 0..10 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /search/slow HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        if i % 2 == 1 {
            stream.set_zero_linger().unwrap();
        }
        held.push(stream);
    }
    // The requests are in flight (the upstream holds them 800 ms) when the clients go away.
    let in_flight_seen = capture
        .wait_until(Duration::from_millis(600), |r| {
            r.last()
                .is_some_and(|l| by_route(l).get("search").is_some_and(|s| s.inflight == 10))
        })
        .await;
    drop(held);
    // Clients that close in the middle of their request headers.
    for i in 0..10 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /checkout/partial HTTP/1.1\r\nhost: t\r\nx-half: ")
            .await
            .unwrap();
        if i % 2 == 1 {
            stream.set_zero_linger().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(stream);
    }
    // And normal traffic to check totals.
    assert_eq!(
        upstream::send(addr, "/checkout/ok", 30, 4)
            .await
            .unwrap()
            .failed,
        0
    );

    let rq_total = stat_value(&envoy, "http.inbound_0.0.0.0_8080.downstream_rq_total");
    let settled = capture
        .wait_until(Duration::from_secs(3), |r| {
            r.last().is_some_and(|l| {
                let routes = by_route(l);
                routes.get("cart").is_some_and(|c| c.requests_total == 20)
                    && routes.get("search").is_some_and(|s| s.requests_total == 10)
                    && routes
                        .get("checkout")
                        .is_some_and(|c| c.requests_total >= 30)
                    && routes.values().all(|r| r.inflight == 0)
            })
        })
        .await;
    // Several reports later, still nothing in flight and nothing changed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reports = capture.reports();
    let last = reports.last().unwrap();
    eprintln!(
        "phases: in flight seen {in_flight_seen}, downstream_rq_total {rq_total}, last report {:?}",
        routes_of(last)
    );
    assert!(
        in_flight_seen,
        "the held requests were never reported in flight"
    );
    assert!(settled, "{:?}", routes_of(last));
    let routes = by_route(last);
    assert!(
        routes.values().all(|r| r.inflight == 0),
        "{:?}",
        routes_of(last)
    );
    assert_eq!(routes["cart"].errors_total, 20);
    // A client gone before the answer leaves no response code: an error.
    assert_eq!(routes["search"].errors_total, 10);
    // Envoy counts the ten requests cut inside their headers in downstream_rq_total, but they
    // never got a route nor a filter chain, so the filter never sees them (nothing to count,
    // nothing left in flight).
    assert_eq!(total_requests(last), 60);
    assert_eq!(rq_total, 70);
    assert!(vm_trouble(&envoy).is_empty(), "{:?}", vm_trouble(&envoy));
    drop(envoy);

    // Upstream resets the connection, then an upstream that refuses it: Envoy's local 503s.
    let (reset_addr, reset_task) = resetting_upstream().await;
    for (test, upstream_addr) in [("reset", reset_addr), ("refused", unused_addr().unwrap())] {
        let envoy = start(
            test,
            with_filter(Bootstrap::new(upstream_addr, capture.addr()), &config),
        )
        .await;
        let before = capture.reports().len();
        let result = upstream::send(envoy.listener_addr(), "/any", 20, 4)
            .await
            .unwrap();
        assert_eq!(result.failed, 20, "{test}");
        let settled = capture
            .wait_until(Duration::from_secs(3), |r| {
                r.get(before..).and_then(|new| new.last()).is_some_and(|l| {
                    by_route(l).get("default").is_some_and(|d| {
                        d.requests_total == 20 && d.errors_total == 20 && d.inflight == 0
                    })
                })
            })
            .await;
        let last = capture.reports().last().cloned().unwrap();
        eprintln!("{test}: last report {:?}", routes_of(&last));
        assert!(settled, "{test}: {:?}", routes_of(&last));
        assert!(vm_trouble(&envoy).is_empty(), "{:?}", vm_trouble(&envoy));
    }
    reset_task.abort();
}

/// Writes `listener` as an LDS file at `path` atomically (Envoy watches for a rename).
fn write_lds(path: &std::path::Path, listener: &Value) {
    let body = json!({
        "version_info": listener["name"].to_string() + &listener.to_string().len().to_string(),
        "resources": [listener],
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The listener a [`Bootstrap`] renders, renamed and bound to `port`, with the
/// `type.googleapis.com` tag LDS needs.
fn lds_listener(bootstrap: &Bootstrap, port: u16) -> Value {
    let mut listener = bootstrap.to_json()["static_resources"]["listeners"][0].clone();
    listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    listener["name"] = json!("pushed");
    listener["address"]["socket_address"]["port_value"] = json!(port);
    listener
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_push_mid_request_leaves_nothing_in_flight() {
    config_push_mid_request("push", false, 1, true).await;
}

/// Pushes a new listener while six requests are held by the upstream: a new pluginConfig, and
/// with `new_vm` also a new VM configuration (an environment variable), so Envoy starts new
/// VMs rather than reusing the running ones.
///
/// `settles`: also require every request cut by the push to be counted and none left in flight.
async fn config_push_mid_request(test: &str, new_vm: bool, drain_s: u32, settles: bool) {
    let upstream = Upstream::start().await.unwrap();
    let capture = Capture::start().await.unwrap();
    let dir = work_dir(test);
    std::fs::create_dir_all(&dir).unwrap();
    let lds_path = dir.join("lds.json");
    let port = unused_addr().unwrap().port();
    let with_config = |config: Value| {
        with_filter(
            Bootstrap::new(upstream.addr(), capture.addr()).route("search", "/search"),
            &config,
        )
    };
    write_lds(
        &lds_path,
        &lds_listener(&with_config(json!({"report_interval_ms": 100})), port),
    );
    // The static listener carries no filter; the pushed one (LDS from a file) carries it.
    let mut options = EnvoyOptions::new(&dir).unwrap();
    options.extra_args = vec![
        "--config-yaml".into(),
        json!({"dynamic_resources": {"lds_config": {
            "path_config_source": {"path": lds_path.to_string_lossy()},
            "resource_api_version": "V3",
        }}})
        .to_string(),
        "--drain-time-s".into(),
        drain_s.to_string(),
    ];
    let bootstrap = Bootstrap::new(upstream.addr(), capture.addr());
    let envoy = tokio::task::block_in_place(|| Envoy::start(&bootstrap, &options)).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let updates = || stat_value(&envoy, "listener_manager.lds.update_success");
    for _ in 0..100 {
        if upstream::send(addr, "/search/warm", 1, 1)
            .await
            .is_ok_and(|r| r.ok == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm = upstream::send(addr, "/search/warm", 10, 2).await.unwrap();
    assert_eq!(warm.failed, 0);
    let updates_before = updates();
    let vm_stats = || -> BTreeMap<String, i64> {
        envoy
            .stats()
            .unwrap()
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with("wasm.envoy.wasm.runtime.v8.")
                    || name.contains("in_place_updated")
                    || name.contains("filter_chains_draining")
            })
            .collect()
    };
    let vms_before = vm_stats();

    // Six requests held 800 ms by the upstream; the config is pushed while they are in flight.
    let held = tokio::spawn(upstream::send(addr, "/search/slow", 6, 6));
    let in_flight_seen = capture
        .wait_until(Duration::from_millis(600), |r| {
            r.last()
                .is_some_and(|l| by_route(l).get("search").is_some_and(|s| s.inflight == 6))
        })
        .await;
    let mut pushed_bootstrap = with_config(json!({"report_interval_ms": 150, "max_routes": 32}));
    if new_vm && let Some(filter) = pushed_bootstrap.filter.as_mut() {
        filter.env.insert("SURGE_PUSH".into(), "2".into());
    }
    write_lds(&lds_path, &lds_listener(&pushed_bootstrap, port));
    for _ in 0..100 {
        if updates() > updates_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pushed = updates() > updates_before;
    let held = held.await.unwrap().unwrap();
    let after = upstream::send(addr, "/search/after", 20, 4).await.unwrap();
    let sent = 1 + 10 + 6 + 20;

    // Cut requests stay in flight until their VMs are found gone (10 s without a write).
    let settle_within = if drain_s == 0 && settles { 14 } else { 3 };
    let settled = capture
        .wait_until(Duration::from_secs(settle_within), |r| {
            r.last().is_some_and(|l| {
                by_route(l)
                    .get("search")
                    .is_some_and(|s| s.inflight == 0 && s.requests_total >= 20)
            })
        })
        .await;
    // The new plugin (150 ms interval) takes over reporting once the old filter chain has
    // drained and the old reporter's lease has expired.
    let taken_over = capture
        .wait_until(Duration::from_secs(5), |r| {
            // A handover gap (the old reporter's lease expiring), then at least four reports
            // 150 ms apart on average (checks every 100 ms: gaps of 100 and 200 ms alternate).
            let gaps: Vec<Duration> = r.windows(2).map(|w| w[1].at - w[0].at).collect();
            gaps.iter()
                .rposition(|g| *g >= Duration::from_millis(500))
                .map(|k| &gaps[k + 1..])
                .is_some_and(|after| {
                    after.len() >= 4 && {
                        let mean = after.iter().sum::<Duration>() / after.len() as u32;
                        (130..=170).contains(&mean.as_millis())
                    }
                })
        })
        .await;
    let last = capture.reports().last().cloned().unwrap();
    let vms_after = vm_stats();
    let gaps: Vec<u128> = capture
        .reports()
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    let history: Vec<(u64, String, Option<u64>)> = capture
        .reports()
        .iter()
        .map(|r| {
            let search = by_route(r).get("search").map(|s| s.requests_total);
            (r.report.seq, r.report.instance.clone(), search)
        })
        .collect();
    eprintln!("{test}: vm stats {vms_before:?} -> {vms_after:?}, report gaps ms {gaps:?}");
    eprintln!("{test}: (seq, instance, search requests) {history:?}");
    eprintln!(
        "{test}: lds updates {updates_before} -> {}, in flight seen {in_flight_seen}, held {held:?}, \
         after {after:?}, served {}, last report {:?}",
        updates(),
        upstream.requests(),
        routes_of(&last)
    );
    assert!(pushed, "Envoy did not take the pushed listener");
    // The wire contract: a new `instance` means the counters restarted from zero. Reports come in
    // runs of one instance each (never back to an earlier one), and within a run `seq` rises and
    // no counter goes down, so the scaler never sees an undercount.
    let reports = capture.reports();
    let mut runs: Vec<(String, Vec<(u64, u64)>)> = Vec::new();
    for r in &reports {
        let search = by_route(r).get("search").map_or(0, |s| s.requests_total);
        match runs.last_mut() {
            Some((instance, run)) if *instance == r.report.instance => {
                run.push((r.report.seq, search))
            }
            _ => {
                assert!(
                    runs.iter().all(|(i, _)| *i != r.report.instance),
                    "instance {} came back: {history:?}",
                    r.report.instance
                );
                runs.push((r.report.instance.clone(), vec![(r.report.seq, search)]));
            }
        }
    }
    for (instance, run) in &runs {
        for pair in run.windows(2) {
            assert!(
                pair[1].0 > pair[0].0 && pair[1].1 >= pair[0].1,
                "instance {instance}: (seq, search requests) went from {:?} to {:?}: {history:?}",
                pair[0],
                pair[1]
            );
        }
    }
    assert_eq!(vms_after["listener_manager.listener_in_place_updated"], 1);
    assert!(
        taken_over,
        "the new plugin never took over: report gaps {gaps:?}"
    );
    assert!(in_flight_seen);
    // With no drain time Envoy closes the held requests' connections itself (no filter
    // involved); otherwise they finish on the draining filter chain.
    if drain_s > 0 {
        assert_eq!(held.failed, 0);
    }
    assert_eq!(after.failed, 0);
    let search = &by_route(&last)["search"];
    assert!(vm_trouble(&envoy).is_empty(), "{:?}", vm_trouble(&envoy));
    if runs.len() == 1 && !settles {
        // No undercount: the counts from before the push and every request after it.
        assert!(
            search.requests_total >= 11 + after.ok,
            "last report {:?}: {history:?}",
            routes_of(&last)
        );
        return;
    }
    assert_eq!(search.inflight, 0);
    if runs.len() == 1 {
        // The stats outlived the push: one report stream that counts every request.
        assert!(
            settled,
            "last report {:?}, {sent} requests sent, {} of them reset by Envoy",
            routes_of(&last),
            held.failed
        );
        assert_eq!(search.requests_total, sent);
        assert_eq!(search.errors_total, held.failed);
    } else {
        // Only a push that replaces every VM with no overlap frees the stats; the new instance
        // then counts from zero: exactly the requests sent after the push.
        assert!(
            new_vm && drain_s == 0,
            "a new instance without a full VM replacement: {history:?}"
        );
        assert_eq!(runs.len(), 2, "{history:?}");
        assert_eq!(search.requests_total, after.ok, "{history:?}");
        assert_eq!(search.errors_total, 0, "{history:?}");
        // The old stream had counted the requests before the push.
        assert!(
            runs[0].1.last().is_some_and(|(_, n)| *n >= 11),
            "{history:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_replaces_the_vms_mid_request_leaves_nothing_in_flight() {
    config_push_mid_request("push-new-vm", true, 1, true).await;
}

/// Envoy frees the filter's stats with the last VM that defined them: every VM defines the
/// known route stats at start, so they outlive the old VMs; had they been freed, the filter
/// would start a new instance (counters from 0), never an undercount under the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_replaces_the_vms_without_drain_keeps_the_counters() {
    config_push_mid_request("push-drain0", true, 0, false).await;
}

/// The requests Envoy cuts when it destroys the old VMs mid-request (no drain) never reach
/// `on_log` in those VMs; the VMs' published in-flight counts outlive them, and once they are
/// found gone (filter/core/src/inflight.rs, 10 s) the cut requests are counted as errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_replaces_the_vms_without_drain_settles_the_cut_requests() {
    config_push_mid_request("push-drain0-settle", true, 0, true).await;
}

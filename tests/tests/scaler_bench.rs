//! Benchmarks of the scaler (not timed tests: they assert nothing about speed and are ignored
//! by default). They run the release `surge-scaler` pinned to core 0 against the sandbox's
//! embedded Kubernetes API, with the load generator `scaler/examples/ingest_load.rs` pinned to
//! core 1, and print what they measure. Commands and results: `docs/benchmarks/scaler.md`.
//!
//! ```text
//! cargo build --release -p surge-scaler --bin surge-scaler --example ingest_load --example ingest_floor --example patch_floor
//! taskset -c 1 cargo test --release -p surge-e2e --test scaler_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! The scalers log at `error` (their stderr is the test's); `SURGE_BENCH_LOG=info` shows their
//! decisions and Lease handovers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use surge_sandbox::kubeapi::{KubeApi, Options, resources};
use surge_sandbox::process::ChildGuard;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn release_binary(env: &str, relative: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(relative));
    assert!(
        path.exists(),
        "{} not found: run `cargo build --release -p surge-scaler --bin surge-scaler --example \
         ingest_load` (or set {env})",
        path.display()
    );
    path
}

/// A distinct suffix for each scaler's folder (two replicas run at once).
fn next_scaler() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

struct Scaler {
    /// Killed and reaped when dropped, and tied to this process by the sandbox's spawner.
    child: ChildGuard,
    ingest: SocketAddr,
    admin: SocketAddr,
    _dir: PathBuf,
}

impl Drop for Scaler {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

impl Scaler {
    /// CPU time (user + system) the scaler has used, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        ticks / 100.0
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// The embedded API with `targets` Deployments `app-<i>` (1 replica) and SurgeScalers for them.
async fn api_with_targets(targets: usize) -> KubeApi {
    let api = KubeApi::start(Options::default()).await.unwrap();
    let crd = std::fs::read_to_string(workspace().join("deploy/crds/surgescaler.yaml")).unwrap();
    api.register_crd(&crd).unwrap();
    for i in 0..targets {
        let name = format!("app-{i}");
        api.create_deployment("bench", &name, 1).unwrap();
        api.set_deployment_status("bench", &name, 1, 1).unwrap();
        api.store()
            .create(
                resources::SURGESCALERS,
                "bench",
                json!({
                    "apiVersion": "surge.dev/v1alpha1", "kind": "SurgeScaler",
                    "metadata": {"name": name, "namespace": "bench"},
                    "spec": {"scaleTargetRef": {"kind": "Deployment", "name": name},
                             "minReplicas": 1, "maxReplicas": 1000,
                             "metric": {"type": "rps", "target": 100}}
                }),
            )
            .unwrap();
    }
    api
}

async fn start_scaler(api: &KubeApi, client: &HttpClient) -> Scaler {
    start_scaler_with(api, client, &[]).await
}

/// The scaler with `extra` arguments (the sharing flags of a replica).
async fn start_scaler_with(api: &KubeApi, client: &HttpClient, extra: &[String]) -> Scaler {
    start_scaler_wrapped(api, client, extra, &[]).await
}

/// The scaler with `extra` arguments, run under `wrapper` (valgrind) when not empty.
async fn start_scaler_wrapped(
    api: &KubeApi,
    client: &HttpClient,
    extra: &[String],
    wrapper: &[String],
) -> Scaler {
    let bin = release_binary("SURGE_SCALER_BIN", "target/release/surge-scaler");
    let dir = std::env::temp_dir().join(format!(
        "surge-scaler-bench-{}-{}",
        std::process::id(),
        next_scaler()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "bench").unwrap();
    let (ingest, admin) = (free_addr(), free_addr());
    let mut command = Command::new("taskset");
    command
        .args(["-c", "0"])
        .args(wrapper)
        .arg(&bin)
        .args(["run", "--identity", "off"])
        // Each load run reports as new instances (the load generator names them by its start
        // time), so the runs of one benchmark add up past the default caps (20 000 instances
        // per namespace); the caps are not what is measured here.
        .args([
            "--max-instances",
            "200000",
            "--max-instances-per-namespace",
            "200000",
        ])
        .args([
            "--ingest-addr",
            &ingest.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .args(extra)
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("SURGE_BENCH_LOG").unwrap_or("error".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let scaler = Scaler {
        child: ChildGuard::spawn("surge-scaler", command).unwrap(),
        ingest,
        admin,
        _dir: dir,
    };
    let url = format!("http://{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(if wrapper.is_empty() { 20 } else { 120 });
    loop {
        let request = http::Request::get(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(1), client.request(request)).await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "scaler not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scaler
}

/// The body of `path` on `scaler`'s admin listener.
async fn admin_text(client: &HttpClient, scaler: &Scaler, path: &str) -> String {
    let request = http::Request::get(format!("http://{}{path}", scaler.admin))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Two replicas sharing `api`'s targets through Leases, as the chart runs them (4 s Leases,
/// 8 shards, each mirroring to the other with a peer token); the token's file, to remove.
async fn start_pair(api: &KubeApi, client: &HttpClient) -> (Vec<Scaler>, PathBuf) {
    let token = std::env::temp_dir().join(format!(
        "surge-peer-token-{}-{}",
        std::process::id(),
        next_scaler()
    ));
    std::fs::write(&token, "bench-peer-token").unwrap();
    let mut replicas = Vec::new();
    for id in ["replica-a", "replica-b"] {
        let peer = free_addr();
        let args: Vec<String> = [
            "--lease-namespace=bench".to_owned(),
            "--lease-group=bench".to_owned(),
            format!("--replica-id={id}"),
            format!("--peer-addr={peer}"),
            format!("--peer-url=http://{peer}"),
            format!("--peer-token-file={}", token.display()),
        ]
        .into();
        replicas.push(start_scaler_with(api, client, &args).await);
    }
    (replicas, token)
}

/// The ingest floor (`scaler/examples/ingest_floor.rs`: reads each report whole and drops it)
/// on core 0, optionally under `wrapper` (valgrind); its `admin` is its ingest address.
async fn start_floor(client: &HttpClient, wrapper: &[String]) -> Scaler {
    start_example(client, wrapper, "ingest_floor", &[]).await
}

/// `scaler/examples/<name>` on core 0 with its listen address and `args`, under `wrapper`.
async fn start_example(
    client: &HttpClient,
    wrapper: &[String],
    name: &str,
    args: &[String],
) -> Scaler {
    let bin = release_binary(
        &format!("SURGE_{}_BIN", name.to_uppercase()),
        &format!("target/release/examples/{name}"),
    );
    let ingest = free_addr();
    let mut command = Command::new("taskset");
    command
        .args(["-c", "0"])
        .args(wrapper)
        .arg(&bin)
        .arg(ingest.to_string())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let dir = std::env::temp_dir().join(format!(
        "surge-floor-bench-{}-{}",
        std::process::id(),
        next_scaler()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let floor = Scaler {
        child: ChildGuard::spawn(name, command).unwrap(),
        ingest,
        admin: ingest,
        _dir: dir,
    };
    let url = format!("http://{ingest}/v1/reports");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = http::Request::post(&url)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        // Any answer: it listens (the PATCH floor refuses a body without a workload).
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), client.request(request)).await
        {
            break;
        }
        assert!(Instant::now() < deadline, "{name} not up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    floor
}

/// Plays `instances` proxies against `scalers` (connections spread over them, as a Service
/// spreads them over its endpoints) from core 1; the load generator's JSON line.
fn load(
    scalers: &[&Scaler],
    instances: usize,
    routes: usize,
    seconds: f64,
    connections: usize,
) -> Value {
    let bin = release_binary(
        "SURGE_INGEST_LOAD_BIN",
        "target/release/examples/ingest_load",
    );
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin)
        .args(scalers.iter().flat_map(|s| {
            [
                "--url".to_owned(),
                format!("http://{}/v1/reports", s.ingest),
            ]
        }))
        .args([
            "--instances",
            &instances.to_string(),
            "--routes",
            &routes.to_string(),
        ])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--connections",
            &connections.to_string(),
        ])
        .args(["--workloads", "10", "--namespace", "bench"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: run explicitly, see docs/benchmarks/scaler.md"]
async fn bench_ingest_throughput_and_latency() {
    // Enough instances that each stays under the per-instance report limit (20/s) at the
    // rates measured.
    const INSTANCES: usize = 10_000;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let api = api_with_targets(10).await;
    let scaler = start_scaler(&api, &client).await;
    let floor = start_floor(&client, &[]).await;
    // Warm-up: every instance reports at least once.
    let _ = load(&[&scaler], INSTANCES, 4, 2.0, 32);
    let _ = load(&[&floor], INSTANCES, 4, 2.0, 32);
    let mut rates = Vec::new();
    let mut p99s = Vec::new();
    let mut per_cpu = Vec::new();
    let mut ratios = Vec::new();
    for run in 0..3 {
        // The floor right before each scaler run: the ratio of the pair is what compares
        // across runs and machines.
        let floor_cpu = floor.cpu_seconds();
        let floor_result = load(&[&floor], INSTANCES, 4, 10.0, 32);
        let floor_cpu = floor.cpu_seconds() - floor_cpu;
        let floor_per_cpu = floor_result["reports"].as_f64().unwrap() / floor_cpu.max(0.01);
        println!("floor run {run}: {floor_result}; CPU {floor_cpu:.2} s");
        let cpu_before = scaler.cpu_seconds();
        let result = load(&[&scaler], INSTANCES, 4, 10.0, 32);
        let cpu = scaler.cpu_seconds() - cpu_before;
        let reports = result["reports"].as_f64().unwrap();
        println!(
            "ingest run {run}: {result}; scaler CPU {cpu:.2} s = {:.0} reports per scaler CPU-second",
            reports / cpu.max(0.01)
        );
        rates.push(result["reports_per_s"].as_f64().unwrap());
        p99s.push(result["p99_us"].as_f64().unwrap());
        per_cpu.push(reports / cpu.max(0.01));
        ratios.push((reports / cpu.max(0.01)) / floor_per_cpu);
        assert_eq!(result["non_200"], 0);
    }
    println!(
        "ingest, reports per CPU-second, scaler / floor (paired per run): {:.2} (runs {:?})",
        median(ratios.clone()),
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>()
    );
    println!(
        "ingest median of 3: {:.0} reports/s, p99 {:.0} us, {:.0} reports per scaler CPU-second \
         ({INSTANCES} instances x 4 routes, 32 connections)",
        median(rates),
        median(p99s),
        median(per_cpu)
    );
    let text = admin_text(&client, &scaler, "/metrics").await;
    for line in text
        .lines()
        .filter(|l| l.starts_with("surge_ingest_reports_total"))
    {
        println!("{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: run explicitly, see docs/benchmarks/scaler.md"]
async fn bench_memory_per_tracked_pod_route() {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let api = api_with_targets(10).await;
    let scaler = start_scaler(&api, &client).await;
    // Settle the allocator with a small load first, so the baseline includes the runtime's
    // buffers and the per-target windows.
    let _ = load(&[&scaler], 100, 4, 1.0, 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = scaler.rss_kib();
    let (instances, routes) = (19_000usize, 4usize);
    let result = load(&[&scaler], instances, routes, 4.0, 32);
    assert_eq!(
        result["non_200"], 0,
        "every instance must be tracked: {result}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = scaler.rss_kib();
    let pairs = instances * routes;
    println!("memory load: {result}");
    println!(
        "RSS {before} KiB -> {after} KiB for {instances} instances x {routes} routes: {:.0} bytes per (pod, route)",
        (after.saturating_sub(before) * 1024) as f64 / pairs as f64
    );
}

fn surge_report(workload: &str, seq: u64, total: u64, surge: bool) -> Value {
    json!({
        "version": 1,
        "proxy": {"namespace": "bench", "workload": workload, "pod": format!("{workload}-0"),
                  "owner": format!("kubernetes://apis/apps/v1/namespaces/bench/deployments/{workload}"),
                  "role": "sidecar"},
        "instance": format!("{workload}-0/surge"),
        "seq": seq, "time_ms": 1_000_000 + seq * 100, "surge": surge,
        "routes": [{"route": "default", "cluster": "inbound|8080||", "requests_total": total,
                    "errors_total": 0, "duration_us_total": 0, "inflight": 0}]
    })
}

async fn post(client: &HttpClient, url: &str, body: &Value) {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: run explicitly, see docs/benchmarks/scaler.md"]
async fn bench_surge_report_to_scale_patch() {
    let targets = 100;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let api = api_with_targets(targets).await;
    let scaler = start_scaler(&api, &client).await;
    // The floor PATCHes on every report, against an API of its own.
    let floor_api = api_with_targets(targets).await;
    let floor = start_example(
        &client,
        &[],
        "patch_floor",
        &[floor_api.url(), "bench".to_owned()],
    )
    .await;
    let mut latencies = Vec::new();
    let mut floor_latencies = Vec::new();
    for i in 0..targets {
        let workload = format!("app-{i}");
        // Target by target, the scaler and then the floor: both measured in the same moments.
        for (to, api, into) in [
            (&scaler, &api, &mut latencies),
            (&floor, &floor_api, &mut floor_latencies),
        ] {
            let url = format!("http://{}/v1/reports", to.ingest);
            post(&client, &url, &surge_report(&workload, 1, 0, false)).await;
            post(&client, &url, &surge_report(&workload, 2, 5, false)).await;
            // Let the calm reports' decisions settle, then surge to 10x (100 requests in 100 ms).
            tokio::time::sleep(Duration::from_millis(20)).await;
            let path = format!("/apis/apps/v1/namespaces/bench/deployments/{workload}/scale");
            let sent = Instant::now();
            post(&client, &url, &surge_report(&workload, 3, 105, true)).await;
            let patch = api
                .wait_for_request(Duration::from_secs(5), |r| {
                    r.is_scale_write() && r.path == path && r.received >= sent
                })
                .await
                .expect("no scale patch");
            let ms = patch.received.saturating_duration_since(sent).as_secs_f64() * 1e3;
            if ms > 100.0 {
                println!("slow: {workload} at {}: {ms:.1} ms", to.ingest);
            }
            into.push(ms);
        }
    }
    for (what, values) in [("scaler", &latencies), ("floor", &floor_latencies)] {
        let (p50, p90, p99, max) = percentiles(values);
        println!(
            "surge report -> scale PATCH at the API over {} targets, {what}: p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
            values.len()
        );
    }
    println!(
        "surge report -> scale PATCH, scaler / floor: p50 {:.2}, p99 {:.2}",
        percentiles(&latencies).0 / percentiles(&floor_latencies).0,
        percentiles(&latencies).2 / percentiles(&floor_latencies).2
    );
}

/// The latency percentiles of `values` (ms): p50, p90, p99, max.
fn percentiles(values: &[f64]) -> (f64, f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| {
        sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
    };
    (at(50.0), at(90.0), at(99.0), sorted[sorted.len() - 1])
}

/// Two replicas sharing 400 targets through Leases on the embedded API, as the chart runs
/// them (4 s Leases, 8 shards, every report mirrored to the other). Each target's surge report
/// goes either to its owner (direct) or to the other replica, which mirrors it to the owner
/// (forwarded), alternating, so both are measured in the same run on the same machine state.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: run explicitly, see docs/benchmarks/scaler.md"]
async fn bench_forwarded_surge_report_to_scale_patch() {
    let targets = 400;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let api = api_with_targets(targets).await;
    let (replicas, token) = start_pair(&api, &client).await;
    // The split settles at 4 shards each once both are warm; then each /readyz lists the
    // targets its replica owns.
    let deadline = Instant::now() + Duration::from_secs(30);
    let owned: Vec<Vec<String>> = loop {
        let mut lists = Vec::new();
        for scaler in &replicas {
            lists.push(admin_text(&client, scaler, "/readyz").await);
        }
        let split = lists
            .iter()
            .all(|l| l.contains("shards [") && l.contains("] of 8"))
            && lists.iter().all(|l| {
                l.lines()
                    .find(|line| line.starts_with("replica "))
                    .and_then(|line| line.split_once('[')?.1.split_once(']'))
                    .is_some_and(|(held, _)| held.split_whitespace().count() == 4)
            });
        let listed: usize = lists
            .iter()
            .map(|l| l.lines().filter(|line| line.starts_with("bench/")).count())
            .sum();
        if split && listed == targets {
            break lists
                .iter()
                .map(|l| {
                    l.lines()
                        .filter_map(|line| line.strip_prefix("bench/"))
                        .map(str::to_owned)
                        .collect()
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not split the targets: {lists:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for i in 0..targets {
        let workload = format!("app-{i}");
        let owner = usize::from(!owned[0].contains(&workload));
        let forward = i % 2 == 0;
        let to = &replicas[if forward { 1 - owner } else { owner }];
        let url = format!("http://{}/v1/reports", to.ingest);
        // Each report 20 ms after the one before (a proxy's are 100 ms apart at the least).
        // Back to back, the mirror can coalesce a new instance's first reports while a POST is
        // in flight (it keeps the newest of each instance), and the owner then sees the surge
        // report as the instance's first, with no baseline: no rate, no wake-up, and the
        // write waits for the next tick (seen: 1 s outliers, with `--tick-ms 5000` a missed
        // write).
        post(&client, &url, &surge_report(&workload, 1, 0, false)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        post(&client, &url, &surge_report(&workload, 2, 5, false)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let path = format!("/apis/apps/v1/namespaces/bench/deployments/{workload}/scale");
        let sent = Instant::now();
        post(&client, &url, &surge_report(&workload, 3, 105, true)).await;
        let patch = api
            .wait_for_request(Duration::from_secs(5), |r| {
                r.is_scale_write() && r.path == path
            })
            .await
            .expect("no scale patch");
        let ms = patch.received.saturating_duration_since(sent).as_secs_f64() * 1e3;
        if forward {
            forwarded.push(ms);
        } else {
            direct.push(ms);
        }
    }
    let _ = std::fs::remove_file(&token);
    // Each scale write came from the target's owner: a replica's writes are the targets it owns.
    for (scaler, owns) in replicas.iter().zip(&owned) {
        let text = admin_text(&client, scaler, "/metrics").await;
        let written: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("surge_scale_patches_total{") && !l.ends_with(" 0"))
            .filter_map(|l| l.split("name=\"").nth(1)?.split('"').next())
            .collect();
        assert!(!written.is_empty(), "a replica wrote nothing");
        for name in written {
            assert!(
                owns.iter().any(|o| o == name),
                "a replica wrote for {name}, which it does not own"
            );
        }
    }
    for (what, values) in [
        ("direct (to the owner)", &direct),
        ("forwarded (to the other replica)", &forwarded),
    ] {
        let (p50, p90, p99, max) = percentiles(values);
        println!(
            "two replicas, surge report -> scale PATCH, {what}, {} targets: p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
            values.len()
        );
    }
    let ratio = percentiles(&forwarded).2 / percentiles(&direct).2;
    println!("forwarded / direct p99: {ratio:.2}");
}

/// The CPU cost of sharing: the same load (10,000 instances x 4 routes, 32 connections from
/// core 1) against one replica alone and against two replicas sharing the targets (each report
/// ingested where it lands and mirrored to the other), all scalers pinned to core 0, the two
/// set-ups alternating 3 times in one run. Reports per scaler CPU-second counts both replicas'
/// CPU; the ratio is the figure to compare across machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: run explicitly, see docs/benchmarks/scaler.md"]
async fn bench_two_replicas_ingest_throughput() {
    const INSTANCES: usize = 10_000;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let alone_api = api_with_targets(10).await;
    let alone = start_scaler(&alone_api, &client).await;
    let shared_api = api_with_targets(10).await;
    let (pair, token) = start_pair(&shared_api, &client).await;
    // Both members live and warm (one Lease duration), so that every report is mirrored.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = load(&[&alone], INSTANCES, 4, 2.0, 32);
    let _ = load(&[&pair[0], &pair[1]], INSTANCES, 4, 2.0, 32);
    let (mut alone_rates, mut alone_per_cpu, mut pair_rates, mut pair_per_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..3 {
        let cpu = alone.cpu_seconds();
        let result = load(&[&alone], INSTANCES, 4, 10.0, 32);
        let cpu = alone.cpu_seconds() - cpu;
        assert_eq!(result["non_200"], 0, "{result}");
        let reports = result["reports"].as_f64().unwrap();
        alone_rates.push(result["reports_per_s"].as_f64().unwrap());
        alone_per_cpu.push(reports / cpu.max(0.01));
        println!("run {run}, one replica: {result}; CPU {cpu:.2} s");

        let cpu: f64 = pair.iter().map(Scaler::cpu_seconds).sum();
        let result = load(&[&pair[0], &pair[1]], INSTANCES, 4, 10.0, 32);
        let cpu = pair.iter().map(Scaler::cpu_seconds).sum::<f64>() - cpu;
        assert_eq!(result["non_200"], 0, "{result}");
        let reports = result["reports"].as_f64().unwrap();
        pair_rates.push(result["reports_per_s"].as_f64().unwrap());
        pair_per_cpu.push(reports / cpu.max(0.01));
        println!("run {run}, two replicas: {result}; CPU of both {cpu:.2} s");
    }
    let _ = std::fs::remove_file(&token);
    // Every report reached the other replica too (mirrored, not dropped or failed).
    for scaler in &pair {
        for line in admin_text(&client, scaler, "/metrics")
            .await
            .lines()
            .filter(|l| l.starts_with("surge_mirrored_reports_total"))
        {
            println!("{} {line}", scaler.admin);
        }
    }
    let (a, b) = (median(alone_per_cpu), median(pair_per_cpu));
    println!(
        "ingest, median of 3: one replica {:.0} reports/s, {a:.0} reports per scaler CPU-second; \
         two replicas {:.0} reports/s, {b:.0} reports per CPU-second of both; two / one per CPU: {:.2}",
        median(alone_rates),
        median(pair_rates),
        b / a
    );
}

/// A report of instance `instance` as `ingest_load` sends them (4 routes, growing counters).
fn load_report(instance: usize, seq: u64) -> String {
    let workload = format!("app-{}", instance % 10);
    let routes: Vec<String> = (0..4u64)
        .map(|r| {
            let requests = seq * (10 + r);
            format!(
                r#"{{"route":"route-{r}","cluster":"inbound|8080||","requests_total":{requests},"errors_total":0,"duration_us_total":{},"inflight":{}}}"#,
                requests * 1500,
                r % 4
            )
        })
        .collect();
    format!(
        r#"{{"version":1,"proxy":{{"namespace":"bench","workload":"{workload}","pod":"{workload}-{instance}","owner":"kubernetes://apis/apps/v1/namespaces/bench/deployments/{workload}","role":"sidecar"}},"instance":"{workload}-{instance}/callgrind","seq":{seq},"time_ms":{},"surge":false,"routes":[{}]}}"#,
        1_000_000 + seq * 1000,
        routes.join(",")
    )
}

/// `callgrind_control` on `pid`: `-i on`, `-z`, `-d`.
fn callgrind_control(pid: u32, args: &[&str]) {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .expect("callgrind_control (Debian: valgrind)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Instructions per report of the process behind `target` under callgrind: `warm` reports,
/// instrumentation on, 200 more, counters zeroed, `counted` reports, dump; the dump's total
/// over `counted`. Reports go one at a time over one keep-alive connection, from 200
/// instances in turn (each under the per-instance rate limit), each with a higher `seq`.
async fn instructions_per_report(
    client: &HttpClient,
    target: &Scaler,
    out_file: &std::path::Path,
    warm: u64,
    counted: u64,
) -> f64 {
    let url = format!("http://{}/v1/reports", target.ingest);
    let mut n = 0u64;
    let mut send = async |count: u64| {
        for _ in 0..count {
            let body = load_report((n % 200) as usize, 1 + n / 200);
            n += 1;
            let request = http::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let _ = response.into_body().collect().await;
        }
    };
    send(warm).await;
    let pid = target.child.id();
    callgrind_control(pid, &["-i", "on"]);
    send(200).await;
    callgrind_control(pid, &["-z"]);
    send(counted).await;
    callgrind_control(pid, &["-d"]);
    // The dump is the newest file of this run: `<out>.<n>` (callgrind numbers each dump).
    let dir = out_file.parent().unwrap();
    let stem = out_file.file_name().unwrap().to_string_lossy().into_owned();
    let dump = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&stem))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .expect("a callgrind dump");
    let text = std::fs::read_to_string(dump.path()).unwrap();
    let total: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals: ")
                .or_else(|| l.strip_prefix("summary: "))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a total in the dump");
    total / counted as f64
}

/// Instructions per report under callgrind, the scaler against the floor (each in its own
/// process under valgrind, the same reports): counts that do not move with the neighbours'
/// load. Timer-driven work (the scaler's 1 s ticks) is paid per unit of wall time and weighs
/// more per report under valgrind's slowdown than at a native rate: read the figure as an
/// upper bound and the ratio as the comparable one.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: run explicitly, see docs/benchmarks/scaler.md"]
async fn bench_ingest_instructions_per_report() {
    const WARM: u64 = 2_000;
    const COUNTED: u64 = 3_000;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let out = workspace().join("target/bench/scaler-callgrind");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let wrapper = |name: &str| -> Vec<String> {
        vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            "--instr-atstart=no".into(),
            format!("--callgrind-out-file={}", out.join(name).display()),
        ]
    };
    let api = api_with_targets(10).await;
    let scaler = start_scaler_wrapped(&api, &client, &[], &wrapper("scaler.out")).await;
    let scaler_ir =
        instructions_per_report(&client, &scaler, &out.join("scaler.out"), WARM, COUNTED).await;
    drop(scaler);
    let floor = start_floor(&client, &wrapper("floor.out")).await;
    let floor_ir =
        instructions_per_report(&client, &floor, &out.join("floor.out"), WARM, COUNTED).await;
    drop(floor);
    println!(
        "instructions per report (callgrind, {COUNTED} reports counted after {WARM} + 200): \
         scaler {scaler_ir:.0}, floor {floor_ir:.0}, scaler / floor {:.2}, scaler - floor {:.0}",
        scaler_ir / floor_ir,
        scaler_ir - floor_ir
    );
}

//! Benchmarks of the scaler (not timed tests: they assert nothing about speed and are ignored
//! by default). They run the release `surge-scaler` pinned to core 0 against the sandbox's
//! embedded Kubernetes API, with the load generator `scaler/examples/ingest_load.rs` pinned to
//! core 1, and print what they measure. Commands and results: `docs/benchmarks/scaler.md`.
//!
//! ```text
//! cargo build --release -p surge-scaler --bin surge-scaler --example ingest_load
//! taskset -c 1 cargo test --release -p surge-e2e --test scaler_bench -- --ignored --nocapture --test-threads 1
//! ```

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
    let bin = release_binary("SURGE_SCALER_BIN", "target/release/surge-scaler");
    let dir = std::env::temp_dir().join(format!("surge-scaler-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "bench").unwrap();
    let (ingest, admin) = (free_addr(), free_addr());
    let mut command = Command::new("taskset");
    command
        .args(["-c", "0"])
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
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let scaler = Scaler {
        child: ChildGuard::spawn("surge-scaler", command).unwrap(),
        ingest,
        admin,
        _dir: dir,
    };
    let url = format!("http://{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
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

fn load(
    scaler: &Scaler,
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
        .args(["--url", &format!("http://{}/v1/reports", scaler.ingest)])
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
    // Warm-up: every instance reports at least once.
    let _ = load(&scaler, INSTANCES, 4, 2.0, 32);
    let mut rates = Vec::new();
    let mut p99s = Vec::new();
    let mut per_cpu = Vec::new();
    for run in 0..3 {
        let cpu_before = scaler.cpu_seconds();
        let result = load(&scaler, INSTANCES, 4, 10.0, 32);
        let cpu = scaler.cpu_seconds() - cpu_before;
        let reports = result["reports"].as_f64().unwrap();
        println!(
            "ingest run {run}: {result}; scaler CPU {cpu:.2} s = {:.0} reports per scaler CPU-second",
            reports / cpu.max(0.01)
        );
        rates.push(result["reports_per_s"].as_f64().unwrap());
        p99s.push(result["p99_us"].as_f64().unwrap());
        per_cpu.push(reports / cpu.max(0.01));
        assert_eq!(result["non_200"], 0);
    }
    println!(
        "ingest median of 3: {:.0} reports/s, p99 {:.0} us, {:.0} reports per scaler CPU-second \
         ({INSTANCES} instances x 4 routes, 32 connections)",
        median(rates),
        median(p99s),
        median(per_cpu)
    );
    let request = http::Request::get(format!("http://{}/metrics", scaler.admin))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = client
        .request(request)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
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
    let _ = load(&scaler, 100, 4, 1.0, 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = scaler.rss_kib();
    let (instances, routes) = (19_000usize, 4usize);
    let result = load(&scaler, instances, routes, 4.0, 32);
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
    let url = format!("http://{}/v1/reports", scaler.ingest);
    let mut latencies = Vec::new();
    for i in 0..targets {
        let workload = format!("app-{i}");
        post(&client, &url, &surge_report(&workload, 1, 0, false)).await;
        post(&client, &url, &surge_report(&workload, 2, 5, false)).await;
        // Let the calm reports' decisions settle, then surge to 10x (100 requests in 100 ms).
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
        latencies.push(patch.received.saturating_duration_since(sent).as_secs_f64() * 1e3);
    }
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| {
        sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
    };
    println!(
        "surge report -> scale PATCH at the API over {} targets: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sorted.len(),
        at(50.0),
        at(90.0),
        at(99.0),
        sorted[sorted.len() - 1]
    );
}

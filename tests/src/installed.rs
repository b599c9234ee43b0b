//! Surge installed on the real control plane, for end-to-end tests: Kubernetes 1.35 built by
//! `make tools`, the chart installed with helm (report token `e2e-token`), the sandbox's node
//! running the chart's scaler pod (and any pause-image pods a test creates), and the API
//! server's audit log to check what the scaler did.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::{Value, json};
use surge_sandbox::envoy::{locate_envoy, locate_filter_wasm};
use surge_sandbox::kubeapi::RequestRecord;
use surge_sandbox::real::RealKube;
use surge_sandbox::scenario::{DEFAULT_SCENARIO, Scenario};

use crate::scaler::{HttpClient, request, workspace};

/// The report token the tests install the chart with.
pub const TOKEN: &str = "e2e-token";

/// The folder of a test's control plane and pods.
pub fn dir(test: &str) -> PathBuf {
    let dir = workspace().join("target/e2e/kube").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Starts the control plane, creates `namespaces` (a Role can only be installed into a
/// namespace that exists), installs the chart with `helm_set` on top of the test token (and
/// `replicaCount=1` unless `helm_set` sets it),
/// registers the node and waits until the scaler pod is ready. Panics with the reason when any
/// step fails, so that no test passes without a real cluster.
pub async fn install(test: &str, namespaces: &[&str], helm_set: &[&str]) -> RealKube {
    let dir = dir(test);
    let mut kube = RealKube::start(&dir, false)
        .await
        .unwrap_or_else(|e| panic!("the control plane did not start: {e}"));
    for namespace in namespaces {
        kubectl_ok(&kube, &["create", "namespace", namespace], None);
    }
    let mut set = vec![format!("token.value={TOKEN}")];
    // One scaler replica unless the test asks for more: these tests read one replica's metrics
    // and count its writes (the chart's default of two is `kube_ha.rs`'s subject). It still
    // takes its targets through Leases, as the chart always runs it.
    if !helm_set.iter().any(|s| s.starts_with("replicaCount=")) {
        set.push("replicaCount=1".to_owned());
    }
    set.extend(helm_set.iter().map(|s| (*s).to_owned()));
    kube.install_chart(&set)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::parse(DEFAULT_SCENARIO).expect("the built-in scenario parses");
    // App pods (Envoy + filter) report to the discard port unless a test runs the sandbox.
    let report_to = SocketAddr::from(([127, 0, 0, 1], 9));
    kube.start_node(
        &scenario,
        dir.join("pods"),
        report_to,
        locate_envoy().expect("Envoy is installed (make tools)"),
        locate_filter_wasm().expect("the filter is built (make wasm)"),
    )
    .await
    .unwrap_or_else(|e| panic!("the node did not start: {e}"));
    kube.wait_scaler_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    kube
}

/// Runs `kubectl ARGS` with the administrator's kubeconfig (`stdin` piped in when given).
pub fn kubectl(kube: &RealKube, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut command = kube
        .plane()
        .kubectl()
        .expect("kubectl is built (make tools)");
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("kubectl runs");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("kubectl reads its input");
    }
    child.wait_with_output().expect("kubectl ends")
}

/// `kubectl ARGS`, which must succeed; its standard output.
pub fn kubectl_ok(kube: &RealKube, args: &[&str], stdin: Option<&str>) -> String {
    let output = kubectl(kube, args, stdin);
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `kubectl apply -f -` of `yaml` (server-side apply, as a GitOps tool would).
pub fn apply(kube: &RealKube, yaml: &str) {
    kubectl_ok(
        kube,
        &["apply", "--server-side", "--field-manager=e2e", "-f", "-"],
        Some(yaml),
    );
}

/// A Namespace, and in it a Deployment of `replicas` pause pods labelled `app=<name>`.
pub fn pause_deployment(namespace: &str, name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - {{name: main, image: {image}}}
",
        image = surge_sandbox::node::containers::PAUSE_IMAGE
    )
}

/// Waits until Deployment `namespace/name` has `ready` ready replicas; panics after `within`.
pub async fn wait_ready_replicas(
    kube: &RealKube,
    namespace: &str,
    name: &str,
    ready: i32,
    within: Duration,
) {
    let deployments: Api<Deployment> = Api::namespaced(kube.client(), namespace);
    let deadline = Instant::now() + within;
    loop {
        let now = deployments
            .get(name)
            .await
            .ok()
            .and_then(|d| d.status?.ready_replicas)
            .unwrap_or(0);
        if now == ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{namespace}/{name}: {now} ready replicas, not {ready}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sidecar's report for workload `namespace/workload` (pod `pod`): `requests_total` requests
/// in all on route `default`.
pub fn report(
    namespace: &str,
    workload: &str,
    pod: &str,
    seq: u64,
    time_ms: u64,
    requests_total: u64,
    surge: bool,
) -> Value {
    json!({
        "version": 1,
        "proxy": {"namespace": namespace, "workload": workload, "pod": pod,
                  "owner": format!("kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/{workload}"),
                  "role": "sidecar"},
        "instance": format!("{pod}/e2e"),
        "seq": seq,
        "time_ms": time_ms,
        "surge": surge,
        "routes": [{"route": "default", "cluster": "inbound|8080||",
                    "requests_total": requests_total, "errors_total": 0,
                    "duration_us_total": requests_total * 2_000, "inflight": 3}]
    })
}

/// Posts `body` to the scaler pod's ingest with the chart's token; the HTTP status.
pub async fn post_report(kube: &RealKube, client: &HttpClient, body: &Value) -> u16 {
    let ingest = kube
        .scaler_ingest()
        .expect("the scaler pod has a ready endpoint");
    let url = format!("http://{ingest}{}", surge_wire::REPORTS_PATH);
    request(client, "POST", &url, TOKEN, Some(body))
        .await
        .status
}

/// The scaler's writes of `namespace/name`'s scale so far, as the API server audited them.
pub fn scale_writes(kube: &RealKube, namespace: &str, name: &str) -> Vec<RequestRecord> {
    let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale");
    kube.requests()
        .into_iter()
        .filter(|r| r.is_scale_write() && r.path == path)
        .collect()
}

/// `spec.replicas` in a scale write's body.
pub fn replicas(record: &RequestRecord) -> Option<i64> {
    let body: Value = serde_json::from_str(record.body.as_deref()?).ok()?;
    body.pointer("/spec/replicas").and_then(Value::as_i64)
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

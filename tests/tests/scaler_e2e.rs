//! The real `surge-scaler` binary, reports over real HTTP, and the sandbox's embedded Kubernetes
//! API on loopback: a surge report must reach a PATCH of the Deployment's scale subresource at
//! once (ingest-driven, not on a tick), and SIGTERM must stop the scaler cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use surge_e2e::scaler::{
    Answer, api_with_one_target, free_addr, http_client, request, scaler_bin, wait_ready,
};
use surge_sandbox::kubeapi::resources;
use surge_sandbox::process::ChildGuard;

fn report(seq: u64, time_ms: u64, requests_total: u64, surge: bool) -> Value {
    json!({
        "version": 1,
        "proxy": {"namespace": "web", "workload": "api", "pod": "api-7d9f-abcde",
                  "owner": "kubernetes://apis/apps/v1/namespaces/web/deployments/api",
                  "role": "sidecar"},
        "instance": "api-7d9f-abcde/e2e",
        "seq": seq,
        "time_ms": time_ms,
        "surge": surge,
        "routes": [{"route": "default", "cluster": "inbound|8080||",
                    "requests_total": requests_total, "errors_total": 0,
                    "duration_us_total": requests_total * 2_000, "inflight": 3}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_report_reaches_a_scale_patch_at_once_and_sigterm_stops_cleanly() {
    let bin = scaler_bin();
    let api = api_with_one_target().await;

    let dir = std::env::temp_dir().join(format!("surge-scaler-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "web").unwrap();
    let (ingest, admin) = (free_addr(), free_addr());
    let child = Command::new(&bin)
        .args(["run", "--identity", "off", "--token", "e2e-token"])
        .args([
            "--ingest-addr",
            &ingest.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        // A one-minute tick: any PATCH within the bound below was driven by the report.
        .args(["--tick-ms", "60000"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut scaler = ChildGuard::from_child("surge-scaler", child);

    let client = http_client();
    wait_ready(&client, admin, Duration::from_secs(10)).await;

    let url = format!("http://{ingest}{}", surge_wire::REPORTS_PATH);
    // Calm: 50 rps for one second, half a replica's worth. No scale change.
    let Answer { status, body, .. } = request(
        &client,
        "POST",
        &url,
        "e2e-token",
        Some(&report(1, 10_000, 0, false)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let Answer { status, body, .. } = request(
        &client,
        "POST",
        &url,
        "e2e-token",
        Some(&report(2, 11_000, 50, false)),
    )
    .await;
    assert_eq!(
        (status, body.contains("\"accepted\"")),
        (200, true),
        "{body}"
    );
    // A wrong token is refused with a JSON error naming the field.
    let bad = client
        .request(
            http::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    serde_json::to_vec(&report(3, 11_050, 55, false)).unwrap(),
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !api.requests().iter().any(|r| r.is_scale_write()),
        "no scale write expected under calm load"
    );

    // The Deployment as the scaler read it: its write must be valid only at this version.
    let read_version = api
        .store()
        .get(resources::DEPLOYMENTS, "web", "api")
        .unwrap()["metadata"]["resourceVersion"]
        .clone();
    // Surge: 80 requests in the next 100 ms (800 rps), sent early with surge: true.
    let sent = Instant::now();
    let Answer { status, body, .. } = request(
        &client,
        "POST",
        &url,
        "e2e-token",
        Some(&report(3, 11_100, 130, true)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let patch = api
        .wait_for_request(Duration::from_secs(3), |r| r.is_scale_write())
        .await
        .expect("no PATCH of the scale subresource within 3 s of the surge report");
    let latency = patch.received.saturating_duration_since(sent);
    println!("surge report -> scale PATCH at the API: {latency:?}");
    assert_eq!(patch.method, "PATCH");
    assert_eq!(
        patch.path,
        "/apis/apps/v1/namespaces/web/deployments/api/scale"
    );
    assert_eq!(patch.field_manager.as_deref(), Some("surge-scaler"));
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let patched: Value = serde_json::from_str(patch.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        patched,
        json!({"metadata": {"resourceVersion": read_version}, "spec": {"replicas": 8}})
    );
    // The precondition held: the version was the current one.
    assert_eq!(patch.status, 200);
    // Acted on the burst estimate at once, not after a 6 s panic average or a tick.
    assert!(latency < Duration::from_secs(2), "took {latency:?}");
    assert_eq!(api.desired_replicas("web", "api").unwrap(), 8);
    // Only the scale subresource was written, never the Deployment itself.
    assert!(!api.requests().iter().any(|r| {
        (r.method == "PATCH" || r.method == "PUT")
            && r.path == "/apis/apps/v1/namespaces/web/deployments/api"
    }));

    let event = api
        .wait_for_request(Duration::from_secs(3), |r| {
            r.method == "POST"
                && r.path.ends_with("/events")
                && r.body
                    .as_deref()
                    .is_some_and(|b| b.contains("SuccessfulRescale"))
        })
        .await;
    assert!(event.is_some(), "no SuccessfulRescale event");
    let status_write = api
        .wait_for_request(Duration::from_secs(3), |r| {
            r.path.ends_with("/surgescalers/api/status")
                && r.body
                    .as_deref()
                    .is_some_and(|b| b.contains("\"desiredReplicas\":8"))
        })
        .await;
    assert!(
        status_write.is_some(),
        "no status write with desiredReplicas 8"
    );

    let metrics = request(&client, "GET", &format!("http://{admin}/metrics"), "", None)
        .await
        .body;
    assert!(
        metrics.contains(
            "surge_scale_patches_total{namespace=\"web\",name=\"api\",direction=\"up\"} 1"
        ),
        "{metrics}"
    );

    // SIGTERM: the scaler stops on its own, with success.
    let pid = scaler.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(status) = scaler.try_status().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the scaler ignored SIGTERM for 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

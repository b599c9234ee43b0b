//! The real `surge-scaler` binary under a hostile sender, over real HTTP, against the sandbox's
//! embedded Kubernetes API: one pod flooding reports is throttled (429 with Retry-After) and
//! cannot move its target beyond its real traffic; and the report token never reaches the
//! scaler's logs, even at `RUST_LOG=trace`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use surge_e2e::scaler::{
    Answer, api_with_one_target, free_addr, http_client, request, scaler_bin, wait_ready,
};
use surge_sandbox::process::ChildGuard;

/// Distinctive, so that a match in the logs can only be the token.
const TOKEN: &str = "hostile-e2e-token-5d41402abc4b2a76";

fn report(seq: u64, time_ms: u64, requests_total: u64) -> Value {
    json!({
        "version": 1,
        "proxy": {"namespace": "web", "workload": "api", "pod": "api-7d9f-abcde",
                  "owner": "kubernetes://apis/apps/v1/namespaces/web/deployments/api",
                  "role": "sidecar"},
        "instance": "0123456789abcdef",
        "seq": seq,
        "time_ms": time_ms,
        "surge": true,
        "routes": [{"route": "default", "cluster": "inbound|8080||",
                    "requests_total": requests_total, "errors_total": 0,
                    "duration_us_total": requests_total * 2_000, "inflight": 0}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_pod_is_throttled_and_the_token_never_reaches_the_logs() {
    let bin = scaler_bin();
    let api = api_with_one_target().await;

    let dir = std::env::temp_dir().join(format!("surge-scaler-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "web").unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let log_path = dir.join("scaler.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (ingest, admin) = (free_addr(), free_addr());
    let mut command = Command::new(&bin);
    command
        .args(["run", "--identity", "off", "--log-format", "json"])
        .arg("--token-file")
        .arg(&token_file)
        .args([
            "--ingest-addr",
            &ingest.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        // Everything, including the HTTP stack's and the Kubernetes client's own logs.
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let mut scaler = ChildGuard::spawn("surge-scaler", command).unwrap();

    let client = http_client();
    wait_ready(&client, admin, Duration::from_secs(10)).await;

    let url = format!("http://{ingest}{}", surge_wire::REPORTS_PATH);
    // A wrong token: refused, and a near-miss of the real one must not be echoed either.
    let Answer { status, body, .. } =
        request(&client, "POST", &url, "wrong", Some(&report(1, 0, 0))).await;
    assert_eq!(status, 401, "{body}");

    // The flood: 200 reports back to back from one instance, every one flagged as a surge,
    // whose counters grow as the real traffic does: 50 requests per second, half a replica.
    let started = Instant::now();
    let (mut accepted, mut throttled) = (0u64, 0u64);
    for seq in 1..=200u64 {
        let elapsed = started.elapsed().as_millis() as u64;
        let Answer {
            status,
            retry_after,
            body,
        } = request(
            &client,
            "POST",
            &url,
            TOKEN,
            Some(&report(seq, 10_000 + elapsed, elapsed * 50 / 1000)),
        )
        .await;
        match status {
            200 => accepted += 1,
            429 => {
                throttled += 1;
                assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
                assert!(body.contains("\"field\":\"instance\""), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let flood_ms = started.elapsed().as_millis() as u64;
    println!("flood: {accepted} accepted, {throttled} throttled in {flood_ms} ms");
    // 5 back to back, then one per 50 ms (the defaults).
    assert!(accepted >= 5, "{accepted}");
    assert!(
        accepted <= 5 + flood_ms / 50 + 1,
        "{accepted} in {flood_ms} ms"
    );
    assert_eq!(accepted + throttled, 200);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !api.requests().iter().any(|r| r.is_scale_write()),
        "a flood of 50 rps must not scale a 100 rps-per-replica target"
    );
    let metrics = request(&client, "GET", &format!("http://{admin}/metrics"), "", None)
        .await
        .body;
    assert!(
        metrics.contains(&format!(
            "surge_ingest_reports_total{{outcome=\"throttled\"}} {throttled}"
        )),
        "{metrics}"
    );

    // Stop it and read everything it logged.
    let pid = scaler.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while scaler.try_status().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the scaler ignored SIGTERM for 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("surge-scaler starting"),
        "the log capture works: {} bytes",
        logs.len()
    );
    // The refusals were logged (the place a presented credential would most likely leak).
    assert!(logs.contains("report refused"), "no refusal logged");
    assert!(
        !logs.contains(TOKEN),
        "the token appears in the scaler's logs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! Scale to zero and back on the real control plane (Kubernetes 1.35 built by `make tools`),
//! the scaler installed by the chart and running as its pod, judged by the API server's audit
//! log: a SurgeScaler with `minReplicas: 0` goes to zero only after its idle period of fresh
//! zero reports (never while reports are missing or stale), its destination is then listed cold
//! in every answer, an activation report scales it 0 -> N at once, and the destination stays
//! cold until the pods are Ready, the EndpointSlice has a ready endpoint and the warm delay
//! has passed.
//!
//! ```text
//!  test: sidecar reports of app (zero)  --POST-->  scaler pod --PATCH .../scale 0--> apiserver
//!  test: client report, held 3          --POST-->  scaler pod --PATCH .../scale 3--> apiserver
//!        answers {"cold": [...]}        <--200---  scaler pod <--EndpointSlices (watch)-- controllers
//! ```

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;
use surge_e2e::installed::{
    apply, eventually, install, kubectl, kubectl_ok, pause_deployment, replicas, scale_writes,
    wait_ready_replicas,
};
use surge_e2e::scaler::{HttpClient, http_client, request};
use surge_e2e::zero_proxy::{APP, Proxy, cold, service, surgescaler};
use surge_sandbox::real::RealKube;

/// The destination of Service `spare` (its SurgeScaler names no port: read from the Service).
const SPARE: &str = "outbound|9090||spare.web.svc.cluster.local";
const IDLE_SECONDS: u64 = 10;
/// The chart's default `scaler.warmDelayMs`.
const WARM_DELAY: Duration = Duration::from_millis(500);

/// `app`'s sidecar reports once a second for `seconds`; no scale write may happen meanwhile.
async fn report_quiet(kube: &RealKube, client: &HttpClient, proxy: &mut Proxy, seconds: u64) {
    for _ in 0..seconds {
        let (status, answer) = proxy.send(kube, client, 0).await;
        assert_eq!(status, 200, "{answer}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn surgescaler_status(kube: &RealKube, name: &str) -> Value {
    let resource = kube::api::ApiResource {
        group: "surge.dev".into(),
        version: "v1alpha1".into(),
        api_version: "surge.dev/v1alpha1".into(),
        kind: "SurgeScaler".into(),
        plural: "surgescalers".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(kube.client(), "web", &resource);
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()["status"].clone()
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {status}"))
}

/// Ready endpoints in `app`'s EndpointSlices, as the API server has them now.
async fn ready_endpoints(kube: &RealKube) -> usize {
    let slices: Api<EndpointSlice> = Api::namespaced(kube.client(), "web");
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=app"))
        .await
        .unwrap();
    list.items
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .count()
}

fn events(kube: &RealKube, reason: &str) -> Vec<Value> {
    let field = format!("reason={reason}");
    let text = kubectl_ok(
        kube,
        &[
            "get",
            "events",
            "-n",
            "web",
            "--field-selector",
            &field,
            "-o",
            "json",
        ],
        None,
    );
    let list: Value = serde_json::from_str(&text).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_target_goes_to_zero_only_on_fresh_zero_reports_and_held_requests_bring_it_back() {
    let kube = install("scale_to_zero", &[], &[]).await;
    apply(&kube, &pause_deployment("web", "app", 1));
    apply(&kube, &service("app", 8080));
    apply(&kube, &service("spare", 9090));

    // The CRD's rules: each half of scale to zero without the other is refused, and says why.
    for (spec, message) in [
        (
            surgescaler("app", "", 0),
            "minReplicas 0 needs spec.scaleToZero",
        ),
        (
            surgescaler("app", "  scaleToZero: {service: app}\n", 1),
            "spec.scaleToZero needs minReplicas: 0",
        ),
        (
            surgescaler("app", "  scaleToZero: {service: app, idleSeconds: 5}\n", 0),
            "spec.scaleToZero.idleSeconds",
        ),
    ] {
        let refused = kubectl(&kube, &["apply", "--server-side", "-f", "-"], Some(&spec));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "accepted:\n{spec}");
        assert!(stderr.contains(message), "{message:?} not in: {stderr}");
    }

    apply(
        &kube,
        &surgescaler(
            "app",
            &format!("  scaleToZero: {{idleSeconds: {IDLE_SECONDS}, service: app, port: 8080}}\n"),
            0,
        ),
    );
    // A second target already at zero whose SurgeScaler names no port: the Service's is used.
    apply(&kube, &pause_deployment("web", "spare", 0));
    apply(
        &kube,
        &surgescaler("spare", "  scaleToZero: {service: spare}\n", 0),
    );
    wait_ready_replicas(&kube, "web", "app", 1, Duration::from_secs(30)).await;
    let stored = kubectl_ok(
        &kube,
        &[
            "get",
            "surge",
            "app",
            "-n",
            "web",
            "-o",
            "jsonpath={.spec.scaleToZero}",
        ],
        None,
    );
    assert!(stored.contains("\"idleSeconds\":10"), "{stored}");
    let client = http_client();

    // No reports at all, for longer than the idle period: the scale is held.
    tokio::time::sleep(Duration::from_secs(IDLE_SECONDS + 2)).await;
    assert!(
        scale_writes(&kube, "web", "app").is_empty(),
        "went down without reports"
    );

    // Zero reports for 7 s, silence for 6 s (the source is late: stale, not idle), zero
    // reports again for 7 s: 20 s since the first quiet report, never 10 s of fresh ones.
    let mut app = Proxy::app_sidecar();
    report_quiet(&kube, &client, &mut app, 7).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let fresh_again = Instant::now();
    report_quiet(&kube, &client, &mut app, 7).await;
    assert!(
        scale_writes(&kube, "web", "app").is_empty(),
        "went down on reports that were stale in between"
    );

    // Keep reporting zero: down to 0 once 10 s of fresh zero reports have been seen.
    let to_zero = loop {
        let (status, sent) = app.send(&kube, &client, 0).await;
        assert_eq!(status, 200, "{sent}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(write) = scale_writes(&kube, "web", "app")
            .into_iter()
            .find(|w| w.status == 200)
        {
            break write;
        }
        assert!(
            fresh_again.elapsed() < Duration::from_secs(IDLE_SECONDS + 8),
            "not at zero after {:?} of fresh zero reports",
            fresh_again.elapsed()
        );
    };
    let idle = to_zero.received.saturating_duration_since(fresh_again);
    println!("fresh zero reports again -> scale write to zero: {idle:?}");
    assert_eq!(replicas(&to_zero), Some(0), "{:?}", to_zero.body);
    assert!(
        idle >= Duration::from_secs(IDLE_SECONDS),
        "to zero after {idle:?} of fresh zero reports"
    );
    assert_eq!(to_zero.field_manager.as_deref(), Some("surge-scaler"));

    // Status, condition, Event; `kubectl get surge` shows 0.
    let status = eventually("status at zero", Duration::from_secs(10), || async {
        let status = surgescaler_status(&kube, "app").await;
        (status["currentReplicas"] == 0 && status["scaleToZero"]["cold"] == true).then_some(status)
    })
    .await;
    let active = condition(&status, "Active");
    assert_eq!(
        (active["status"].as_str(), active["reason"].as_str()),
        (Some("False"), Some("ScaledToZero")),
        "{status}"
    );
    assert!(
        status["scaleToZero"]["lastScaleToZeroTime"].is_string(),
        "{status}"
    );
    let scaled = events(&kube, "ScaledToZero");
    assert_eq!(scaled.len(), 1, "{scaled:?}");
    let note = scaled[0]["message"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("New size: 0; reason: no requests reported by 1 source for 1"),
        "{note}"
    );
    let table = kubectl_ok(&kube, &["get", "surge", "app", "-n", "web"], None);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..6], ["app", "app", "0", "5", "0", "0"], "{table}");
    wait_ready_replicas(&kube, "web", "app", 0, Duration::from_secs(30)).await;

    // At zero: every answer lists the destination cold (and spare's, named by its Service).
    let mut caller = Proxy::client_sidecar();
    let (status, answer) = caller.send(&kube, &client, 0).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(cold(&answer), [APP, SPARE], "{answer}");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The caller holds 3 requests: 0 -> 3 at once (one concurrent request per replica).
    let sent = Instant::now();
    let (status, answer) = caller.send(&kube, &client, 3).await;
    assert_eq!(status, 200, "{answer}");
    assert!(cold(&answer).contains(&APP.to_owned()), "{answer}");
    let from_zero = eventually(
        "the scale write from zero",
        Duration::from_secs(5),
        || async {
            scale_writes(&kube, "web", "app")
                .into_iter()
                .find(|w| w.status == 200 && replicas(w) != Some(0))
        },
    )
    .await;
    let reaction = from_zero.received.saturating_duration_since(sent);
    println!("activation report -> scale write from zero: {reaction:?}");
    assert_eq!(replicas(&from_zero), Some(3), "{:?}", from_zero.body);
    assert!(reaction < Duration::from_secs(1), "{reaction:?}");

    // The filter reports every 100 ms while it holds: still 3 held, never counted twice. The
    // answers list the destination until an endpoint is ready (and the warm delay passed); an
    // answer to a holding report waits for that (at most 250 ms), so the endpoints are watched
    // beside the reports rather than between them.
    let first_ready = async {
        loop {
            if ready_endpoints(&kube).await > 0 {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let first_warm = async {
        loop {
            let (status, answer) = caller.send(&kube, &client, 3).await;
            assert_eq!(status, 200, "{answer}");
            let now = Instant::now();
            if !cold(&answer).contains(&APP.to_owned()) {
                return now;
            }
            assert!(
                now.duration_since(sent) < Duration::from_secs(30),
                "still cold 30 s after the activation"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (ready_at, warm_at) = tokio::join!(first_ready, first_warm);
    println!(
        "activation -> first ready endpoint {:?}; -> answer without the destination {:?}",
        ready_at.duration_since(sent),
        warm_at.duration_since(sent)
    );
    let warm_after = warm_at.saturating_duration_since(ready_at);
    // Not before the warm delay, less how much later this test's look sees the slice than the
    // scaler's watch: it lists every 20 ms, and a list is a consistent read that waits for the
    // API server's watch cache to catch up with etcd (measured: the watch about 150 ms ahead; 100 ms more of margin).
    assert!(
        warm_after + Duration::from_millis(250) >= WARM_DELAY,
        "warm {warm_after:?} after the endpoint was ready"
    );
    // ... and the waiting answer goes out when it has passed, not a report later.
    assert!(
        warm_after < WARM_DELAY + Duration::from_millis(300),
        "warm {warm_after:?} after the endpoint was ready"
    );
    assert!(ready_endpoints(&kube).await > 0);
    // The warm delay, less the ~100 ms between this test's look at the slices and its report.
    assert!(
        warm_at.duration_since(ready_at) + Duration::from_millis(150) >= WARM_DELAY,
        "warm {:?} after the endpoint was ready",
        warm_at.duration_since(ready_at)
    );
    // The proxy released its requests: its next report holds none.
    let (status, answer) = caller.send(&kube, &client, 0).await;
    assert_eq!((status, cold(&answer)), (200, vec![SPARE.to_owned()]));
    let writes: Vec<Option<i64>> = scale_writes(&kube, "web", "app")
        .iter()
        .filter(|w| w.status == 200)
        .map(replicas)
        .collect();
    assert_eq!(writes, [Some(0), Some(3)], "one write each way");

    let status = eventually("status warm again", Duration::from_secs(10), || async {
        let status = surgescaler_status(&kube, "app").await;
        (status["scaleToZero"]["cold"] == false && status["currentReplicas"] == 3).then_some(status)
    })
    .await;
    assert!(
        status["scaleToZero"]["lastActivationTime"].is_string(),
        "{status}"
    );
    let activated = events(&kube, "ScaledFromZero");
    assert_eq!(activated.len(), 1, "{activated:?}");
    assert_eq!(
        activated[0]["message"],
        "New size: 3; reason: 3 requests held by 1 proxy for the cold destination"
    );
    let metrics = {
        let admin = kube.scaler_admin().expect("the scaler's admin endpoint");
        request(&client, "GET", &format!("http://{admin}/metrics"), "", None)
            .await
            .body
    };
    for expected in [
        "surge_scale_to_zero_total{namespace=\"web\",name=\"app\"} 1",
        "surge_activations_total{namespace=\"web\",name=\"app\"} 1",
        "surge_cold_targets 1",
    ] {
        assert!(metrics.contains(expected), "{expected} not in\n{metrics}");
    }

    // Every call the scaler made, the chart's RBAC allowed: the Service read, the EndpointSlice
    // list and watch (the watch only a real API server serves), the writes.
    let requests = kube.requests();
    let refused: Vec<String> = requests
        .iter()
        .filter(|r| r.status == 401 || r.status == 403)
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let slices = "/apis/discovery.k8s.io/v1/namespaces/web/endpointslices";
    let watched = requests.iter().any(|r| {
        r.method == "GET" && r.path == slices && r.query.contains("watch=true") && r.status == 200
    });
    assert!(watched, "no EndpointSlice watch in the audit log");
    let service_read = requests
        .iter()
        .any(|r| r.method == "GET" && r.path == "/api/v1/namespaces/web/services/spare");
    assert!(service_read, "spare's Service was not read");
}

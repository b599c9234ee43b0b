//! The scaler on the real control plane (Kubernetes 1.35, etcd, the controller-manager and the
//! scheduler, built by `make tools`), installed by `helm install` of the chart and running as
//! the chart's pod under its ServiceAccount, so that every call it makes is authenticated and
//! authorized by the chart's own RBAC. The API server's audit log says what it did.
//!
//! ```text
//!  test --reports--> scaler pod (the sandbox's node runs it) --PATCH .../scale--> kube-apiserver
//!                                                                    |  Deployment, ReplicaSet
//!  kubectl get/describe, audit log  <--------------------------------'  controllers, scheduler,
//!                                                                       node: pause pods Ready
//! ```

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject};
use serde_json::Value;
use surge_e2e::installed::{
    apply, eventually, install, kubectl_ok, pause_deployment, post_report, replicas, report,
    scale_writes, wait_ready_replicas,
};
use surge_e2e::scaler::{HttpClient, http_client};
use surge_sandbox::real::RealKube;

fn surgescalers(kube: &RealKube, namespace: &str) -> Api<DynamicObject> {
    let resource = kube::api::ApiResource {
        group: "surge.dev".into(),
        version: "v1alpha1".into(),
        api_version: "surge.dev/v1alpha1".into(),
        kind: "SurgeScaler".into(),
        plural: "surgescalers".into(),
    };
    Api::namespaced_with(kube.client(), namespace, &resource)
}

/// The SurgeScaler `namespace/name`, as the API server has it.
async fn surgescaler(kube: &RealKube, namespace: &str, name: &str) -> Value {
    let object = surgescalers(kube, namespace).get(name).await.unwrap();
    serde_json::to_value(object).unwrap()
}

fn condition<'a>(scaler: &'a Value, kind: &str) -> Option<&'a Value> {
    scaler["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// A SurgeScaler that names only what has no default: the API server fills in the rest.
fn minimal_surgescaler(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: surge.dev/v1alpha1
kind: SurgeScaler
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  scaleTargetRef: {{kind: Deployment, name: {name}}}
  maxReplicas: 10
  metric: {{type: rps, target: 100}}
"
    )
}

/// Calm reports (50 rps, half a replica's worth), then a surge report (800 rps over 100 ms).
async fn calm_then_surge(kube: &RealKube, namespace: &str, name: &str, pod: &str) {
    let client = http_client();
    for (seq, time_ms, total, surge) in [
        (1, 10_000, 0, false),
        (2, 11_000, 50, false),
        (3, 11_100, 130, true),
    ] {
        let status = post_report(
            kube,
            &client,
            &report(namespace, name, pod, seq, time_ms, total, surge),
        )
        .await;
        assert_eq!(status, 200, "report {seq} refused");
        if !surge {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installed_scaler_scales_a_real_deployment_and_kubectl_shows_its_work() {
    let kube = install("life_cycle", &[], &[]).await;
    apply(&kube, &pause_deployment("web", "api", 1));
    apply(&kube, &minimal_surgescaler("web", "api"));
    wait_ready_replicas(&kube, "web", "api", 1, Duration::from_secs(30)).await;

    // The CRD's defaults, applied by the API server (structural schema defaulting).
    let stored = surgescaler(&kube, "web", "api").await;
    let spec = &stored["spec"];
    assert_eq!(spec["minReplicas"], 1, "{spec}");
    assert_eq!(spec["panicThreshold"], 2.0, "{spec}");
    assert_eq!(spec["scaleTargetRef"]["apiVersion"], "apps/v1", "{spec}");
    assert_eq!(
        spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 300,
        "{spec}"
    );

    calm_then_surge(&kube, "web", "api", "api-7d9f-abcde").await;
    let write = eventually(
        "a scale write of web/api",
        Duration::from_secs(5),
        || async { scale_writes(&kube, "web", "api").into_iter().next() },
    )
    .await;
    assert_eq!(write.status, 200);
    assert_eq!(write.field_manager.as_deref(), Some("surge-scaler"));
    assert_eq!(replicas(&write), Some(8));
    // The real Deployment and ReplicaSet controllers make the pods, the real scheduler binds
    // them to the node, the node reports them Ready.
    wait_ready_replicas(&kube, "web", "api", 8, Duration::from_secs(30)).await;

    let status = eventually(
        "status with 8 current replicas",
        Duration::from_secs(15),
        || async {
            let scaler = surgescaler(&kube, "web", "api").await;
            (scaler["status"]["currentReplicas"] == 8).then_some(scaler)
        },
    )
    .await;
    assert_eq!(status["status"]["desiredReplicas"], 8, "{status}");
    assert_eq!(
        condition(&status, "Ready").unwrap()["status"],
        "True",
        "{status}"
    );

    // kubectl: the short name, the printer columns, the Events.
    let table = kubectl_ok(&kube, &["get", "surge", "-n", "web", "-o", "wide"], None);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "TARGET", "MIN", "MAX", "CURRENT", "DESIRED", "METRIC", "PANIC", "OWNER", "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..6], ["api", "api", "1", "10", "8", "8"], "{table}");
    // The owner: the one replica, holding every shard Lease.
    let scaler_pod = {
        let endpoints = kube.scaler_endpoints();
        let endpoints = endpoints.read().unwrap_or_else(|e| e.into_inner());
        endpoints.first().map(|e| e.pod.clone()).unwrap()
    };
    assert_eq!(row[8], scaler_pod, "{table}");
    let described = kubectl_ok(
        &kube,
        &["describe", "surgescaler", "api", "-n", "web"],
        None,
    );
    assert!(
        described.contains("SuccessfulRescale") && described.contains("New size: 8"),
        "{described}"
    );
    let events = kubectl_ok(
        &kube,
        &[
            "get",
            "events",
            "-n",
            "web",
            "--field-selector",
            "reason=SuccessfulRescale",
        ],
        None,
    );
    assert!(events.contains("surgescaler/api"), "{events}");

    // Everything the scaler asked, the chart's RBAC allowed: no 401 or 403 in the audit log.
    let refused: Vec<String> = kube
        .requests()
        .iter()
        .filter(|r| r.status == 401 || r.status == 403)
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    // Only the scale subresource was written, never the Deployment itself.
    let deployment_writes: Vec<String> = kube
        .requests()
        .iter()
        .filter(|r| {
            r.method != "GET" && r.path.contains("/deployments/") && !r.path.ends_with("/scale")
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(deployment_writes.is_empty(), "{deployment_writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_driven_by_a_real_hpa_is_refused_with_a_condition_and_an_event() {
    let kube = install("hpa_conflict", &[], &[]).await;
    apply(&kube, &pause_deployment("shop", "legacy", 1));
    apply(
        &kube,
        "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: legacy, namespace: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: legacy}
  minReplicas: 1
  maxReplicas: 5
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}
",
    );
    apply(&kube, &minimal_surgescaler("shop", "legacy"));
    let refused = eventually(
        "ConflictingAutoscaler in the status",
        Duration::from_secs(15),
        || async {
            let scaler = surgescaler(&kube, "shop", "legacy").await;
            let ready = condition(&scaler, "Ready")?.clone();
            (ready["reason"] == "ConflictingAutoscaler").then_some(ready)
        },
    )
    .await;
    assert_eq!(refused["status"], "False");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("HorizontalPodAutoscaler legacy"),
        "{refused}"
    );
    let events = kubectl_ok(
        &kube,
        &[
            "get",
            "events",
            "-n",
            "shop",
            "--field-selector",
            "reason=ConflictingAutoscaler",
        ],
        None,
    );
    assert!(events.contains("surgescaler/legacy"), "{events}");

    // A surge for the refused target writes nothing: the HPA owns its scale.
    calm_then_surge(&kube, "shop", "legacy", "legacy-5c4d-fghij").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(scale_writes(&kube, "shop", "legacy").is_empty());
    let deployments: Api<Deployment> = Api::namespaced(kube.client(), "shop");
    let replicas = deployments
        .get("legacy")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas;
    assert_eq!(replicas, Some(1));
}

/// One proxy's reports, a second apart, each `rate` requests more than the last.
#[derive(Default)]
struct PacedProxy {
    seq: u64,
    total: u64,
}

impl PacedProxy {
    async fn send(&mut self, kube: &RealKube, client: &HttpClient, rate: u64, surge: bool) -> u16 {
        self.seq += 1;
        self.total += rate;
        let time_ms = 10_000 + self.seq * 1_000;
        let body = report("web", "api", "api-1", self.seq, time_ms, self.total, surge);
        let status = post_report(kube, client, &body).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        status
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_killed_mid_burst_holds_the_scale_and_the_pending_scale_up_lands_once_back()
{
    let mut kube = install("apiserver_restart", &[], &[]).await;
    apply(&kube, &pause_deployment("web", "api", 2));
    apply(&kube, &minimal_surgescaler("web", "api"));
    wait_ready_replicas(&kube, "web", "api", 2, Duration::from_secs(30)).await;
    let client = http_client();
    // Steady: 150 rps for three seconds, what two replicas of 100 rps want. (The scaler times
    // reports by their arrival, so they are sent at the pace they describe.)
    let mut proxy = PacedProxy::default();
    for _ in 0..4 {
        assert_eq!(proxy.send(&kube, &client, 150, false).await, 200);
    }
    assert!(
        scale_writes(&kube, "web", "api").is_empty(),
        "steady load moved the scale"
    );
    let admin = kube.scaler_admin().expect("the scaler's admin endpoint");

    kube.plane_mut().kill_apiserver();
    // The burst arrives while the API server is gone: 900 rps. The scaler keeps taking reports,
    // decides the scale-up and tries to write it.
    for surge in [false, true, false] {
        let status = proxy.send(&kube, &client, 900, surge).await;
        assert_eq!(
            status, 200,
            "the scaler stopped taking reports without its API server"
        );
    }
    let metrics =
        surge_e2e::scaler::request(&client, "GET", &format!("http://{admin}/metrics"), "", None)
            .await
            .body;
    let failed_writes: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("surge_kube_api_errors_total{") && l.contains("operation=\"patch_scale\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        failed_writes >= 1.0,
        "no scale write was attempted while the API server was down:\n{metrics}"
    );

    // Back, and no report after it: the scale-up the scaler still holds lands on its own.
    let restarted = std::time::Instant::now();
    kube.plane_mut().restart_apiserver().await.unwrap();
    let write = eventually(
        "the pending scale-up, with no report after the restart",
        Duration::from_secs(8),
        || async {
            scale_writes(&kube, "web", "api")
                .into_iter()
                .find(|w| (200..300).contains(&w.status))
        },
    )
    .await;
    let after = write.received.saturating_duration_since(restarted);
    println!(
        "API server back -> pending scale write {after:?}: {:?}",
        write.body
    );
    assert!(
        after < Duration::from_secs(5),
        "the pending scale-up waited {after:?}"
    );
    assert!(replicas(&write).unwrap() > 2, "{:?}", write.body);
    // Never a scale-down: each accepted write at least the one before.
    let all: Vec<i64> = scale_writes(&kube, "web", "api")
        .iter()
        .filter(|w| (200..300).contains(&w.status))
        .filter_map(replicas)
        .collect();
    assert!(all.windows(2).all(|w| w[1] >= w[0]), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_namespaces_the_chart_confines_the_scaler_to_them_and_rbac_agrees() {
    let kube = install(
        "watch_namespaces",
        &["web"],
        &["scaler.watchNamespaces={web}"],
    )
    .await;
    for namespace in ["web", "elsewhere"] {
        apply(&kube, &pause_deployment(namespace, "api", 1));
        apply(&kube, &minimal_surgescaler(namespace, "api"));
        wait_ready_replicas(&kube, namespace, "api", 1, Duration::from_secs(30)).await;
    }
    // No ClusterRole: the chart's Role is in web only, and the API server enforces it.
    let can = |verb: &str, resource: &str, namespace: &str| {
        let user = "--as=system:serviceaccount:surge-system:surge-scaler";
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let sub = format!("--subresource={sub}");
        let output = surge_e2e::installed::kubectl(
            &kube,
            &["auth", "can-i", verb, resource, &sub, "-n", namespace, user],
            None,
        );
        String::from_utf8_lossy(&output.stdout).trim() == "yes"
    };
    assert!(can("patch", "deployments.apps/scale", "web"));
    assert!(can("list", "surgescalers.surge.dev", "web"));
    assert!(!can("patch", "deployments.apps/scale", "elsewhere"));
    assert!(!can("list", "surgescalers.surge.dev", "elsewhere"));

    calm_then_surge(&kube, "web", "api", "api-1").await;
    calm_then_surge(&kube, "elsewhere", "api", "api-2").await;
    let write = eventually("a scale write in web", Duration::from_secs(5), || async {
        scale_writes(&kube, "web", "api").into_iter().next()
    })
    .await;
    assert_eq!((write.status, replicas(&write)), (200, Some(8)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Nothing outside web, not even a read, and nothing it was refused.
    let outside: Vec<String> = kube
        .requests()
        .iter()
        .filter(|r| !r.path.contains("/namespaces/web/") || r.status == 403)
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
    let untouched = surgescaler(&kube, "elsewhere", "api").await;
    assert!(untouched.get("status").is_none(), "{untouched}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_patch_on_the_scale_gives_able_to_scale_false_and_one_event_not_a_crash() {
    let kube = install(
        "role_without_patch",
        &["web"],
        &["scaler.watchNamespaces={web}"],
    )
    .await;
    apply(&kube, &pause_deployment("web", "api", 1));
    apply(&kube, &minimal_surgescaler("web", "api"));
    wait_ready_replicas(&kube, "web", "api", 1, Duration::from_secs(30)).await;
    // Take `patch` off deployments/scale in the chart's Role, as a hand-edited Role would.
    let role = kubectl_ok(
        &kube,
        &["get", "role", "surge-scaler", "-n", "web", "-o", "json"],
        None,
    );
    let mut role: Value = serde_json::from_str(&role).unwrap();
    let mut removed = false;
    for rule in role["rules"].as_array_mut().unwrap() {
        let scale = rule["resources"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "deployments/scale"));
        if scale {
            rule["verbs"] = Value::from(vec!["get"]);
            removed = true;
        }
    }
    assert!(
        removed,
        "the chart's Role has no deployments/scale rule: {role}"
    );
    let original = kubectl_ok(
        &kube,
        &["get", "role", "surge-scaler", "-n", "web", "-o", "json"],
        None,
    );
    kubectl_ok(&kube, &["replace", "-f", "-"], Some(&role.to_string()));

    calm_then_surge(&kube, "web", "api", "api-1").await;
    let refused = eventually(
        "AbleToScale False in the status",
        Duration::from_secs(10),
        || async {
            let scaler = surgescaler(&kube, "web", "api").await;
            let able = condition(&scaler, "AbleToScale")?.clone();
            (able["status"] == "False").then_some(able)
        },
    )
    .await;
    assert_eq!(refused["reason"], "FailedUpdateScale", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("cannot patch resource \"deployments/scale\" in API group \"apps\""),
        "{message}"
    );
    // The scaler keeps retrying on every report; it publishes one Event, and does not crash.
    let client = http_client();
    for seq in 4..10 {
        let body = report(
            "web",
            "api",
            "api-1",
            seq,
            11_100 + seq * 1_000,
            130 + seq * 800,
            false,
        );
        assert_eq!(post_report(&kube, &client, &body).await, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let refused_writes = scale_writes(&kube, "web", "api")
        .iter()
        .filter(|w| w.status == 403)
        .count();
    assert!(
        refused_writes >= 2,
        "{refused_writes} refused writes: no retries"
    );
    let events = kubectl_ok(
        &kube,
        &[
            "get",
            "events",
            "-n",
            "web",
            "--field-selector",
            "reason=FailedRescale",
            "-o",
            "json",
        ],
        None,
    );
    let events: Value = serde_json::from_str(&events).unwrap();
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{events}");
    assert_eq!(items[0]["type"], "Warning");
    assert_eq!(
        items[0].get("count").and_then(Value::as_u64).unwrap_or(1),
        1,
        "{events}"
    );
    let pods = kubectl_ok(
        &kube,
        &[
            "get",
            "pods",
            "-n",
            "surge-system",
            "-o",
            "jsonpath={.items[*].status.containerStatuses[*].restartCount}",
        ],
        None,
    );
    assert!(
        pods.split_whitespace().all(|count| count == "0"),
        "a scaler replica restarted: {pods}"
    );

    // The Role put back: the next report's write lands and the condition clears.
    let mut original: Value = serde_json::from_str(&original).unwrap();
    original["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    kubectl_ok(
        &kube,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&original.to_string()),
    );
    let mut seq = 10;
    eventually("AbleToScale True again", Duration::from_secs(15), || {
        seq += 1;
        let body = report(
            "web",
            "api",
            "api-1",
            seq,
            11_100 + seq * 1_000,
            130 + seq * 800,
            false,
        );
        let client = client.clone();
        let kube = &kube;
        async move {
            let _ = post_report(kube, &client, &body).await;
            let scaler = surgescaler(kube, "web", "api").await;
            (condition(&scaler, "AbleToScale")?["status"] == "True").then_some(())
        }
    })
    .await;
    let landed = scale_writes(&kube, "web", "api")
        .into_iter()
        .rev()
        .find(|w| w.status == 200);
    assert!(
        landed.is_some(),
        "no scale write landed after the Role was put back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_writer_makes_scale_writes_conflict_and_the_scaler_decides_again_on_fresh_reads()
 {
    let kube = install("concurrent_writer", &[], &[]).await;
    apply(&kube, &pause_deployment("web", "api", 1));
    apply(&kube, &minimal_surgescaler("web", "api"));
    wait_ready_replicas(&kube, "web", "api", 1, Duration::from_secs(30)).await;
    // Another writer touches the Deployment every 5 ms (an annotation: what a deploy tool or a
    // second controller does), so the resourceVersion the scaler read goes stale under it.
    let writer = {
        let deployments: Api<Deployment> = Api::namespaced(kube.client(), "web");
        tokio::spawn(async move {
            for tick in 0u64.. {
                let patch = serde_json::json!({"metadata": {"annotations": {"e2e/tick": tick.to_string()}}});
                let _ = deployments
                    .patch(
                        "api",
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Wait until the scaler's cached scale is older than the writer's latest change.
    tokio::time::sleep(Duration::from_millis(500)).await;
    calm_then_surge(&kube, "web", "api", "api-1").await;
    let client = http_client();
    let mut seq = 3;
    let landed = eventually(
        "a scale write that landed despite the writer",
        Duration::from_secs(15),
        || {
            seq += 1;
            let body = report(
                "web",
                "api",
                "api-1",
                seq,
                11_100 + seq * 100,
                130 + seq * 80,
                false,
            );
            let client = client.clone();
            let kube = &kube;
            async move {
                let _ = post_report(kube, &client, &body).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                scale_writes(kube, "web", "api")
                    .into_iter()
                    .find(|w| w.status == 200)
            }
        },
    )
    .await;
    writer.abort();
    let writes = scale_writes(&kube, "web", "api");
    let conflicts = writes.iter().filter(|w| w.status == 409).count();
    println!(
        "scale writes: {:?}",
        writes
            .iter()
            .map(|w| (w.status, replicas(w)))
            .collect::<Vec<_>>()
    );
    assert!(
        conflicts >= 1,
        "no write met a conflict: {:?}",
        writes.len()
    );
    // Each write carried the resourceVersion it was decided against.
    for write in &writes {
        let body: Value = serde_json::from_str(write.body.as_deref().unwrap()).unwrap();
        assert!(
            body["metadata"]["resourceVersion"].is_string(),
            "a write without a precondition: {body}"
        );
    }
    assert_eq!(replicas(&landed), Some(8));
    wait_ready_replicas(&kube, "web", "api", 8, Duration::from_secs(30)).await;
}

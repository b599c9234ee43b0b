//! Scale to zero, request by request: the PATCH to 0 after the idle period (never on stale
//! reports), the PATCH 0 -> N on an activation report, the Service read for its ports, and the
//! status, conditions and Events of each.

use super::*;
use crate::controller::zero::destination;
use crate::hub::Destination;
use surge_wire::{Held, ReportBody};

const APP: &str = "outbound|8080||app.web.svc.cluster.local";
const SERVICE: &str = "/api/v1/namespaces/web/services/app";

/// `web/api` with scale to zero: 0 to 10 replicas of one concurrent request each, idle 10 s,
/// Service `app` (port 8080 unless `port` is `None`).
fn zero_scaler(port: Option<u16>) -> SurgeScaler {
    let mut spec = serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "api"},
        "minReplicas": 0, "maxReplicas": 10,
        "metric": {"type": "concurrency", "target": 1},
        "scaleToZero": {"idleSeconds": 10, "service": "app"}
    });
    if let Some(port) = port {
        spec["scaleToZero"]["port"] = port.into();
    }
    let mut scaler = scaler();
    scaler.spec = serde_json::from_value(spec).unwrap();
    scaler
}

/// A loop for `scaler`, registered in the hub as `controller::run` registers it; the Service's
/// EndpointSlices show `ready_endpoints` (the watch itself is `endpoints.rs`'s).
fn zero_setup(scaler: SurgeScaler, ready_endpoints: usize) -> (TargetLoop, Handle, Arc<Context>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(
        Client::new(service, "default"),
        Arc::new(Hub::default()),
        Arc::new(Metrics::default()),
        Clock::default(),
        Duration::from_secs(2),
        Duration::from_secs(1),
    ));
    let config = window_config(&scaler);
    let wake = ctx.hub.register(
        &key(),
        Selector::from_spec("web", &scaler.spec),
        scaler.spec.metric.type_,
        config,
    );
    ctx.hub
        .set_scale_to_zero(&key(), destination("web", &scaler.spec), config.stale_ms);
    ctx.hub.set_ready_endpoints(&key(), Some(ready_endpoints));
    let target = TargetLoop::new(Arc::clone(&ctx), key(), Arc::new(scaler), wake);
    (target, handle, ctx)
}

/// The target's sidecar reporting no request, once a second for `seconds` up to `end`.
fn quiet_for(ctx: &Context, seconds: u64, end: Millis) {
    for seq in 1..=seconds + 1 {
        ctx.hub.ingest(
            &sidecar_report(seq, 590, false),
            end - (seconds + 1 - seq) * 1_000,
        );
    }
}

/// A client sidecar (workload `checkout`, namespace `shop`) holding `requests` for `app`.
fn holding(seq: u64, requests: u64) -> ReportBody {
    let mut report = sidecar_report(seq, 0, false);
    report.proxy.namespace = "shop".into();
    report.proxy.workload = "checkout".into();
    report.proxy.owner = String::new();
    report.instance = "checkout-1/1".into();
    report.routes.clear();
    ReportBody {
        report,
        held: vec![Held {
            cluster: APP.into(),
            requests,
        }],
        hold_totals: None,
    }
}

fn scale_to_zero_status(patch: &Value) -> &Value {
    &patch["status"]["scaleToZero"]
}

#[tokio::test]
async fn after_the_idle_period_of_fresh_zero_reports_the_target_is_patched_to_zero() {
    let (mut target, handle, ctx) = zero_setup(zero_scaler(Some(8080)), 1);
    let now = ctx.clock.now();
    quiet_for(&ctx, 12, now);
    // The loop has watched the quiet for 12 s (its clock is the real one).
    target.start_idle_clock_at(now - 12_000);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale(1)),
        expect("PATCH", PATCH_SCALE, 200, scale(0)),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();

    assert_eq!(seen[3].body, scale_patch_at(0, "7"));
    let event = &seen[4].body;
    assert_eq!(
        (event["reason"].as_str(), event["type"].as_str()),
        (Some("ScaledToZero"), Some("Normal"))
    );
    // Quiet since the second report (the first is a baseline): 11 s.
    assert_eq!(
        event["note"],
        "New size: 0; reason: no requests reported by 1 source for 11 s"
    );
    let status = &seen[5].body;
    assert_eq!(
        (
            status["status"]["currentReplicas"].as_i64(),
            status["status"]["desiredReplicas"].as_i64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(scale_to_zero_status(status)["cold"], true);
    assert!(scale_to_zero_status(status)["lastScaleToZeroTime"].is_string());
    let active = condition(status, "Active");
    assert_eq!(
        (active["status"].as_str(), active["reason"].as_str()),
        (Some("False"), Some("ScaledToZero"))
    );
    assert!(
        active["message"]
            .as_str()
            .unwrap()
            .contains("no requests reported by 1 source for 11 s"),
        "{active}"
    );
    assert_eq!(condition(status, "MetricsStale")["status"], "False");
    // The proxies are told at once.
    assert_eq!(&*ctx.hub.cold(), [APP]);
    let text = ctx.metrics.encode();
    for expected in [
        "surge_scale_to_zero_total{namespace=\"web\",name=\"api\"} 1",
        "surge_cold_targets 1",
        "surge_current_replicas{namespace=\"web\",name=\"api\"} 1",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
}

#[tokio::test]
async fn stale_reports_never_take_the_target_to_zero_however_long_it_was_quiet() {
    let (mut target, handle, ctx) = zero_setup(zero_scaler(Some(8080)), 1);
    let now = ctx.clock.now();
    // Quiet for a minute, then silent for the last 20 s: past the 10 s staleness bound.
    quiet_for(&ctx, 60, now - 20_000);
    target.start_idle_clock_at(now - 80_000);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale(1)),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    // No PATCH of the scale may follow: serve fails on any request not listed.
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[3].body["reason"], "MetricsStale");
    assert_eq!(seen[4].body["status"]["desiredReplicas"], 1);
    assert_eq!(scale_to_zero_status(&seen[4].body)["cold"], false);
    assert!(ctx.hub.cold().is_empty());
}

#[tokio::test]
async fn an_activation_report_scales_zero_to_the_held_demand_at_once_and_stays_cold_until_ready() {
    let (mut target, handle, ctx) = zero_setup(zero_scaler(Some(8080)), 0);
    let (ingested, _) = ctx.hub.ingest_body(&holding(1, 3), ctx.clock.now());
    assert_eq!(ingested, crate::hub::Ingested::Baseline);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale(0)),
        expect("PATCH", PATCH_SCALE, 200, scale_at(3, "8")),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
        // Once the Service has a ready endpoint: warm, the status says so.
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    assert_eq!(&*ctx.hub.cold(), [APP], "scaled up, not ready: still cold");
    // Let the writer send this status before the next one (it keeps only the newest queued).
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The same proxy still holds the same 3 a report later: no second write.
    ctx.hub.ingest_body(&holding(2, 3), ctx.clock.now());
    target.step().await;
    ctx.hub.set_ready_endpoints(&key(), Some(1));
    ctx.hub.ingest_body(&holding(3, 3), ctx.clock.now());
    target.step().await;
    assert!(ctx.hub.cold().is_empty(), "ready: warm");
    let seen = server.await.unwrap();

    assert_eq!(seen[3].body, scale_patch_at(3, "7"));
    let event = &seen[4].body;
    assert_eq!(event["reason"], "ScaledFromZero");
    assert_eq!(
        event["note"],
        "New size: 3; reason: 3 requests held by 1 proxy for the cold destination"
    );
    let activating = &seen[5].body;
    assert_eq!(activating["status"]["currentReplicas"], 3);
    assert_eq!(scale_to_zero_status(activating)["cold"], true);
    assert!(scale_to_zero_status(activating)["lastActivationTime"].is_string());
    let active = condition(activating, "Active");
    assert_eq!(
        (active["status"].as_str(), active["reason"].as_str()),
        (Some("True"), Some("ScalingFromZero"))
    );
    let warm = &seen[6].body;
    assert_eq!(scale_to_zero_status(warm)["cold"], false);
    assert_eq!(warm["status"]["currentReplicas"], 3);
    let text = ctx.metrics.encode();
    for expected in [
        "surge_activations_total{namespace=\"web\",name=\"api\"} 1",
        "surge_held_requests{namespace=\"web\",name=\"api\"} 3",
        "surge_cold_targets 0",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
}

#[tokio::test]
async fn without_a_port_the_services_tcp_ports_name_the_cold_destination() {
    let (mut target, handle, ctx) = zero_setup(zero_scaler(None), 0);
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "app", "namespace": "web"},
        "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                           {"name": "dns", "port": 53, "protocol": "UDP"}]}
    });
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale(0)),
        expect("GET", SERVICE, 200, service),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    server.await.unwrap();
    assert_eq!(&*ctx.hub.cold(), [APP]);
}

#[tokio::test]
async fn a_missing_service_is_one_warning_and_the_idle_target_stays_up() {
    let (mut target, handle, ctx) = zero_setup(zero_scaler(None), 1);
    let now = ctx.clock.now();
    quiet_for(&ctx, 12, now);
    target.start_idle_clock_at(now - 12_000);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale(1)),
        expect("GET", SERVICE, 404, status(404, "NotFound")),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    // Idle long enough, but its destination cannot be listed cold: no PATCH to zero.
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[4].body["reason"], "ServiceNotFound");
    assert_eq!(seen[4].body["type"], "Warning");
    assert_eq!(seen[5].body["status"]["desiredReplicas"], 1);
    assert!(ctx.hub.cold().is_empty());
}

#[test]
fn scale_to_zero_is_on_only_with_both_halves_of_the_spec() {
    let on = zero_scaler(Some(8080));
    assert_eq!(
        destination("web", &on.spec),
        Some(Destination {
            host: "app.web.svc.cluster.local".into(),
            port: Some(8080)
        })
    );
    let mut min_one = on.clone();
    min_one.spec.min_replicas = 1;
    assert_eq!(destination("web", &min_one.spec), None);
    assert_eq!(destination("web", &scaler().spec), None);
    // minReplicas 0 alone (applied without the CRD's rules) is read as 1: never to zero.
    let mut min_zero = scaler();
    min_zero.spec.min_replicas = 0;
    assert_eq!(Policy::from_spec(&min_zero.spec).min, 1);
}

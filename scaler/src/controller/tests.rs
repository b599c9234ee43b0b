//! The controller's API calls, asserted request by request against tower-test's mock service
//! (method, path, query, content type, body), including conflicts, errors and timeouts; the
//! scale writes' precondition, 409s and failures are in `tests/scale_writes.rs`.

use super::*;
use crate::clock::Clock;
use crate::crd::{MetricType, SurgeScalerSpec, TargetKind};
use crate::decision::Freshness;
use crate::hub::Hub;
use crate::metrics::Metrics;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use surge_wire::{Proxy, Report, Role, RouteCounters, VERSION};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request and the reply to send.
struct Expect {
    method: &'static str,
    path_and_query: &'static str,
    status: u16,
    reply: Value,
}

fn expect(method: &'static str, path_and_query: &'static str, status: u16, reply: Value) -> Expect {
    Expect {
        method,
        path_and_query,
        status,
        reply,
    }
}

/// A request as the mock saw it.
#[derive(Debug)]
struct Seen {
    content_type: Option<String>,
    body: Value,
}

/// Whether `uri` is the expected one; an expectation ending in `*` matches any `uri` that
/// starts with the rest (an Event series PATCH names a generated Event).
fn path_matches(expected: &str, uri: &str) -> bool {
    match expected.strip_suffix('*') {
        Some(prefix) => uri.starts_with(prefix),
        None => expected == uri,
    }
}

/// Answers the expected requests; returns what it saw, indexed like the script. Requests to
/// the same method and path are matched in script order; Events and status are written by a
/// separate task, so their order relative to other calls is not fixed. A `reply` of
/// `Value::Null` means "echo the request body"; status 0 means "never answer".
async fn serve(mut handle: Handle, script: Vec<Expect>) -> Vec<Seen> {
    let mut seen: Vec<Option<Seen>> = script.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..script.len()).collect();
    while !pending.is_empty() {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = pending
                    .iter()
                    .map(|&i| format!("{} {}", script[i].method, script[i].path_and_query))
                    .collect();
                panic!("expected {missing:?}")
            })
            .expect("the client went away");
        let uri = request.uri().path_and_query().unwrap().to_string();
        let method = request.method().as_str().to_owned();
        let position = pending
            .iter()
            .position(|&i| {
                script[i].method == method && path_matches(script[i].path_and_query, &uri)
            })
            .unwrap_or_else(|| panic!("unexpected request {method} {uri}"));
        let index = pending.remove(position);
        let step = &script[index];
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let reply = if step.reply.is_null() {
            body.clone()
        } else {
            step.reply.clone()
        };
        seen[index] = Some(Seen { content_type, body });
        if step.status == 0 {
            // Never answer: the caller must time out. Keep the responder alive meanwhile.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                drop(send);
            });
            continue;
        }
        send.send_response(
            Response::builder()
                .status(step.status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
    // Nothing else may be asked.
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await
    {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
    seen.into_iter().map(|s| s.unwrap()).collect()
}

fn scaler() -> SurgeScaler {
    let spec: SurgeScalerSpec = serde_json::from_value(serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "api"},
        "minReplicas": 1, "maxReplicas": 10,
        "metric": {"type": "rps", "target": 100}
    }))
    .unwrap();
    let mut scaler = SurgeScaler::new("api", spec);
    scaler.metadata.namespace = Some("web".into());
    scaler.metadata.uid = Some("0b8c1f0e-7a4e-4f43-9d0a-3f1f3d0d2c11".into());
    scaler.metadata.generation = Some(3);
    scaler.metadata.resource_version = Some("41".into());
    scaler
}

fn key() -> TargetKey {
    TargetKey {
        namespace: "web".into(),
        name: "api".into(),
    }
}

fn setup(timeout: Duration) -> (TargetLoop, Handle, Arc<Context>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Arc::new(Context::new(
        client,
        Arc::new(Hub::default()),
        Arc::new(Metrics::default()),
        Clock::default(),
        timeout,
        Duration::from_secs(1),
    ));
    let scaler = scaler();
    let wake = ctx.hub.register(
        &key(),
        Selector::from_spec("web", &scaler.spec),
        MetricType::Rps,
        window_config(&scaler),
    );
    let target = TargetLoop::new(Arc::clone(&ctx), key(), Arc::new(scaler), wake);
    (target, handle, ctx)
}

/// A report of the sidecar `api-1` of `api`: `total` requests so far, at `seq` seconds.
fn sidecar_report(seq: u64, total: u64, surge: bool) -> Report {
    Report {
        version: VERSION,
        proxy: Proxy {
            namespace: "web".into(),
            workload: "api".into(),
            pod: "api-1".into(),
            owner: "kubernetes://apis/apps/v1/namespaces/web/deployments/api".into(),
            role: Role::Sidecar,
        },
        instance: "api-1/1".into(),
        seq,
        time_ms: 1_000 * seq,
        surge,
        window_ms: None,
        routes: vec![RouteCounters {
            route: "default".into(),
            cluster: "inbound|8080||".into(),
            requests_total: total,
            errors_total: 0,
            duration_us_total: 0,
            inflight: 0,
            window_requests: None,
        }],
    }
}

/// A calm minute at 10 rps from one sidecar of `api`, then a report marked as a surge that
/// carries `rps` for 1 s.
fn surge(ctx: &Context, rps: u64) {
    let now = ctx.clock.now();
    for seq in 1..=60 {
        ctx.hub.ingest(
            &sidecar_report(seq, 10 * (seq - 1), false),
            now - 61_000 + seq * 1_000,
        );
    }
    ctx.hub.ingest(&sidecar_report(61, 590 + rps, true), now);
}

fn scale(replicas: i32) -> Value {
    scale_at(replicas, "7")
}

/// The Scale at a given resourceVersion.
fn scale_at(replicas: i32, resource_version: &str) -> Value {
    serde_json::json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": "api", "namespace": "web", "resourceVersion": resource_version},
        "spec": {"replicas": replicas}, "status": {"replicas": replicas}
    })
}

/// The merge patch Surge sends: the replicas, valid only at the resourceVersion read.
fn scale_patch_at(replicas: i32, resource_version: &str) -> Value {
    serde_json::json!({"metadata": {"resourceVersion": resource_version},
                       "spec": {"replicas": replicas}})
}

fn empty_hpas() -> Value {
    serde_json::json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList",
                       "metadata": {"resourceVersion": "1"}, "items": []})
}

fn status(code: u16, reason: &str) -> Value {
    api_status(code, reason, &format!("{reason} (test)"))
}

fn api_status(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code})
}

const HPAS: &str = "/apis/autoscaling/v2/namespaces/web/horizontalpodautoscalers?";
const SCALED_OBJECTS: &str = "/apis/keda.sh/v1alpha1/namespaces/web/scaledobjects?";
const SCALE: &str = "/apis/apps/v1/namespaces/web/deployments/api/scale";
const PATCH_SCALE: &str =
    "/apis/apps/v1/namespaces/web/deployments/api/scale?&fieldManager=surge-scaler";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/web/events?";
const EVENT_SERIES: &str = "/apis/events.k8s.io/v1/namespaces/web/events/api.*";
const STATUS: &str =
    "/apis/surge.dev/v1alpha1/namespaces/web/surgescalers/api/status?&fieldManager=surge-scaler";

fn no_conflicts() -> Vec<Expect> {
    vec![
        expect("GET", HPAS, 200, empty_hpas()),
        expect("GET", SCALED_OBJECTS, 404, status(404, "NotFound")),
    ]
}

fn condition<'a>(status_patch: &'a Value, type_: &str) -> &'a Value {
    status_patch["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status_patch}"))
}

#[tokio::test]
async fn a_surge_patches_only_the_scale_subresource_under_the_field_manager() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale(1)),
        expect("PATCH", PATCH_SCALE, 200, scale(8)),
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

    let patch = &seen[3];
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    // Valid only at the resourceVersion read: a change since would be refused, not undone.
    assert_eq!(patch.body, scale_patch_at(8, "7"));

    let event = &seen[4].body;
    assert_eq!(event["reason"], "SuccessfulRescale");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["kind"], "SurgeScaler");
    assert_eq!(event["regarding"]["name"], "api");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with("New size: 8; reason: rps 800.0 (surge burst estimate)"),
        "{note}"
    );

    let status_patch = &seen[5];
    assert_eq!(
        status_patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let s = &status_patch.body["status"];
    assert_eq!(
        (s["currentReplicas"].as_i64(), s["desiredReplicas"].as_i64()),
        (Some(8), Some(8))
    );
    assert_eq!(s["panic"], true);
    assert_eq!(s["observedGeneration"], 3);
    assert!(s["lastScaleTime"].is_string());
    assert_eq!(condition(&status_patch.body, "Ready")["status"], "True");
    let able = condition(&status_patch.body, "AbleToScale");
    assert_eq!(
        (able["status"].as_str(), able["reason"].as_str()),
        (Some("True"), Some("SucceededRescale"))
    );
    assert_eq!(condition(&status_patch.body, "Active")["status"], "True");
    assert_eq!(
        condition(&status_patch.body, "MetricsStale")["status"],
        "False"
    );
    let text = ctx.metrics.encode();
    assert!(
        text.contains(
            "surge_scale_patches_total{namespace=\"web\",name=\"api\",direction=\"up\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_target_driven_by_an_hpa_is_refused_with_a_condition_and_an_event() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let hpa = serde_json::json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList", "metadata": {},
        "items": [{"metadata": {"name": "api-hpa", "namespace": "web"},
                   "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
                            "minReplicas": 1, "maxReplicas": 5}}]
    });
    let script = vec![
        expect("GET", HPAS, 200, hpa),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ];
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[1].body["reason"], "ConflictingAutoscaler");
    assert_eq!(seen[1].body["type"], "Warning");
    let ready = condition(&seen[2].body, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ConflictingAutoscaler"))
    );
    assert!(ready["message"].as_str().unwrap().contains("api-hpa"));
}

#[tokio::test]
async fn a_target_driven_by_a_keda_scaledobject_is_refused() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let scaled = serde_json::json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObjectList", "metadata": {},
        "items": [{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                   "metadata": {"name": "api-so", "namespace": "web"},
                   "spec": {"scaleTargetRef": {"name": "api"}}}]
    });
    let script = vec![
        expect("GET", HPAS, 200, empty_hpas()),
        expect("GET", SCALED_OBJECTS, 200, scaled),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ];
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert!(
        seen[2].body["note"]
            .as_str()
            .unwrap()
            .contains("KEDA ScaledObject api-so")
    );
}

#[tokio::test]
async fn without_reports_the_scale_is_held_and_the_status_and_an_event_say_so() {
    let (mut target, handle, _ctx) = setup(Duration::from_secs(2));
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale(4)),
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
    assert_eq!(seen[3].body["reason"], "MetricsStale");
    assert!(
        seen[3].body["note"]
            .as_str()
            .unwrap()
            .contains("holding 4 replicas")
    );
    let patch = &seen[4].body;
    assert_eq!(patch["status"]["desiredReplicas"], 4);
    assert_eq!(condition(patch, "MetricsStale")["status"], "True");
    assert_eq!(condition(patch, "Active")["status"], "False");
}

#[tokio::test]
async fn a_statefulset_target_is_scaled_through_its_own_scale_subresource() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(
        Client::new(service, "default"),
        Arc::new(Hub::default()),
        Arc::new(Metrics::default()),
        Clock::default(),
        Duration::from_secs(2),
        Duration::from_secs(1),
    ));
    let mut scaler = scaler();
    scaler.spec.scale_target_ref.kind = TargetKind::StatefulSet;
    let wake = ctx.hub.register(
        &key(),
        Selector::from_spec("web", &scaler.spec),
        MetricType::Rps,
        window_config(&scaler),
    );
    let mut target = TargetLoop::new(Arc::clone(&ctx), key(), Arc::new(scaler.clone()), wake);
    // Sidecars of a StatefulSet carry its owner reference.
    let report = |seq: u64, total: u64| Report {
        version: VERSION,
        proxy: Proxy {
            namespace: "web".into(),
            workload: "api".into(),
            pod: "api-0".into(),
            owner: "kubernetes://apis/apps/v1/namespaces/web/statefulsets/api".into(),
            role: Role::Sidecar,
        },
        instance: "api-0/1".into(),
        seq,
        time_ms: seq * 1000,
        surge: seq > 1,
        window_ms: None,
        routes: vec![RouteCounters {
            route: "r".into(),
            cluster: "inbound|80||".into(),
            requests_total: total,
            errors_total: 0,
            duration_us_total: 0,
            inflight: 0,
            window_requests: None,
        }],
    };
    ctx.hub.ingest(&report(1, 0), ctx.clock.now());
    ctx.hub.ingest(&report(2, 300), ctx.clock.now());
    let mut script = no_conflicts();
    script.extend([
        expect(
            "GET",
            "/apis/apps/v1/namespaces/web/statefulsets/api/scale",
            200,
            scale(1),
        ),
        expect(
            "PATCH",
            "/apis/apps/v1/namespaces/web/statefulsets/api/scale?&fieldManager=surge-scaler",
            200,
            scale(3),
        ),
        expect("POST", EVENTS, 201, Value::Null),
        expect("PATCH", STATUS, 200, serde_json::to_value(scaler).unwrap()),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[3].body, scale_patch_at(3, "7"));
}

#[tokio::test]
async fn when_reports_stop_the_scale_is_held_not_lowered_and_an_event_says_so() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    // Reports flowed (800 rps, eight replicas' worth) until 20 s ago, then stopped: the
    // source is past the default 10 s staleness bound.
    let stopped = ctx.clock.now() - 20_000;
    for seq in 1..=6u64 {
        let report = Report {
            version: VERSION,
            proxy: Proxy {
                namespace: "web".into(),
                workload: "api".into(),
                pod: "api-1".into(),
                owner: "kubernetes://apis/apps/v1/namespaces/web/deployments/api".into(),
                role: Role::Sidecar,
            },
            instance: "api-1/1".into(),
            seq,
            time_ms: 1_000 * seq,
            surge: false,
            window_ms: None,
            routes: vec![RouteCounters {
                route: "default".into(),
                cluster: "inbound|8080||".into(),
                requests_total: 800 * seq,
                errors_total: 0,
                duration_us_total: 0,
                inflight: 0,
                window_requests: None,
            }],
        };
        ctx.hub.ingest(&report, stopped - 6_000 + seq * 1000);
    }
    let (then, _) = ctx.hub.observe(&key(), stopped).unwrap();
    assert_eq!(then.freshness, Freshness::Fresh);
    assert!((then.panic - 800.0).abs() < 10.0, "{then:?}");

    let mut script = no_conflicts();
    script.extend([
        // Ten replicas run; the last data said eight. Without fresh data neither is written:
        // no PATCH of the scale may follow (serve fails on any request not listed).
        expect("GET", SCALE, 200, scale(10)),
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
    assert_eq!(seen[3].body["reason"], "MetricsStale");
    assert_eq!(seen[3].body["type"], "Warning");
    assert!(
        seen[3].body["note"]
            .as_str()
            .unwrap()
            .contains("holding 10 replicas"),
        "{:?}",
        seen[3].body
    );
    let patch = &seen[4].body;
    assert_eq!(patch["status"]["desiredReplicas"], 10);
    assert_eq!(condition(patch, "MetricsStale")["status"], "True");
    assert_eq!(condition(patch, "Active")["status"], "False");
}

#[test]
fn a_namespaces_relist_prunes_only_its_own_deleted_targets() {
    let key = |namespace: &str, name: &str| TargetKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let running = [key("web", "api"), key("web", "old"), key("shop", "cart")];
    let listed: HashSet<TargetKey> = [key("web", "api")].into_iter().collect();
    // web's relist shows web/old gone; shop/cart is shop's watch's to judge.
    assert_eq!(
        gone_after_relist(running.iter(), Some("web"), &listed),
        [key("web", "old")]
    );
    // shop's relist did not list shop/cart: gone; web's targets untouched.
    assert_eq!(
        gone_after_relist(running.iter(), Some("shop"), &HashSet::new()),
        [key("shop", "cart")]
    );
    // One watch over the cluster judges every target.
    let mut gone = gone_after_relist(running.iter(), None, &listed);
    gone.sort();
    assert_eq!(gone, [key("shop", "cart"), key("web", "old")]);
}

mod ownership;
mod scale_writes;
mod zero;

#[test]
fn a_rescale_names_what_asked_for_it() {
    use crate::decision::{Decision, Observation, Policy, Reason};
    let policy = Policy::from_spec(&scaler().spec);
    let up = |desired| Decision {
        desired,
        reason: Reason::ScaleUp,
        panic: false,
        limit: None,
    };
    let observation = |stable, burst| Observation {
        stable,
        panic: stable,
        burst,
        freshness: Freshness::Fresh,
    };
    let reason =
        |d: &Decision, o: &Observation| status::rescale_reason(d, o, &policy, MetricType::Rps);
    // The stable average asks for 1 replica (101 within the tolerance): a scale-up to 2 outside
    // panic was the burst's. Seen on the real control plane as "rps 35.4 (stable window)"
    // against a target of 35.
    assert_eq!(
        reason(&up(2), &observation(101.0, Some(130.0))),
        "rps 130.0 (surge burst estimate) above target 100 per replica"
    );
    assert_eq!(
        reason(&up(3), &observation(230.0, Some(130.0))),
        "rps 230.0 (stable window) above target 100 per replica"
    );
}

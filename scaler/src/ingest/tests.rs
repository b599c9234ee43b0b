use super::*;
use crate::crd::MetricType;
use crate::hub::{Selector, TargetKey};
use crate::window::WindowConfig;
use axum::http::Request;
use tower::ServiceExt;

fn state(token: Option<&str>, identity: IdentityMode) -> IngestState {
    IngestState {
        hub: Arc::new(Hub::default()),
        clock: Clock::default(),
        token: token.map(Arc::from),
        identity,
        limits: Arc::new(Limits::default()),
        metrics: Arc::new(Metrics::default()),
        answer_wait: std::time::Duration::ZERO,
        mirror: None,
    }
}

fn report(seq: u64) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "proxy": {"namespace": "web", "workload": "api", "pod": "api-1",
                  "owner": "", "role": "sidecar"},
        "instance": "api-1/1",
        "seq": seq,
        "time_ms": 1000 * seq,
        "surge": false,
        "routes": [{"route": "r", "cluster": "inbound|80||", "requests_total": 10 * seq,
                    "errors_total": 0, "duration_us_total": 0, "inflight": 1}]
    })
}

async fn post(
    state: &IngestState,
    body: impl Into<Body>,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::post(surge_wire::REPORTS_PATH)
        .header(header::CONTENT_TYPE, surge_wire::CONTENT_TYPE);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router(state.clone())
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

fn json(value: &serde_json::Value) -> String {
    value.to_string()
}

#[tokio::test]
async fn a_valid_report_is_accepted_and_counted_for_its_target() {
    let state = state(None, IdentityMode::Off);
    let key = TargetKey {
        namespace: "web".into(),
        name: "api".into(),
    };
    let spec = serde_json::from_value(serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "api"},
        "maxReplicas": 5, "metric": {"type": "rps", "target": 10}
    }))
    .unwrap();
    state.hub.register(
        &key,
        Selector::from_spec("web", &spec),
        MetricType::Rps,
        WindowConfig {
            stable_ms: 60_000,
            panic_ms: 6_000,
            stale_ms: 10_000,
        },
    );
    let (status, body) = post(&state, json(&report(1)), &[]).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("baseline"))
    );
    let (status, body) = post(&state, json(&report(2)), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"outcome": "accepted", "targets": 1})
    );
    let (_, body) = post(&state, json(&report(2)), &[]).await;
    assert_eq!(body["outcome"], "duplicate");
    let text = state.metrics.encode();
    assert!(
        text.contains("surge_ingest_reports_total{outcome=\"accepted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("surge_ingest_reports_total{outcome=\"duplicate\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_waypoints_traffic_to_a_service_it_does_not_serve_is_refused_but_answered() {
    let state = state(None, IdentityMode::Off);
    let key = TargetKey {
        namespace: "web".into(),
        name: "api".into(),
    };
    let spec = serde_json::from_value(serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "api"},
        "maxReplicas": 5, "metric": {"type": "rps", "target": 10},
        "sources": {"sidecars": false, "waypoint": {"service": "api"}}
    }))
    .unwrap();
    state.hub.register(
        &key,
        Selector::from_spec("web", &spec),
        MetricType::Rps,
        WindowConfig {
            stable_ms: 60_000,
            panic_ms: 6_000,
            stale_ms: 10_000,
        },
    );
    state.hub.set_waypoint(
        &key,
        Some(crate::waypoint::WaypointRef {
            namespace: "web".into(),
            name: "waypoint".into(),
        }),
    );
    let intruder = |seq: u64| {
        let mut r = report(seq);
        r["proxy"]["role"] = "waypoint".into();
        r["proxy"]["workload"] = "intruder".into();
        r["routes"][0]["cluster"] = "inbound-vip|8080|http|api.web.svc.cluster.local".into();
        r["routes"][0]["inflight"] = 0.into();
        r
    };
    let (_, body) = post(&state, json(&intruder(1)), &[]).await;
    assert_eq!(body["outcome"], "baseline");
    // Its traffic to api is not counted, and said so; the answer still carries what a proxy
    // needs (the cold list), as a 403 would not.
    let (status, body) = post(&state, json(&intruder(2)), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"outcome": "refused", "targets": 0})
    );
    let text = state.metrics.encode();
    assert!(
        text.contains("surge_waypoint_routes_refused_total 1"),
        "{text}"
    );
    assert!(
        text.contains("surge_ingest_reports_total{outcome=\"refused\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_field() {
    let state = state(None, IdentityMode::Off);
    let mut bad_type = report(1);
    bad_type["seq"] = "seven".into();
    let (status, body) = post(&state, json(&bad_type), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "seq", "{body}");

    let mut nested = report(1);
    nested["routes"][0]["inflight"] = (-1).into();
    let (status, body) = post(&state, json(&nested), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "routes[0].inflight", "{body}");

    let mut unknown = report(1);
    unknown["extra"] = 1.into();
    let (status, body) = post(&state, json(&unknown), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("extra"), "{body}");

    let (status, _) = post(&state, "{not json", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(&state, format!("{} {{}}", json(&report(1))), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "trailing data");
}

#[tokio::test]
async fn invalid_values_are_a_422_naming_the_field() {
    let state = state(None, IdentityMode::Off);
    let mut bad = report(1);
    bad["routes"][0]["errors_total"] = 11.into();
    let (status, body) = post(&state, json(&bad), &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "routes[0].errors_total", "{body}");
    let mut bad = report(1);
    bad["version"] = 9.into();
    let (status, body) = post(&state, json(&bad), &[]).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("version"))
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_with_or_without_content_length() {
    let mut state = state(None, IdentityMode::Off);
    state.limits = Arc::new(Limits {
        max_body_bytes: 100,
        ..Limits::default()
    });
    let big = json(&report(1));
    assert!(big.len() > 100);
    let (status, body) = post(&state, big.clone(), &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["field"], "body");
    // Streamed without a content-length: the limit still holds while reading.
    let stream = futures::stream::iter(
        big.into_bytes()
            .chunks(10)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let (status, _) = post(&state, Body::from_stream(stream), &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_configured_token_is_required_and_checked() {
    let state = state(Some("s3cret"), IdentityMode::Off);
    let body = json(&report(1));
    let (status, err) = post(&state, body.clone(), &[]).await;
    assert_eq!(
        (status, err["field"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("authorization"))
    );
    let (status, _) = post(&state, body.clone(), &[("authorization", "Bearer s3creT")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&state, body.clone(), &[("authorization", "s3cret")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&state, body, &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(status, StatusCode::OK);
}

const XFCC_WEB: &str = "By=spiffe://cluster.local/ns/surge-system/sa/surge-scaler;\
    Hash=abc;Subject=\"\";URI=spiffe://cluster.local/ns/web/sa/api";
const XFCC_EVIL: &str = "By=spiffe://cluster.local/ns/surge-system/sa/surge-scaler;\
    Hash=abc;Subject=\"CN=a,O=b\";URI=spiffe://cluster.local/ns/evil/sa/default";

#[tokio::test]
async fn the_spiffe_namespace_must_match_the_report_when_present() {
    let state = state(None, IdentityMode::WhenPresent);
    let (status, _) = post(
        &state,
        json(&report(1)),
        &[("x-forwarded-client-cert", XFCC_WEB)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post(
        &state,
        json(&report(2)),
        &[("x-forwarded-client-cert", XFCC_EVIL)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["field"], "proxy.namespace");
    assert!(
        body["error"].as_str().unwrap().contains("\"evil\""),
        "{body}"
    );
    let (status, _) = post(&state, json(&report(3)), &[]).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "absent header is fine in when-present mode"
    );
    let (status, _) = post(
        &state,
        json(&report(4)),
        &[("x-forwarded-client-cert", "Hash=abc")],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a header without a SPIFFE URI"
    );
}

#[tokio::test]
async fn required_identity_refuses_reports_without_the_header() {
    let state = state(None, IdentityMode::Required);
    let (status, body) = post(&state, json(&report(1)), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["field"], "x-forwarded-client-cert");
    let (status, _) = post(
        &state,
        json(&report(1)),
        &[("x-forwarded-client-cert", XFCC_WEB)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn identity_off_ignores_the_header() {
    let state = state(None, IdentityMode::Off);
    let (status, _) = post(
        &state,
        json(&report(1)),
        &[("x-forwarded-client-cert", XFCC_EVIL)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn the_direct_peer_is_the_last_xfcc_element() {
    let chained = format!("URI=spiffe://cluster.local/ns/other/sa/x,{XFCC_WEB}");
    let namespace = |xfcc| spiffe_identity(xfcc).map(|(ns, _)| ns);
    assert_eq!(spiffe_identity(&chained), Some(("web", "api")));
    assert_eq!(namespace(XFCC_EVIL), Some("evil"));
    assert_eq!(
        spiffe_identity("URI=\"spiffe://td/ns/q/sa/s\""),
        Some(("q", "s"))
    );
    assert_eq!(namespace("URI=https://example.com/ns/q/sa/s"), None);
    assert_eq!(namespace("URI=spiffe://td/ns/q/sa"), None);
    assert_eq!(namespace(""), None);
}

#[tokio::test]
async fn a_waypoint_reports_only_as_its_own_service_account() {
    let state = state(None, IdentityMode::WhenPresent);
    let waypoint = |seq: u64, workload: &str| {
        let mut r = report(seq);
        r["proxy"]["role"] = "waypoint".into();
        r["proxy"]["workload"] = workload.into();
        r["instance"] = format!("{workload}-0/1").into();
        r
    };
    // What the scaler's sidecar appends for a waypoint's mTLS connection (`By` the scaler,
    // `URI` the caller): the caller is waypoint `waypoint` of namespace web.
    let xfcc = "By=spiffe://cluster.local/ns/surge-system/sa/surge-scaler;\
                URI=spiffe://cluster.local/ns/web/sa/waypoint";
    let (status, _) = post(
        &state,
        json(&waypoint(1, "waypoint")),
        &[("x-forwarded-client-cert", xfcc)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post(
        &state,
        json(&waypoint(1, "other-waypoint")),
        &[("x-forwarded-client-cert", xfcc)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["field"], "proxy.workload");
    // A sidecar's workload is not its service account: not checked.
    let (status, _) = post(
        &state,
        json(&report(1)),
        &[("x-forwarded-client-cert", xfcc)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn token_comparison_checks_every_byte() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
}

fn limited_state(limits: crate::window::SourceLimits) -> IngestState {
    IngestState {
        hub: Arc::new(Hub::with_limits(limits)),
        ..state(None, IdentityMode::Off)
    }
}

/// Posts a report; returns the status, the `Retry-After` header and the JSON body.
async fn post_report(
    state: &IngestState,
    report: &serde_json::Value,
) -> (StatusCode, Option<String>, serde_json::Value) {
    let request = Request::post(surge_wire::REPORTS_PATH)
        .header(header::CONTENT_TYPE, surge_wire::CONTENT_TYPE)
        .body(Body::from(json(report)))
        .unwrap();
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn an_instance_over_its_report_rate_is_a_429_with_retry_after_naming_the_instance() {
    let state = limited_state(crate::window::SourceLimits {
        min_report_interval_ms: 60_000,
        report_burst: 1,
        ..Default::default()
    });
    let (status, retry_after, _) = post_report(&state, &report(1)).await;
    assert_eq!((status, retry_after), (StatusCode::OK, None));
    let (status, retry_after, body) = post_report(&state, &report(2)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let seconds: u64 = retry_after.unwrap().parse().unwrap();
    assert!((59..=60).contains(&seconds), "Retry-After {seconds}");
    assert_eq!(body["field"], "instance");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("per-instance limit"),
        "{body}"
    );
    // A replay of an accepted report is still a duplicate, not throttled.
    let (status, _, body) = post_report(&state, &report(1)).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    let text = state.metrics.encode();
    assert!(
        text.contains("surge_ingest_reports_total{outcome=\"throttled\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn tracking_limits_refuse_new_sources_with_a_503_naming_the_field() {
    // (case, limits, the refused report's instance and route count, expected field)
    let cases = [
        (
            "instances",
            crate::window::SourceLimits {
                max_instances: 1,
                ..Default::default()
            },
            2,
            "instance",
        ),
        (
            "instances per namespace",
            crate::window::SourceLimits {
                max_instances_per_namespace: 1,
                ..Default::default()
            },
            1,
            "instance",
        ),
        (
            "instance routes",
            crate::window::SourceLimits {
                max_instance_routes: 2,
                ..Default::default()
            },
            2,
            "routes",
        ),
    ];
    for (case, limits, routes, field) in cases {
        let state = limited_state(limits);
        let (status, _, _) = post_report(&state, &report(1)).await;
        assert_eq!(status, StatusCode::OK, "{case}");
        let mut other = report(1);
        other["instance"] = "api-2/1".into();
        other["routes"] = (0..routes)
            .map(|i| {
                serde_json::json!({"route": format!("r{i}"), "cluster": "inbound|80||",
                    "requests_total": 1, "errors_total": 0, "duration_us_total": 0,
                    "inflight": 0})
            })
            .collect();
        let (status, retry_after, body) = post_report(&state, &other).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{case}");
        assert_eq!(retry_after.as_deref(), Some("10"), "{case}");
        assert_eq!(body["field"], field, "{case}");
        assert!(
            body["error"].as_str().unwrap().contains("limit"),
            "{case}: {body}"
        );
        let text = state.metrics.encode();
        assert!(
            text.contains("surge_ingest_reports_total{outcome=\"over_capacity\"} 1"),
            "{case}: {text}"
        );
    }
}

#[tokio::test]
async fn a_target_full_of_sources_refuses_a_new_one_with_a_503() {
    let state = limited_state(crate::window::SourceLimits {
        max_sources_per_target: 1,
        ..Default::default()
    });
    let spec = serde_json::from_value(serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "api"},
        "maxReplicas": 5, "metric": {"type": "rps", "target": 10}
    }))
    .unwrap();
    state.hub.register(
        &TargetKey {
            namespace: "web".into(),
            name: "api".into(),
        },
        Selector::from_spec("web", &spec),
        MetricType::Rps,
        WindowConfig {
            stable_ms: 60_000,
            panic_ms: 6_000,
            stale_ms: 10_000,
        },
    );
    let (status, _, _) = post_report(&state, &report(1)).await;
    assert_eq!(status, StatusCode::OK);
    let mut other = report(1);
    other["instance"] = "api-2/1".into();
    let (status, _, body) = post_report(&state, &other).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["field"], "instance");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("limit of 1 sources"),
        "{body}"
    );
}

#[tokio::test]
async fn a_forged_namespace_is_a_403_when_the_identity_is_required_too() {
    let state = state(None, IdentityMode::Required);
    let (status, body) = post(
        &state,
        json(&report(1)),
        &[("x-forwarded-client-cert", XFCC_EVIL)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["field"], "proxy.namespace");
    let (status, _) = post(
        &state,
        json(&report(1)),
        &[("x-forwarded-client-cert", XFCC_WEB)],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the forged report left no state behind"
    );
}

#[tokio::test]
async fn a_report_reusing_another_namespaces_instance_is_a_403() {
    let state = state(None, IdentityMode::WhenPresent);
    let (status, _) = post(
        &state,
        json(&report(1)),
        &[("x-forwarded-client-cert", XFCC_WEB)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The caller's identity is "evil" and so is the report's namespace: the identity check
    // passes, but the instance id belongs to a proxy of "web".
    let mut forged = report(1 << 40);
    forged["proxy"]["namespace"] = "evil".into();
    let (status, body) = post(
        &state,
        json(&forged),
        &[("x-forwarded-client-cert", XFCC_EVIL)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["field"], "instance");
    let (status, body) = post(
        &state,
        json(&report(2)),
        &[("x-forwarded-client-cert", XFCC_WEB)],
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("unmatched")),
        "the real proxy's next report still counts: {body}"
    );
}

#[tokio::test]
async fn a_gateway_report_from_a_namespace_not_allowed_is_a_403() {
    let state = state(None, IdentityMode::WhenPresent);
    state
        .hub
        .set_gateway_namespaces(Some(vec!["istio-system".into()]));
    let mut forged = report(1);
    forged["proxy"]["namespace"] = "evil".into();
    forged["proxy"]["role"] = "gateway".into();
    forged["routes"][0]["cluster"] = "outbound|80||api.web.svc.cluster.local".into();
    let (status, body) = post(
        &state,
        json(&forged),
        &[("x-forwarded-client-cert", XFCC_EVIL)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["field"], "proxy.namespace");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--gateway-namespaces"),
        "{body}"
    );
}

mod holds;

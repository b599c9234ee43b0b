//! Scale to zero at the ingest: bodies with `held` and `hold_totals` are decoded, validated
//! (errors name the field) and counted, and every 200 answer lists the cold destinations.

use super::*;
use crate::hub::Destination;

const APP: &str = "outbound|8080||app.web.svc.cluster.local";

/// A state with the scale-to-zero target `web/app` (Service `app`, port 8080) at zero.
fn cold_state() -> IngestState {
    let state = state(None, IdentityMode::Off);
    let key = TargetKey {
        namespace: "web".into(),
        name: "app".into(),
    };
    let spec = serde_json::from_value(serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "app"},
        "minReplicas": 0, "maxReplicas": 5, "metric": {"type": "concurrency", "target": 1},
        "scaleToZero": {"service": "app", "port": 8080}
    }))
    .unwrap();
    state.hub.register(
        &key,
        Selector::from_spec("web", &spec),
        MetricType::Concurrency,
        WindowConfig {
            stable_ms: 60_000,
            panic_ms: 6_000,
            stale_ms: 10_000,
        },
    );
    state.hub.set_scale_to_zero(
        &key,
        Some(Destination {
            host: "app.web.svc.cluster.local".into(),
            port: Some(8080),
        }),
        10_000,
    );
    state.hub.set_replicas(&key, Some(0));
    state
}

/// A client sidecar's report (workload `checkout` in `shop`) holding `requests` for `app`.
fn activation(seq: u64, requests: u64) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "proxy": {"namespace": "shop", "workload": "checkout", "pod": "checkout-1",
                  "owner": "", "role": "sidecar"},
        "instance": "checkout-1/1",
        "seq": seq,
        "time_ms": 1000 * seq,
        "surge": false,
        "routes": [],
        "held": [{"cluster": APP, "requests": requests}],
        "hold_totals": {"held_total": 2 * seq, "resumed_total": seq, "timed_out_total": 0,
                        "cancelled_total": 0, "rejected_total": 0}
    })
}

#[tokio::test]
async fn every_answer_lists_the_cold_destinations_as_the_filter_reads_them() {
    let state = cold_state();
    for body in [report(1), activation(1, 3)] {
        let (status, answer) = post(&state, json(&body), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["cold"], serde_json::json!([APP]), "{answer}");
        let answer: surge_wire::Answer = serde_json::from_value(answer).unwrap();
        assert_eq!(answer.validate(&Limits::default()), Ok(()));
    }
    // Warm: the answer is the one a scaler without scale to zero gives.
    let key = TargetKey {
        namespace: "web".into(),
        name: "app".into(),
    };
    state.hub.set_replicas(&key, Some(1));
    state.hub.set_ready_endpoints(&key, Some(1));
    let (_, answer) = post(&state, json(&report(2)), &[]).await;
    assert_eq!(
        answer,
        serde_json::json!({"outcome": "unmatched", "targets": 0})
    );
}

#[tokio::test]
async fn an_activation_report_is_counted_as_held_demand_and_its_totals_as_metrics() {
    let state = cold_state();
    let key = TargetKey {
        namespace: "web".into(),
        name: "app".into(),
    };
    let (status, _) = post(&state, json(&activation(1, 3)), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let now = state.clock.now();
    assert_eq!(state.hub.zero_view(&key, now).unwrap().held, 3);
    // The same proxy still holds 3 a report later: still 3, not 6.
    post(&state, json(&activation(2, 3)), &[]).await;
    assert_eq!(state.hub.zero_view(&key, now).unwrap().held, 3);
    let text = state.metrics.encode();
    assert!(
        text.contains("surge_proxy_held_requests_total{outcome=\"held\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("surge_proxy_held_requests_total{outcome=\"resumed\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_hold_field_out_of_its_limits_is_a_422_naming_it() {
    let state = cold_state();
    let mut zero = activation(1, 3);
    zero["held"][0]["requests"] = 0.into();
    let mut totals = activation(1, 3);
    totals["hold_totals"]["resumed_total"] = 99.into();
    let mut twice = activation(1, 3);
    twice["held"] = serde_json::json!([{"cluster": APP, "requests": 1},
                                      {"cluster": APP, "requests": 2}]);
    for (body, field) in [
        (zero, "held[0].requests"),
        (totals, "hold_totals"),
        (twice, "held[1].cluster"),
    ] {
        let (status, answer) = post(&state, json(&body), &[]).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["field"], field, "{answer}");
    }
}

#[tokio::test]
async fn a_malformed_hold_field_is_a_400_naming_it() {
    let state = cold_state();
    let mut wrong_type = activation(1, 3);
    wrong_type["held"][0]["requests"] = "three".into();
    let mut unknown = activation(1, 3);
    unknown["held"][0]["extra"] = 1.into();
    for (body, field) in [(wrong_type, "held[0].requests"), (unknown, "held[0]")] {
        let (status, answer) = post(&state, json(&body), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["field"].as_str().unwrap().starts_with(field),
            "{field}: {answer}"
        );
    }
}

fn app_key() -> TargetKey {
    TargetKey {
        namespace: "web".into(),
        name: "app".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_to_a_holding_report_goes_out_the_moment_the_target_is_warm() {
    let state = IngestState {
        answer_wait: std::time::Duration::from_millis(250),
        ..cold_state()
    };
    // Scaled up from zero, its pod not ready yet: still cold.
    state.hub.set_replicas(&app_key(), Some(1));
    state.hub.set_ready_endpoints(&app_key(), Some(0));
    let hub = Arc::clone(&state.hub);
    let started = tokio::time::Instant::now();
    let warm = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        hub.set_ready_endpoints(&app_key(), Some(1));
    });
    let (status, answer) = post(&state, json(&activation(1, 3)), &[]).await;
    assert_eq!(status, StatusCode::OK);
    // Answered when the endpoint turned ready (40 ms), not at the wait's end (250 ms).
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(40));
    assert!(answer.get("cold").is_none(), "{answer}");
    warm.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_answer_waits_no_longer_than_the_bound_and_only_for_a_holding_report() {
    let state = IngestState {
        answer_wait: std::time::Duration::from_millis(250),
        ..cold_state()
    };
    let started = tokio::time::Instant::now();
    let (status, answer) = post(&state, json(&activation(1, 3)), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(250));
    assert_eq!(answer["cold"], serde_json::json!([APP]), "{answer}");
    // A report that holds nothing is answered at once, cold list and all.
    let started = tokio::time::Instant::now();
    let (_, answer) = post(&state, json(&report(1)), &[]).await;
    assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    assert_eq!(answer["cold"], serde_json::json!([APP]), "{answer}");
    // Nor does a report holding for a destination that is not cold wait.
    let mut elsewhere = activation(2, 1);
    elsewhere["held"][0]["cluster"] = "outbound|80||other.web.svc.cluster.local".into();
    let started = tokio::time::Instant::now();
    let (status, _) = post(&state, json(&elsewhere), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(started.elapsed(), std::time::Duration::ZERO);
}

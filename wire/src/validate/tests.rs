//! The wire contract's validation, tried on good and bad reports, holds and answers.

use super::*;
use crate::{Proxy, ReportBody, Role, RouteCounters};
use proptest::prelude::*;

fn route(name: &str) -> RouteCounters {
    RouteCounters {
        route: name.into(),
        cluster: "inbound|8080||".into(),
        requests_total: 10,
        errors_total: 1,
        duration_us_total: 12_345,
        inflight: 2,
        window_requests: Some(4),
    }
}

fn sample() -> Report {
    Report {
        version: VERSION,
        proxy: Proxy {
            namespace: "web".into(),
            workload: "nginx".into(),
            pod: "nginx-5d9c7-abcde".into(),
            owner: "kubernetes://apis/apps/v1/namespaces/web/deployments/nginx".into(),
            role: Role::Sidecar,
        },
        instance: "nginx-5d9c7-abcde/4f1c".into(),
        seq: 7,
        time_ms: 1_790_000_000_000,
        surge: false,
        routes: vec![route("default"), route("api")],
        window_ms: Some(200),
    }
}

#[test]
fn a_well_formed_report_passes() {
    assert_eq!(sample().validate(&Limits::default()), Ok(()));
}

#[test]
fn json_round_trips_with_the_documented_field_names() {
    let json = serde_json::to_value(sample()).unwrap();
    assert_eq!(json["proxy"]["role"], "sidecar");
    assert_eq!(json["routes"][1]["duration_us_total"], 12_345);
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, sample());
}

#[test]
fn unknown_fields_are_refused_by_the_decoder() {
    let mut json = serde_json::to_value(sample()).unwrap();
    json["extra"] = 1.into();
    let err = serde_json::from_value::<Report>(json).unwrap_err();
    assert!(err.to_string().contains("extra"), "{err}");
}

#[test]
fn each_violation_names_its_field() {
    let limits = Limits::default();
    type Mutation = Box<dyn Fn(&mut Report)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|r| r.version = 2),
            "version: unsupported version 2",
        ),
        (
            Box::new(|r| r.proxy.namespace.clear()),
            "proxy.namespace: must not be empty",
        ),
        (
            Box::new(|r| r.proxy.namespace = "a".repeat(64)),
            "proxy.namespace: 64 bytes",
        ),
        (
            Box::new(|r| r.proxy.workload = "a b".into()),
            "proxy.workload: contains",
        ),
        (
            Box::new(|r| r.proxy.pod.clear()),
            "proxy.pod: must not be empty",
        ),
        (
            Box::new(|r| r.proxy.owner = "x\n".into()),
            "proxy.owner: contains",
        ),
        (
            Box::new(|r| r.instance = "i".repeat(129)),
            "instance: 129 bytes",
        ),
        (
            Box::new(|r| r.routes[1].route = "r\u{7}".into()),
            "routes[1].route: contains",
        ),
        (
            Box::new(|r| r.routes[0].cluster = "c".repeat(513)),
            "routes[0].cluster: 513",
        ),
        (
            Box::new(|r| r.routes[1].errors_total = 11),
            "routes[1].errors_total: larger",
        ),
        (
            Box::new(|r| r.routes[0].inflight = 1_000_001),
            "routes[0].inflight: 1000001",
        ),
        (
            Box::new(|r| r.window_ms = Some(0)),
            "window_ms: 0 is outside",
        ),
        (
            Box::new(|r| r.window_ms = Some(60_001)),
            "window_ms: 60001 is outside",
        ),
        (
            Box::new(|r| r.window_ms = None),
            "routes[0].window_requests: given without window_ms",
        ),
        (
            Box::new(|r| r.routes[1].window_requests = Some(13)),
            "routes[1].window_requests: larger than requests_total + inflight",
        ),
        (
            Box::new(|r| r.routes.push(route("default"))),
            "routes[2]: repeats",
        ),
        (
            Box::new(|r| r.routes = (0..257).map(|i| route(&i.to_string())).collect()),
            "routes: 257 entries",
        ),
    ];
    for (mutate, expected) in cases {
        let mut report = sample();
        mutate(&mut report);
        let message = report.validate(&limits).unwrap_err().to_string();
        assert!(
            message.starts_with(expected),
            "{message:?} should start with {expected:?}"
        );
    }
}

#[test]
fn a_report_without_a_window_decodes_and_passes() {
    let mut json = serde_json::to_value(sample()).unwrap();
    json.as_object_mut().unwrap().remove("window_ms");
    for route in json["routes"].as_array_mut().unwrap() {
        route.as_object_mut().unwrap().remove("window_requests");
    }
    let report: Report = serde_json::from_value(json).unwrap();
    assert_eq!(report.window_ms, None);
    assert!(report.routes.iter().all(|r| r.window_requests.is_none()));
    assert_eq!(report.validate(&Limits::default()), Ok(()));
}

#[test]
fn an_empty_owner_and_no_routes_are_allowed() {
    let mut report = sample();
    report.proxy.owner.clear();
    report.routes.clear();
    assert_eq!(report.validate(&Limits::default()), Ok(()));
}

#[test]
fn the_same_route_on_two_clusters_is_not_a_duplicate() {
    let mut report = sample();
    let mut other = route("default");
    other.cluster = "outbound|80||web.web.svc.cluster.local".into();
    report.routes.push(other);
    assert_eq!(report.validate(&Limits::default()), Ok(()));
}

fn held(cluster: &str, requests: u64) -> Held {
    Held {
        cluster: cluster.into(),
        requests,
    }
}

fn activation() -> ReportBody {
    ReportBody {
        report: sample(),
        held: vec![
            held("outbound|8080||app.default.svc.cluster.local", 3),
            held("outbound|80||web.shop.svc.cluster.local", 1),
        ],
        hold_totals: Some(HoldTotals {
            held_total: 9,
            resumed_total: 4,
            timed_out_total: 1,
            cancelled_total: 0,
            rejected_total: 2,
        }),
    }
}

#[test]
fn a_body_without_hold_fields_is_exactly_a_report() {
    let report_json = serde_json::to_value(sample()).unwrap();
    let body: ReportBody = serde_json::from_value(report_json.clone()).unwrap();
    assert_eq!(body, ReportBody::plain(sample()));
    assert!(!body.is_activation());
    assert_eq!(serde_json::to_value(&body).unwrap(), report_json);
    assert_eq!(body.validate(&Limits::default()), Ok(()));
}

#[test]
fn an_activation_body_is_one_flat_object_that_round_trips() {
    let json = serde_json::to_value(activation()).unwrap();
    assert_eq!(json["seq"], 7);
    assert_eq!(
        json["held"][0]["cluster"],
        "outbound|8080||app.default.svc.cluster.local"
    );
    assert_eq!(json["held"][0]["requests"], 3);
    assert_eq!(json["hold_totals"]["rejected_total"], 2);
    let back: ReportBody = serde_json::from_value(json).unwrap();
    assert_eq!(back, activation());
    assert!(back.is_activation());
    assert_eq!(back.validate(&Limits::default()), Ok(()));
}

#[test]
fn a_body_refuses_unknown_fields_at_the_top_and_in_held() {
    let mut json = serde_json::to_value(activation()).unwrap();
    json["hold"] = 1.into();
    let err = serde_json::from_value::<ReportBody>(json).unwrap_err();
    assert!(err.to_string().contains("hold"), "{err}");
    let mut json = serde_json::to_value(activation()).unwrap();
    json["held"][0]["requests_total"] = 1.into();
    assert!(serde_json::from_value::<ReportBody>(json).is_err());
}

#[test]
fn each_hold_violation_names_its_field() {
    let limits = Limits::default();
    type Mutation = Box<dyn Fn(&mut ReportBody)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|b| b.held[1].cluster.clear()),
            "held[1].cluster: must not be empty",
        ),
        (
            Box::new(|b| b.held[0].cluster = "c".repeat(513)),
            "held[0].cluster: 513 bytes",
        ),
        (
            Box::new(|b| b.held[0].cluster = "a\nb".into()),
            "held[0].cluster: contains a control character",
        ),
        (
            Box::new(|b| b.held[1].requests = 0),
            "held[1].requests: 0 is outside 1..=1000000",
        ),
        (
            Box::new(|b| b.held[0].requests = 1_000_001),
            "held[0].requests: 1000001 is outside",
        ),
        (
            Box::new(|b| {
                b.held
                    .push(held("outbound|80||web.shop.svc.cluster.local", 2))
            }),
            "held[2].cluster: repeats an earlier destination",
        ),
        (
            Box::new(|b| b.held = (0..257).map(|i| held(&i.to_string(), 1)).collect()),
            "held: 257 entries",
        ),
        (
            Box::new(|b| {
                if let Some(t) = b.hold_totals.as_mut() {
                    t.cancelled_total = 5;
                }
            }),
            "hold_totals: resumed_total + timed_out_total + cancelled_total",
        ),
        (
            Box::new(|b| b.report.routes[0].errors_total = 11),
            "routes[0].errors_total: larger",
        ),
    ];
    for (mutate, expected) in cases {
        let mut body = activation();
        mutate(&mut body);
        let message = body.validate(&limits).unwrap_err().to_string();
        assert!(
            message.starts_with(expected),
            "{message:?} should start with {expected:?}"
        );
    }
    let mut body = activation();
    body.held[0].requests = 0;
    match body.validate(&limits) {
        Err(BodyError::Hold(e)) => assert_eq!(e.field(), "held[0].requests"),
        other => panic!("expected a hold error, got {other:?}"),
    }
}

#[test]
fn every_answer_of_an_older_scaler_reads_as_nothing_cold() {
    for body in [
        r#"{"outcome":"accepted","targets":1}"#,
        r#"{"outcome":"unmatched","targets":0}"#,
        r#"{}"#,
    ] {
        let answer: Answer = serde_json::from_str(body).unwrap();
        assert_eq!(answer, Answer::default(), "{body}");
        assert_eq!(answer.validate(&Limits::default()), Ok(()));
    }
}

#[test]
fn an_answer_lists_cold_destinations_and_round_trips() {
    let body = r#"{"outcome":"accepted","targets":1,
                   "cold":["outbound|8080||app.default.svc.cluster.local"]}"#;
    let answer: Answer = serde_json::from_str(body).unwrap();
    assert_eq!(
        answer.cold,
        ["outbound|8080||app.default.svc.cluster.local"]
    );
    let json = serde_json::to_string(&answer).unwrap();
    assert_eq!(
        json,
        r#"{"cold":["outbound|8080||app.default.svc.cluster.local"]}"#
    );
    assert_eq!(serde_json::to_string(&Answer::default()).unwrap(), "{}");
}

#[test]
fn each_answer_violation_names_its_entry() {
    let limits = Limits::default();
    let answer = |cold: Vec<String>| Answer { cold };
    let cases: Vec<(Answer, &str)> = vec![
        (
            answer(vec!["a".into(), String::new()]),
            "cold[1]: must not be empty",
        ),
        (answer(vec!["c".repeat(513)]), "cold[0]: 513 bytes"),
        (answer(vec!["a\u{0}".into()]), "cold[0]: contains"),
        (
            answer(vec!["a".into(), "b".into(), "a".into()]),
            "cold[2]: repeats",
        ),
        (
            answer((0..257).map(|i| i.to_string()).collect()),
            "cold: 257 entries",
        ),
    ];
    for (answer, expected) in cases {
        let error = answer.validate(&limits).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(expected),
            "{message:?} should start with {expected:?}"
        );
        assert!(expected.starts_with(error.field()), "{expected}");
    }
}

proptest! {
    // Few cases with large inputs: each case already covers up to 300 routes, and the
    // lengths straddle the limits (256-byte routes, 256 entries, 63-byte namespaces).
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn validation_never_panics_and_accepts_only_bounded_reports(
        namespace in "\\PC{0,70}",
        route_names in proptest::collection::vec(
            prop_oneof![9 => "[a-z/ ]{0,12}", 1 => "\\PC{250,260}"],
            250..270,
        ),
        requests in any::<u64>(),
        errors in any::<u64>(),
        window in proptest::option::of(any::<u64>()),
    ) {
        let mut report = sample();
        report.proxy.namespace = namespace;
        report.routes = route_names.iter().map(|n| RouteCounters {
            route: n.clone(), cluster: String::new(), requests_total: requests,
            errors_total: errors, duration_us_total: 0, inflight: 0, window_requests: window,
        }).collect();
        let limits = Limits::default();
        if report.validate(&limits).is_ok() {
            prop_assert!(report.routes.len() <= limits.max_routes);
            prop_assert!(report.routes.iter().all(|r| r.route.len() <= limits.max_route_len));
            prop_assert!(errors <= requests || report.routes.is_empty());
            prop_assert!(!report.proxy.namespace.is_empty());
            prop_assert!(report.routes.iter().all(|r| r.window_requests.is_none_or(|w| w <= requests)));
        }
    }
}

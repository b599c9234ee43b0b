use super::*;
use crate::decision::Freshness;
use surge_wire::{Proxy, RouteCounters, VERSION};

fn spec(extra: serde_json::Value) -> SurgeScalerSpec {
    let mut base = serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "api"},
        "maxReplicas": 10,
        "metric": {"type": "rps", "target": 100}
    });
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(base).unwrap()
}

fn key(name: &str) -> TargetKey {
    TargetKey {
        namespace: "web".into(),
        name: name.into(),
    }
}

fn config() -> WindowConfig {
    WindowConfig {
        stable_ms: 60_000,
        panic_ms: 6_000,
        stale_ms: 10_000,
    }
}

fn register(hub: &Hub, name: &str, spec: &SurgeScalerSpec) -> Arc<Wake> {
    hub.register(
        &key(name),
        Selector::from_spec("web", spec),
        spec.metric.type_,
        config(),
    )
}

fn sidecar(
    pod: &str,
    workload: &str,
    owner: &str,
    seq: u64,
    routes: &[(&str, &str, u64)],
) -> Report {
    Report {
        version: VERSION,
        proxy: Proxy {
            namespace: "web".into(),
            workload: workload.into(),
            pod: pod.into(),
            owner: owner.into(),
            role: Role::Sidecar,
        },
        instance: format!("{pod}-1"),
        seq,
        time_ms: seq * 1000,
        surge: false,
        routes: routes
            .iter()
            .map(|&(route, cluster, requests)| RouteCounters {
                route: route.into(),
                cluster: cluster.into(),
                requests_total: requests,
                errors_total: 0,
                duration_us_total: 0,
                inflight: 0,
            })
            .collect(),
    }
}

fn gateway(seq: u64, routes: &[(&str, &str, u64)]) -> Report {
    let mut r = sidecar("gw-0", "istio-ingressgateway", "", seq, routes);
    r.proxy.namespace = "istio-system".into();
    r.proxy.role = Role::Gateway;
    r
}

/// Sends `count` reports one second apart, with `rate` requests per second on each route.
fn feed(hub: &Hub, make: impl Fn(u64, u64) -> Report, count: u64, rate: u64) {
    for seq in 1..=count {
        hub.ingest(&make(seq, seq * rate), seq * 1000);
    }
}

#[test]
fn sidecars_of_the_target_count_and_others_do_not() {
    let hub = Hub::default();
    register(&hub, "api", &spec(serde_json::json!({})));
    feed(
        &hub,
        |seq, n| sidecar("api-1", "api", "", seq, &[("r", "inbound|80||", n)]),
        10,
        50,
    );
    feed(
        &hub,
        |seq, n| sidecar("other-1", "other", "", seq, &[("r", "inbound|80||", n)]),
        10,
        500,
    );
    let (obs, sources) = hub.observe(&key("api"), 10_000).unwrap();
    assert_eq!(sources, 1);
    assert!((obs.panic - 50.0).abs() < 1.0, "{obs:?}");
}

#[test]
fn an_owner_reference_wins_over_the_workload_name() {
    let hub = Hub::default();
    register(&hub, "api", &spec(serde_json::json!({})));
    let owner = "kubernetes://apis/apps/v1/namespaces/web/deployments/api";
    feed(
        &hub,
        |seq, n| sidecar("api-1", "api-v2", owner, seq, &[("r", "inbound|80||", n)]),
        5,
        40,
    );
    // Same workload name, but owned by a StatefulSet of that name: not the target.
    let sts = "kubernetes://apis/apps/v1/namespaces/web/statefulsets/api";
    feed(
        &hub,
        |seq, n| sidecar("api-0", "api", sts, seq, &[("r", "inbound|80||", n)]),
        5,
        400,
    );
    let (obs, sources) = hub.observe(&key("api"), 5_000).unwrap();
    assert_eq!(sources, 1);
    assert!((obs.panic - 40.0).abs() < 1.0, "{obs:?}");
}

#[test]
fn route_selection_counts_only_the_named_routes() {
    let hub = Hub::default();
    register(
        &hub,
        "api",
        &spec(serde_json::json!({"routes": ["checkout"]})),
    );
    feed(
        &hub,
        |seq, n| {
            sidecar(
                "api-1",
                "api",
                "",
                seq,
                &[
                    ("checkout", "inbound|80||", n),
                    ("health", "inbound|80||", n * 10),
                ],
            )
        },
        10,
        30,
    );
    let (obs, _) = hub.observe(&key("api"), 10_000).unwrap();
    assert!((obs.panic - 30.0).abs() < 1.0, "{obs:?}");
}

#[test]
fn gateway_reports_count_only_clusters_naming_the_service() {
    let hub = Hub::default();
    register(
        &hub,
        "api",
        &spec(
            serde_json::json!({"sources": {"sidecars": false, "gateway": {"service": "api", "port": 8080}}}),
        ),
    );
    feed(
        &hub,
        |seq, n| {
            gateway(
                seq,
                &[
                    ("r", "outbound|8080||api.web.svc.cluster.local", n),
                    ("r", "outbound|9090||api.web.svc.cluster.local", n * 3),
                    ("r", "outbound|8080||api.other.svc.cluster.local", n * 5),
                ],
            )
        },
        10,
        20,
    );
    // The target's own sidecars are switched off.
    feed(
        &hub,
        |seq, n| sidecar("api-1", "api", "", seq, &[("r", "inbound|80||", n)]),
        10,
        1000,
    );
    let (obs, sources) = hub.observe(&key("api"), 10_000).unwrap();
    assert_eq!(sources, 1);
    assert!((obs.panic - 20.0).abs() < 1.0, "{obs:?}");
}

#[test]
fn a_surge_report_wakes_the_target() {
    let hub = Hub::default();
    let wake = register(&hub, "api", &spec(serde_json::json!({})));
    feed(
        &hub,
        |seq, n| sidecar("api-1", "api", "", seq, &[("r", "inbound|80||", n)]),
        3,
        10,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Consume the wake-ups of the warm-up reports.
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(10), wake.surge.notified()).await;
        // Same rate as before (10/s): only the surge flag makes this report significant.
        let mut report = sidecar("api-1", "api", "", 4, &[("r", "inbound|80||", 40)]);
        report.surge = true;
        assert_eq!(hub.ingest(&report, 3_100), Ingested::Counted { targets: 1 });
        tokio::time::timeout(std::time::Duration::from_millis(100), wake.surge.notified())
            .await
            .expect("a surge report must wake the decision");
    });
    let (obs, _) = hub.observe(&key("api"), 3_100).unwrap();
    assert!(obs.burst.is_some());
}

#[test]
fn duplicates_are_reported_as_such_and_unknown_targets_as_zero() {
    let hub = Hub::default();
    let report = sidecar("x-1", "x", "", 1, &[("r", "inbound|80||", 5)]);
    assert_eq!(hub.ingest(&report, 0), Ingested::Baseline);
    assert_eq!(hub.ingest(&report, 10), Ingested::Duplicate);
    let next = sidecar("x-1", "x", "", 2, &[("r", "inbound|80||", 9)]);
    assert_eq!(hub.ingest(&next, 1000), Ingested::Counted { targets: 0 });
}

#[test]
fn re_registering_an_unchanged_target_keeps_its_history() {
    let hub = Hub::default();
    let s = spec(serde_json::json!({}));
    register(&hub, "api", &s);
    feed(
        &hub,
        |seq, n| sidecar("api-1", "api", "", seq, &[("r", "inbound|80||", n)]),
        5,
        50,
    );
    register(&hub, "api", &s);
    let (obs, _) = hub.observe(&key("api"), 5_000).unwrap();
    assert_eq!(obs.freshness, Freshness::Fresh);
    hub.unregister(&key("api"));
    assert!(hub.observe(&key("api"), 5_000).is_none());
}

#[test]
fn cluster_and_owner_names_parse_the_istio_way() {
    assert_eq!(
        parse_outbound_cluster("outbound|8080||api.web.svc.cluster.local"),
        Some((8080, "api.web.svc.cluster.local"))
    );
    assert_eq!(parse_outbound_cluster("inbound|8080||"), None);
    assert_eq!(parse_outbound_cluster("outbound|x||h"), None);
    assert_eq!(
        owner_name("kubernetes://apis/apps/v1/namespaces/web/deployments/api"),
        Some(("web", "deployments", "api"))
    );
    assert_eq!(owner_name("api"), None);
}

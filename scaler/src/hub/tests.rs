use super::*;
use crate::decision::Freshness;
use crate::window::SourceLimits;
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
        window_ms: None,
        routes: routes
            .iter()
            .map(|&(route, cluster, requests)| RouteCounters {
                route: route.into(),
                cluster: cluster.into(),
                requests_total: requests,
                errors_total: 0,
                duration_us_total: 0,
                inflight: 0,
                window_requests: None,
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

fn waypoint(name: &str, namespace: &str, seq: u64, routes: &[(&str, &str, u64)]) -> Report {
    let mut r = sidecar(&format!("{name}-{namespace}"), name, "", seq, routes);
    r.proxy.namespace = namespace.into();
    r.proxy.role = Role::Waypoint;
    r
}

fn bound(namespace: &str, name: &str) -> Option<WaypointRef> {
    Some(WaypointRef {
        namespace: namespace.into(),
        name: name.into(),
    })
}

#[test]
fn a_waypoint_counts_each_service_for_its_own_target_only() {
    let hub = Hub::default();
    for name in ["api", "cart"] {
        register(
            &hub,
            name,
            &spec(serde_json::json!({
                "scaleTargetRef": {"kind": "Deployment", "name": name},
                "sources": {"sidecars": false, "waypoint": {"service": name}}
            })),
        );
        hub.set_waypoint(&key(name), bound("web", "waypoint"));
    }
    let routes = |n: u64| {
        [
            (
                "api-get",
                "inbound-vip|8080|http|api.web.svc.cluster.local",
                n,
            ),
            (
                "api-post",
                "inbound-vip|8080|http/v2|api.web.svc.cluster.local",
                n,
            ),
            (
                "cart",
                "inbound-vip|80|http|cart.web.svc.cluster.local",
                n * 3,
            ),
            // An outbound cluster of the same host is a gateway's, not a waypoint's.
            ("x", "outbound|8080||api.web.svc.cluster.local", n * 7),
        ]
    };
    for seq in 1..=10 {
        let ingested = hub.ingest(
            &waypoint("waypoint", "web", seq, &routes(seq * 10)),
            seq * 1000,
        );
        if seq > 1 {
            assert_eq!(
                ingested,
                Ingested::Counted {
                    targets: 2,
                    refused_routes: 0
                }
            );
        }
    }
    let (api, _) = hub.observe(&key("api"), 10_000).unwrap();
    let (cart, _) = hub.observe(&key("cart"), 10_000).unwrap();
    assert!((api.panic - 20.0).abs() < 1.0, "{api:?}");
    assert!((cart.panic - 30.0).abs() < 1.0, "{cart:?}");
}

#[test]
fn a_waypoint_not_serving_the_service_is_refused_its_traffic_and_nothing_else() {
    let hub = Hub::default();
    let api = serde_json::json!({"sources": {"sidecars": false, "waypoint": {"service": "api"}}});
    register(&hub, "api", &spec(api.clone()));
    let counted = |targets, refused_routes| Ingested::Counted {
        targets,
        refused_routes,
    };
    let route = |n| [("r", "inbound-vip|8080|http|api.web.svc.cluster.local", n)];
    // Not read yet: neither counted nor refused.
    let ours = |seq, n| waypoint("waypoint", "web", seq, &route(n));
    assert_eq!(hub.ingest(&ours(1, 0), 1000), Ingested::Baseline);
    assert_eq!(hub.ingest(&ours(2, 10), 2000), counted(0, 0));
    hub.set_waypoint(&key("api"), bound("web", "waypoint"));
    // Another waypoint, or one of the same name in another namespace: its traffic to api is
    // refused; a route of its that carries nothing now is not (cumulative counters keep every
    // route a proxy ever counted, also after a relabel moved the Service away from it).
    for (name, namespace) in [("other", "web"), ("waypoint", "mesh")] {
        let theirs = |seq, n| waypoint(name, namespace, seq, &route(n));
        assert_eq!(hub.ingest(&theirs(1, 0), 1000), Ingested::Baseline);
        assert_eq!(hub.ingest(&theirs(2, 10), 2000), counted(0, 1));
        assert_eq!(hub.ingest(&theirs(3, 10), 3000), counted(0, 0), "idle");
    }
    assert_eq!(hub.ingest(&ours(3, 20), 3000), counted(1, 0));
    // Re-registering (a status update) keeps the binding.
    register(&hub, "api", &spec(api.clone()));
    assert_eq!(hub.ingest(&ours(4, 30), 4000), counted(1, 0));
    // A second target on the same Service, bound (as read for it) to another waypoint: the
    // route counts for the first, so it is not refused, and counted once.
    let twin = serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "twin"},
        "sources": {"sidecars": false, "waypoint": {"service": "api"}}
    });
    register(&hub, "twin", &spec(twin));
    hub.set_waypoint(&key("twin"), bound("web", "other"));
    assert_eq!(hub.ingest(&ours(5, 40), 5000), counted(1, 0));
    // Another Service for `api`: the binding read for the old one is dropped until read again.
    let moved =
        serde_json::json!({"sources": {"sidecars": false, "waypoint": {"service": "api-v2"}}});
    register(&hub, "api", &spec(moved));
    let route_v2 = [(
        "r",
        "inbound-vip|8080|http|api-v2.web.svc.cluster.local",
        50,
    )];
    assert_eq!(
        hub.ingest(&waypoint("waypoint", "web", 6, &route_v2), 6000),
        counted(0, 0)
    );
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
        assert_eq!(
            hub.ingest(&report, 3_100),
            Ingested::Counted {
                targets: 1,
                refused_routes: 0
            }
        );
        tokio::time::timeout(std::time::Duration::from_millis(100), wake.surge.notified())
            .await
            .expect("a surge report must wake the decision");
    });
    // The flag wakes the decision; the rate did not rise, so there is no burst to act on.
    let (obs, _) = hub.observe(&key("api"), 3_100).unwrap();
    assert_eq!(obs.burst, None);
}

#[test]
fn duplicates_are_reported_as_such_and_unknown_targets_as_zero() {
    let hub = Hub::default();
    let report = sidecar("x-1", "x", "", 1, &[("r", "inbound|80||", 5)]);
    assert_eq!(hub.ingest(&report, 0), Ingested::Baseline);
    assert_eq!(hub.ingest(&report, 10), Ingested::Duplicate);
    let next = sidecar("x-1", "x", "", 2, &[("r", "inbound|80||", 9)]);
    assert_eq!(
        hub.ingest(&next, 1000),
        Ingested::Counted {
            targets: 0,
            refused_routes: 0
        }
    );
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
        owner_name("kubernetes://apis/apps/v1/namespaces/web/deployments/api"),
        Some(("web", "deployments", "api"))
    );
    assert_eq!(owner_name("api"), None);
}

#[test]
fn a_target_refuses_sources_beyond_its_limit_and_keeps_counting_the_others() {
    let hub = Hub::with_limits(SourceLimits {
        max_sources_per_target: 2,
        ..SourceLimits::default()
    });
    register(&hub, "api", &spec(serde_json::json!({})));
    let pod = |name: &'static str, seq: u64| {
        sidecar(name, "api", "", seq, &[("r", "inbound|80||", seq * 50)])
    };
    let full = Ingested::OverCapacity(Refusal::TargetSources {
        limit: 2,
        counted: 0,
    });
    for seq in 1..=5 {
        let now = seq * 1000;
        assert_ne!(hub.ingest(&pod("api-1", seq), now), full, "seq {seq}");
        assert_ne!(hub.ingest(&pod("api-2", seq), now), full, "seq {seq}");
        assert_eq!(hub.ingest(&pod("api-3", seq), now), full, "seq {seq}");
    }
    let (obs, sources) = hub.observe(&key("api"), 5_000).unwrap();
    assert_eq!(sources, 2);
    assert!(
        (obs.panic - 100.0).abs() < 1.0,
        "two pods at 50 rps: {obs:?}"
    );
}

#[test]
fn a_flooding_pod_is_throttled_and_moves_the_rate_no_more_than_its_real_traffic() {
    let hub = Hub::default();
    register(&hub, "api", &spec(serde_json::json!({})));
    // One report every millisecond for 6 s, 100 real requests per second.
    let mut outcomes = std::collections::HashMap::<&str, u64>::new();
    for now in 1..=6_000u64 {
        let mut report = sidecar("api-1", "api", "", now, &[("r", "inbound|80||", now / 10)]);
        report.time_ms = now;
        report.surge = true;
        let outcome = match hub.ingest(&report, now) {
            Ingested::Throttled { .. } => "throttled",
            Ingested::Counted { .. } | Ingested::Baseline => "counted",
            other => panic!("{other:?}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    // Default limits: 5 back to back, then one per 50 ms.
    assert_eq!(outcomes["counted"], 5 + 5_996 / 50, "{outcomes:?}");
    let (obs, sources) = hub.observe(&key("api"), 6_000).unwrap();
    assert_eq!(sources, 1);
    assert!((obs.panic - 100.0).abs() < 2.0, "{obs:?}");
}

#[test]
fn replayed_and_duplicated_reports_change_no_rate() {
    let hub = Hub::default();
    register(&hub, "api", &spec(serde_json::json!({})));
    let make = |seq: u64| sidecar("api-1", "api", "", seq, &[("r", "inbound|80||", seq * 70)]);
    for seq in 1..=10 {
        hub.ingest(&make(seq), seq * 1000);
    }
    let (before, _) = hub.observe(&key("api"), 10_000).unwrap();
    // Every report again, newest first then oldest first, and the newest many times.
    for seq in (1..=10).rev().chain(1..=10).chain([10; 20]) {
        assert_eq!(
            hub.ingest(&make(seq), 10_000),
            Ingested::Duplicate,
            "seq {seq}"
        );
    }
    let (after, _) = hub.observe(&key("api"), 10_000).unwrap();
    assert_eq!(before, after);
    assert!((after.panic - 70.0).abs() < 1.0, "{after:?}");
}

#[test]
fn skewed_frozen_or_jumping_proxy_clocks_do_not_change_the_rates() {
    const DAY: u64 = 86_400_000;
    // (case, the proxy's time_ms for a report sent at scaler time `now`). A constant offset
    // cancels out in the interval; a frozen or jumping clock falls back to the scaler's. (A
    // clock running at the wrong speed within 2x + 1 s of the scaler's is trusted: see
    // SECURITY.md.)
    type ProxyClock = fn(u64) -> u64;
    let cases: &[(&str, ProxyClock)] = &[
        ("a clock a day ahead", |now| now + DAY),
        ("a clock near the epoch", |now| now - 1_000_000 + 5),
        ("a clock decades ahead", |now| now + 40 * 365 * DAY),
        ("a frozen clock", |_| 123_456),
        ("a clock jumping around", |now| {
            if now % 2000 == 0 { now + DAY } else { now }
        }),
    ];
    let run = |time_ms: fn(u64) -> u64| {
        let hub = Hub::default();
        register(&hub, "api", &spec(serde_json::json!({})));
        for seq in 1..=20u64 {
            let now = 1_000_000 + seq * 1000;
            let mut report = sidecar("api-1", "api", "", seq, &[("r", "inbound|80||", seq * 40)]);
            report.time_ms = time_ms(now);
            hub.ingest(&report, now);
        }
        hub.observe(&key("api"), 1_020_000).unwrap().0
    };
    let reference = run(|now| now);
    assert!((reference.panic - 40.0).abs() < 1.0, "{reference:?}");
    for &(case, time_ms) in cases {
        let obs = run(time_ms);
        assert_eq!(
            (obs.stable, obs.panic, obs.freshness),
            (reference.stable, reference.panic, reference.freshness),
            "{case}"
        );
    }
}

#[test]
fn gateway_reports_count_only_from_the_allowed_namespaces() {
    let hub = Hub::default();
    hub.set_gateway_namespaces(Some(vec!["istio-system".into()]));
    register(
        &hub,
        "api",
        &spec(serde_json::json!({"sources": {"gateway": {"service": "api"}}})),
    );
    let cluster = "outbound|80||api.web.svc.cluster.local";
    // (case, the gateway's namespace, expected outcome of its second report)
    let cases = [
        (
            "a gateway in an allowed namespace counts",
            "istio-system",
            Ingested::Counted {
                targets: 1,
                refused_routes: 0,
            },
        ),
        (
            "a workload elsewhere claiming the gateway role does not",
            "evil",
            Ingested::GatewayNamespace,
        ),
    ];
    for (case, namespace, expected) in cases {
        let make = |seq: u64| {
            let mut r = gateway(seq, &[("r", cluster, seq * 100)]);
            r.proxy.namespace = namespace.into();
            r.instance = format!("{namespace}-gw");
            r
        };
        hub.ingest(&make(1), 1000);
        assert_eq!(hub.ingest(&make(2), 2000), expected, "{case}");
    }
}

mod zero;

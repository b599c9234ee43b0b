//! Scale to zero in the hub: the held demand (latest count per instance, summed), activation
//! wake-ups, which held clusters count, the cold list, the quiet sources, the hold totals.

use futures::FutureExt;
use surge_wire::{Held, HoldTotals, ReportBody};

use super::*;
use crate::zero::Temperature;

const APP: &str = "outbound|8080||app.web.svc.cluster.local";

/// A scale-to-zero SurgeScaler `web/app` for Service `app`, port 8080 (or any with `None`).
fn zero_target(hub: &Hub, name: &str, port: Option<u16>) -> Arc<Wake> {
    let mut scale_to_zero = serde_json::json!({"service": name, "idleSeconds": 10});
    if let Some(port) = port {
        scale_to_zero["port"] = port.into();
    }
    let spec = spec(serde_json::json!({"minReplicas": 0, "scaleToZero": scale_to_zero}));
    let wake = register(hub, name, &spec);
    let destination = spec
        .scale_to_zero
        .as_ref()
        .map(|z| Destination::from_spec("web", z));
    hub.set_scale_to_zero(&key(name), destination, 10_000);
    wake
}

/// A client sidecar's report (another workload, in `shop`) holding `held` requests.
fn client(pod: &str, seq: u64, held: &[(&str, u64)]) -> ReportBody {
    let mut report = sidecar(pod, "checkout", "", seq, &[]);
    report.proxy.namespace = "shop".into();
    ReportBody {
        report,
        held: held
            .iter()
            .map(|&(cluster, requests)| Held {
                cluster: cluster.into(),
                requests,
            })
            .collect(),
        hold_totals: None,
    }
}

fn held_now(hub: &Hub, name: &str, now: Millis) -> (u64, usize) {
    let view = hub.zero_view(&key(name), now).unwrap();
    (view.held, view.holders)
}

#[test]
fn the_held_demand_is_each_instances_latest_count_summed_never_a_sum_over_reports() {
    let hub = Hub::default();
    zero_target(&hub, "app", Some(8080));
    // One proxy reports the same 3 held requests every 100 ms: still 3.
    for seq in 1..=5 {
        hub.ingest_body(&client("c-1", seq, &[(APP, 3)]), 1_000 + seq * 100);
        assert_eq!(
            held_now(&hub, "app", 1_000 + seq * 100),
            (3, 1),
            "seq {seq}"
        );
    }
    // A second proxy holds 2: 5 by 2 proxies.
    hub.ingest_body(&client("c-2", 1, &[(APP, 2)]), 1_600);
    assert_eq!(held_now(&hub, "app", 1_600), (5, 2));
    // The first one's requests grow to 4, then are released (its next report holds none).
    hub.ingest_body(&client("c-1", 6, &[(APP, 4)]), 1_700);
    assert_eq!(held_now(&hub, "app", 1_700), (6, 2));
    hub.ingest_body(&client("c-1", 7, &[]), 1_800);
    assert_eq!(held_now(&hub, "app", 1_800), (2, 1));
    // A replayed report changes nothing.
    hub.ingest_body(&client("c-1", 6, &[(APP, 4)]), 1_850);
    assert_eq!(held_now(&hub, "app", 1_850), (2, 1));
    // The second proxy goes silent: its hold lapses after the staleness bound (10 s).
    assert_eq!(held_now(&hub, "app", 11_600), (2, 1));
    assert_eq!(held_now(&hub, "app", 11_601), (0, 0));
}

#[test]
fn an_activation_report_wakes_its_target_at_once() {
    let hub = Hub::default();
    let wake = zero_target(&hub, "app", Some(8080));
    let other = zero_target(&hub, "other", Some(8080));
    assert!(wake.surge.notified().now_or_never().is_none());
    hub.ingest_body(&client("c-1", 1, &[(APP, 1)]), 1_000);
    assert!(wake.surge.notified().now_or_never().is_some());
    assert!(other.surge.notified().now_or_never().is_none());
}

#[test]
fn a_hold_counts_for_the_target_whose_host_and_port_it_names_subsets_and_waypoints_included() {
    let cases = [
        (APP, Some(8080), 1),
        ("outbound|8080|v1|app.web.svc.cluster.local", Some(8080), 1),
        ("outbound|9090||app.web.svc.cluster.local", Some(8080), 0),
        ("outbound|9090||app.web.svc.cluster.local", None, 1),
        ("outbound|8080||app.shop.svc.cluster.local", Some(8080), 0),
        // A waypoint's name for the same Service port.
        (
            "inbound-vip|8080|http|app.web.svc.cluster.local",
            Some(8080),
            1,
        ),
        (
            "inbound-vip|8080|http/v1|app.web.svc.cluster.local",
            Some(8080),
            1,
        ),
        (
            "inbound-vip|9090|http|app.web.svc.cluster.local",
            Some(8080),
            0,
        ),
        ("inbound|8080||", Some(8080), 0),
        ("not a cluster", None, 0),
    ];
    for (cluster, port, held) in cases {
        let hub = Hub::default();
        zero_target(&hub, "app", port);
        hub.ingest_body(&client("c-1", 1, &[(cluster, 1)]), 1_000);
        assert_eq!(
            held_now(&hub, "app", 1_000).0,
            held,
            "{cluster} with {port:?}"
        );
    }
}

#[test]
fn the_cold_list_follows_the_replicas_and_the_ready_endpoints() {
    let hub = Hub::default();
    zero_target(&hub, "app", Some(8080));
    let temperature = |hub: &Hub| hub.zero_view(&key("app"), 0).unwrap().temperature;
    assert!(hub.cold().is_empty(), "nothing known: warm");
    hub.set_replicas(&key("app"), Some(1));
    hub.set_ready_endpoints(&key("app"), Some(1));
    assert!(hub.cold().is_empty());
    hub.set_replicas(&key("app"), Some(0));
    assert_eq!(&*hub.cold(), [APP]);
    assert_eq!(temperature(&hub), Temperature::Cold);
    hub.set_ready_endpoints(&key("app"), Some(0));
    hub.set_replicas(&key("app"), Some(2));
    assert_eq!(&*hub.cold(), [APP], "scaled up, no ready endpoint yet");
    assert_eq!(temperature(&hub), Temperature::Activating);
    hub.set_ready_endpoints(&key("app"), Some(1));
    assert!(hub.cold().is_empty());
    assert_eq!(hub.cold_targets(), 0);
    // Gone: never listed again.
    hub.set_replicas(&key("app"), Some(0));
    assert_eq!(hub.cold_targets(), 1);
    hub.unregister(&key("app"));
    assert!(hub.cold().is_empty());
    assert_eq!(hub.cold_targets(), 0);
}

#[test]
fn a_replica_that_read_zero_replicas_lists_the_target_warm_once_an_endpoint_is_ready() {
    // A replica that does not own the target reads its scale every few seconds: it still
    // reads 0 when the owner's scale-up brings the first ready endpoint.
    let hub = Hub::default();
    zero_target(&hub, "app", Some(8080));
    hub.set_replicas(&key("app"), Some(1));
    hub.set_ready_endpoints(&key("app"), Some(1));
    hub.set_replicas(&key("app"), Some(0));
    // The pods going away still show ready endpoints for a while: cold all the same.
    assert_eq!(&*hub.cold(), [APP]);
    hub.set_ready_endpoints(&key("app"), Some(0));
    assert_eq!(&*hub.cold(), [APP]);
    // The owner scales up; this replica sees only the endpoint.
    hub.set_ready_endpoints(&key("app"), Some(1));
    assert!(hub.cold().is_empty(), "a ready endpoint after zero: warm");
    // Its stale read, written again by its next step, changes nothing.
    hub.set_replicas(&key("app"), Some(0));
    assert!(hub.cold().is_empty());
    // A fresh read that differs: the scale decides again.
    hub.set_replicas(&key("app"), Some(1));
    hub.set_replicas(&key("app"), Some(0));
    assert_eq!(&*hub.cold(), [APP], "scaled to zero again: cold");
    // A first listing (from unknown) with ready endpoints while the scale reads 0 proves
    // nothing: those may be the pods being scaled away.
    let fresh = Hub::default();
    zero_target(&fresh, "app", Some(8080));
    fresh.set_replicas(&key("app"), Some(0));
    fresh.set_ready_endpoints(&key("app"), Some(2));
    assert_eq!(&*fresh.cold(), [APP]);
}

#[test]
fn without_a_port_the_destination_is_named_by_the_services_ports() {
    let hub = Hub::default();
    zero_target(&hub, "app", None);
    hub.set_replicas(&key("app"), Some(0));
    assert!(
        hub.cold().is_empty(),
        "no port known: nothing can be listed"
    );
    assert!(!hub.zero_view(&key("app"), 0).unwrap().named);
    hub.set_destination_ports(&key("app"), vec![8080, 80, 8080]);
    assert_eq!(
        &*hub.cold(),
        [
            // Sorted as strings.
            "outbound|8080||app.web.svc.cluster.local",
            "outbound|80||app.web.svc.cluster.local",
        ]
    );
    assert!(hub.zero_view(&key("app"), 0).unwrap().named);
}

#[test]
fn the_cold_list_is_sorted_and_bounded_by_the_wires_limit() {
    let hub = Hub::default();
    for i in 0..300 {
        let name = format!("app-{i:03}");
        zero_target(&hub, &name, Some(80));
        hub.set_replicas(&key(&name), Some(0));
    }
    let cold = hub.cold();
    assert_eq!(cold.len(), MAX_COLD);
    assert_eq!(cold[0], "outbound|80||app-000.web.svc.cluster.local");
    assert!(cold.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(hub.cold_targets(), 300);
    let answer = surge_wire::Answer {
        cold: cold.to_vec(),
    };
    assert_eq!(answer.validate(&surge_wire::Limits::default()), Ok(()));
}

#[test]
fn the_sources_are_quiet_only_while_their_latest_reports_all_say_zero() {
    let hub = Hub::default();
    zero_target(&hub, "app", Some(8080));
    let quiet = |hub: &Hub, now| hub.zero_view(&key("app"), now).unwrap().quiet_since;
    // The target's own sidecars (its workload is `api`).
    let report = |pod: &str, seq: u64, total: u64, inflight: u64| {
        let mut r = sidecar(pod, "api", "", seq, &[("r", "inbound|8080||", total)]);
        r.routes[0].inflight = inflight;
        r
    };
    // A baseline is not quiet (what it completed is unknown).
    hub.ingest(&report("app-1", 1, 100, 0), 1_000);
    assert_eq!(quiet(&hub, 1_000), None);
    hub.ingest(&report("app-1", 2, 100, 0), 2_000);
    assert_eq!(quiet(&hub, 2_500), Some(2_000));
    // A second source: its baseline interrupts, its zero report resumes.
    hub.ingest(&report("app-2", 1, 7, 0), 3_000);
    assert_eq!(quiet(&hub, 3_000), None);
    hub.ingest(&report("app-2", 2, 7, 0), 4_000);
    assert_eq!(quiet(&hub, 4_000), Some(4_000));
    // A request in flight, then one completed, each interrupt.
    hub.ingest(&report("app-1", 3, 100, 1), 5_000);
    assert_eq!(quiet(&hub, 5_000), None);
    hub.ingest(&report("app-1", 4, 101, 0), 6_000);
    assert_eq!(quiet(&hub, 6_000), None);
    hub.ingest(&report("app-1", 5, 101, 0), 7_000);
    assert_eq!(quiet(&hub, 7_000), Some(7_000));
    // A held request interrupts too, and the quiet resumes after it.
    hub.ingest_body(&client("c-1", 1, &[(APP, 1)]), 8_000);
    assert_eq!(quiet(&hub, 8_000), None);
    hub.ingest_body(&client("c-1", 2, &[]), 8_100);
    assert_eq!(quiet(&hub, 8_100), Some(8_001));
}

#[test]
fn hold_totals_give_what_each_proxy_added_since_its_previous_report() {
    let hub = Hub::default();
    let totals = |held_total, resumed_total| HoldTotals {
        held_total,
        resumed_total,
        ..HoldTotals::default()
    };
    let with = |seq, t: HoldTotals| {
        let mut body = client("c-1", seq, &[]);
        body.hold_totals = Some(t);
        body
    };
    assert_eq!(
        hub.ingest_body(&with(1, totals(5, 2)), 1_000).1,
        None,
        "a baseline"
    );
    assert_eq!(
        hub.ingest_body(&with(2, totals(9, 6)), 2_000).1,
        Some(totals(4, 4))
    );
    // Went down: the proxy restarted; a new baseline, never a negative count.
    assert_eq!(hub.ingest_body(&with(3, totals(1, 0)), 3_000).1, None);
    assert_eq!(
        hub.ingest_body(&with(4, totals(2, 1)), 4_000).1,
        Some(totals(1, 1))
    );
}

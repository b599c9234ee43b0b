//! The filter in role `waypoint` on a real Envoy 1.40 configured as an Istio 1.30 ambient
//! waypoint is (`surge_sandbox::envoy::WaypointBootstrap`: `connect_terminate`, the internal
//! listener `main_internal` with one filter chain per Service port, `inbound-vip` clusters),
//! with two Services behind it, reporting to a capture server that stands in for the scaler.
//!
//! ```text
//!  CONNECT 10.96.0.10:8080 / 10.96.0.11:80 --> connect_terminate --> main_internal
//!     chain inbound-vip|8080|http|api.shop... (filter) --> api upstream
//!     chain inbound-vip|80|http|cart.shop...   (filter) --> cart upstream
//!  filter --report--> capture: counts per (route, cluster), the waypoint's own identity
//! ```

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::json;
use surge_e2e::capture::{Capture, Captured};
use surge_e2e::upstream::Upstream;
use surge_e2e::waypoint::send;
use surge_sandbox::envoy::{
    Envoy, EnvoyOptions, WasmFilter, WaypointBootstrap, WaypointService, locate_filter_wasm,
};
use surge_wire::Role;

const API_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
const CART_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 11));
const API: &str = "inbound-vip|8080|http|api.shop.svc.cluster.local";
const CART: &str = "inbound-vip|80|http|cart.shop.svc.cluster.local";

/// (route, cluster) -> requests, in the latest report.
fn counts(report: &Captured) -> BTreeMap<(String, String), u64> {
    report
        .report
        .routes
        .iter()
        .map(|r| ((r.route.clone(), r.cluster.clone()), r.requests_total))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_counts_each_service_and_route_exactly_under_its_own_identity() {
    let (api, cart) = (
        Upstream::start().await.unwrap(),
        Upstream::start().await.unwrap(),
    );
    let capture = Capture::start().await.unwrap();
    let services = vec![
        WaypointService {
            name: "api".into(),
            namespace: "shop".into(),
            vip: API_VIP,
            port: 8080,
            upstream: api.addr(),
            // An HTTPRoute `api-routes` with one rule: Istio names it shop.api-routes.0.
            routes: vec![("shop.api-routes.0".into(), "/v2".into())],
        },
        WaypointService {
            name: "cart".into(),
            namespace: "shop".into(),
            vip: CART_VIP,
            port: 80,
            upstream: cart.addr(),
            routes: Vec::new(),
        },
    ];
    let config = json!({"role": "waypoint", "report_interval_ms": 200});
    let bootstrap = WaypointBootstrap::new("shop", services, capture.addr())
        .filter(WasmFilter::surge(locate_filter_wasm().unwrap(), &config));
    let dir = std::env::temp_dir().join(format!("surge-e2e-waypoint-{}", std::process::id()));
    let mut options = EnvoyOptions::new(dir).unwrap();
    options.concurrency = 2;
    let envoy = tokio::task::block_in_place(|| Envoy::start_config(&bootstrap.to_json(), &options))
        .unwrap();
    let waypoint = envoy.listener_addr();

    // Over several tunnels each, so that both worker threads' VMs count.
    let api_host = ("api.shop.svc.cluster.local", API_VIP, 8080);
    let cart_host = ("cart.shop.svc.cluster.local", CART_VIP, 80);
    let (a, b, c) = tokio::join!(
        send(waypoint, api_host, "/v2/items", 300, 0, 4),
        send(waypoint, api_host, "/health", 120, 0, 3),
        send(waypoint, cart_host, "/basket", 210, 0, 4),
    );
    assert_eq!(a.unwrap(), (300, 0));
    assert_eq!(b.unwrap(), (120, 0));
    assert_eq!(c.unwrap(), (210, 0));
    assert_eq!((api.requests(), cart.requests()), (420, 210));

    let expected: BTreeMap<(String, String), u64> = [
        (("shop.api-routes.0".to_owned(), API.to_owned()), 300),
        (("default".to_owned(), API.to_owned()), 120),
        (("default".to_owned(), CART.to_owned()), 210),
    ]
    .into();
    let exact = capture
        .wait_until(Duration::from_secs(10), |reports| {
            reports.last().is_some_and(|r| counts(r) == expected)
        })
        .await;
    let reports = capture.reports();
    let last = reports.last().expect("the waypoint reported");
    assert!(exact, "counts {:?}, expected {expected:?}", counts(last));
    // One report stream for the proxy, under the waypoint's identity.
    let proxy = &last.report.proxy;
    assert_eq!(proxy.role, Role::Waypoint);
    assert_eq!(
        (proxy.namespace.as_str(), proxy.workload.as_str()),
        ("shop", "waypoint")
    );
    let instances: std::collections::BTreeSet<&str> =
        reports.iter().map(|r| r.report.instance.as_str()).collect();
    assert_eq!(instances.len(), 1, "{instances:?}");
}

/// At zero the waypoint is where a Service's requests arrive: one to a Service the scaler lists
/// cold (by its `outbound|...` name, as for any caller) is held at its headers and named in an
/// activation report by the waypoint's own cluster name, while the other Service's requests
/// pass; it is answered once the scaler says warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_holds_a_request_to_a_cold_service_and_lets_the_others_pass() {
    use surge_e2e::cold_scaler::ColdScaler;
    use surge_e2e::waypoint::{get, tunnel};

    let (api, cart) = (
        Upstream::start().await.unwrap(),
        Upstream::start().await.unwrap(),
    );
    let scaler = ColdScaler::start().await.unwrap();
    scaler.set_cold(&["outbound|8080||api.shop.svc.cluster.local"]);
    let services = vec![
        WaypointService {
            name: "api".into(),
            namespace: "shop".into(),
            vip: API_VIP,
            port: 8080,
            upstream: api.addr(),
            routes: Vec::new(),
        },
        WaypointService {
            name: "cart".into(),
            namespace: "shop".into(),
            vip: CART_VIP,
            port: 80,
            upstream: cart.addr(),
            routes: Vec::new(),
        },
    ];
    let config = json!({"role": "waypoint", "report_interval_ms": 200});
    let bootstrap = WaypointBootstrap::new("shop", services, scaler.addr())
        .filter(WasmFilter::surge(locate_filter_wasm().unwrap(), &config));
    let dir = std::env::temp_dir().join(format!("surge-e2e-waypoint-hold-{}", std::process::id()));
    let mut options = EnvoyOptions::new(dir).unwrap();
    options.concurrency = 2;
    let envoy = tokio::task::block_in_place(|| Envoy::start_config(&bootstrap.to_json(), &options))
        .unwrap();
    let waypoint = envoy.listener_addr();
    // Two answers: every VM has read the cold list.
    assert!(
        scaler
            .wait_until(Duration::from_secs(5), |r| r.len() >= 3)
            .await
    );

    let mut to_api = tunnel(waypoint, API_VIP, 8080).await.unwrap();
    let held =
        tokio::spawn(async move { get(&mut to_api, "api.shop.svc.cluster.local", "/").await });
    let activated = scaler
        .wait_until(Duration::from_secs(2), |r| {
            r.iter().any(|r| r.held(API) == 1)
        })
        .await;
    assert!(
        activated,
        "no activation report naming {API}: {:?}",
        scaler.reports().last()
    );
    // The warm Service is not held.
    let mut to_cart = tunnel(waypoint, CART_VIP, 80).await.unwrap();
    let cart_status = tokio::time::timeout(
        Duration::from_secs(2),
        get(&mut to_cart, "cart.shop.svc.cluster.local", "/"),
    )
    .await
    .expect("a request to the warm Service waited")
    .unwrap();
    assert_eq!(cart_status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !held.is_finished(),
        "the request to the cold Service went through"
    );
    assert_eq!(api.requests(), 0);

    scaler.set_cold(&[]);
    let status = tokio::time::timeout(Duration::from_secs(3), held)
        .await
        .expect("not resumed within 3 s of warm")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!((api.requests(), cart.requests()), (1, 1));
}

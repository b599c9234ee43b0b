//! Ambient mode on the real control plane: three Services behind one waypoint (a real Envoy
//! configured as an Istio 1.30 waypoint, with the filter in role `waypoint`), each with a
//! SurgeScaler fed by `sources.waypoint`, the scaler as the chart's pod. `api` is bound to the
//! waypoint by its namespace's `istio.io/use-waypoint` label, `cart` by its own, and `ledger`
//! opts out (`none`).
//!
//! ```text
//!  load --CONNECT--> waypoint Envoy --> api / cart / ledger upstreams
//!                       | reports (routes keyed inbound-vip|<port>|http|<host>)
//!                       v
//!                  scaler pod: counts api's and cart's routes, refuses ledger's
//!                       --> PATCH deployments/{api,cart}/scale, each to its own load
//! ```
//!
//! And scale from zero through the waypoint: a Service at zero whose first request it holds.

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::json;
use surge_e2e::installed::{
    TOKEN, apply, eventually, install, kubectl_ok, pause_deployment, replicas, scale_writes,
};
use surge_e2e::scaler::http_client;
use surge_e2e::upstream::Upstream;
use surge_e2e::waypoint::send;
use surge_sandbox::envoy::{
    Envoy, EnvoyOptions, WasmFilter, WaypointBootstrap, WaypointService, locate_filter_wasm,
};

/// A Service `shop/<name>` on `port` with these `labels`, and its SurgeScaler fed by the
/// waypoint only (20 rps per replica).
fn service_and_scaler(name: &str, port: u16, labels: &str) -> String {
    format!(
        "{deployment}---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop, labels: {{{labels}}}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: surge.dev/v1alpha1
kind: SurgeScaler
metadata: {{name: {name}, namespace: shop}}
spec:
  scaleTargetRef: {{kind: Deployment, name: {name}}}
  minReplicas: 1
  maxReplicas: 10
  metric: {{type: rps, target: 20}}
  sources: {{sidecars: false, waypoint: {{service: {name}}}}}
",
        deployment = pause_deployment("shop", name, 1)
    )
}

fn events(kube: &surge_sandbox::real::RealKube, reason: &str) -> String {
    kubectl_ok(
        kube,
        &[
            "get",
            "events",
            "-n",
            "shop",
            "--field-selector",
            &format!("reason={reason}"),
        ],
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_behind_a_waypoint_scales_on_its_own_traffic_and_unbound_ones_are_refused() {
    let kube = install("waypoint", &["shop"], &[]).await;
    kubectl_ok(
        &kube,
        &[
            "label",
            "namespace",
            "shop",
            "istio.io/use-waypoint=waypoint",
        ],
        None,
    );
    apply(&kube, &service_and_scaler("api", 8080, ""));
    apply(
        &kube,
        &service_and_scaler("cart", 80, "istio.io/use-waypoint: waypoint"),
    );
    apply(
        &kube,
        &service_and_scaler("ledger", 80, "istio.io/use-waypoint: none"),
    );
    // The scaler read each binding and said so.
    eventually(
        "the scaler reads the waypoint bindings",
        Duration::from_secs(30),
        || async {
            let bound = events(&kube, "WaypointBound");
            let none = events(&kube, "NoWaypoint");
            (bound.contains("surgescaler/api")
                && bound.contains("surgescaler/cart")
                && none.contains("surgescaler/ledger"))
            .then_some(())
        },
    )
    .await;
    let described = kubectl_ok(
        &kube,
        &["describe", "surgescaler", "api", "-n", "shop"],
        None,
    );
    assert!(
        described.contains("Service api is served by waypoint shop/waypoint"),
        "{described}"
    );

    let upstreams = [
        Upstream::start().await.unwrap(),
        Upstream::start().await.unwrap(),
        Upstream::start().await.unwrap(),
    ];
    let vip = |last| IpAddr::V4(Ipv4Addr::new(10, 96, 0, last));
    let services = ["api", "cart", "ledger"]
        .iter()
        .zip([8080, 80, 80])
        .zip(&upstreams)
        .enumerate()
        .map(|(i, ((name, port), upstream))| WaypointService {
            name: (*name).into(),
            namespace: "shop".into(),
            vip: vip(10 + i as u8),
            port,
            upstream: upstream.addr(),
            routes: Vec::new(),
        })
        .collect();
    let ingest = kube.scaler_ingest().expect("the scaler pod's ingest");
    let config = json!({"role": "waypoint", "token": TOKEN});
    let bootstrap = WaypointBootstrap::new("shop", services, ingest)
        .filter(WasmFilter::surge(locate_filter_wasm().unwrap(), &config));
    let dir = surge_e2e::installed::dir("waypoint-envoy");
    let mut options = EnvoyOptions::new(dir).unwrap();
    options.concurrency = 2;
    let envoy = tokio::task::block_in_place(|| Envoy::start_config(&bootstrap.to_json(), &options))
        .unwrap();
    let waypoint = envoy.listener_addr();

    // 100 rps to api (5 replicas' worth), 40 to cart (2 replicas' worth), 100 to ledger
    // (refused): each scales to its own traffic, ledger not at all.
    let (a, c, l) = tokio::join!(
        send(
            waypoint,
            ("api.shop.svc.cluster.local", vip(10), 8080),
            "/",
            800,
            100,
            4
        ),
        send(
            waypoint,
            ("cart.shop.svc.cluster.local", vip(11), 80),
            "/",
            320,
            40,
            2
        ),
        send(
            waypoint,
            ("ledger.shop.svc.cluster.local", vip(12), 80),
            "/",
            800,
            100,
            4
        ),
    );
    for sent in [a.unwrap(), c.unwrap(), l.unwrap()] {
        assert_eq!(sent.1, 0, "requests failed through the waypoint: {sent:?}");
    }

    let up = eventually(
        "api is scaled up on the waypoint's reports",
        Duration::from_secs(10),
        || async {
            scale_writes(&kube, "shop", "api")
                .iter()
                .filter_map(replicas)
                .max()
                .filter(|&r| r >= 3)
        },
    )
    .await;
    assert!(up <= 10, "api scaled to {up}");
    // Let the reports of the load's last seconds arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = |name| {
        scale_writes(&kube, "shop", name)
            .iter()
            .filter_map(replicas)
            .max()
    };
    let (api_peak, cart_peak) = (peak("api"), peak("cart"));
    eprintln!("peaks: api {api_peak:?}, cart {cart_peak:?}");
    // Each on its own traffic: api's 100 rps are not cart's, nor the other way round.
    assert!(
        api_peak.is_some_and(|p| (4..=7).contains(&p)),
        "api peaked at {api_peak:?} on 100 rps"
    );
    assert!(
        cart_peak.is_some_and(|p| (2..=3).contains(&p)),
        "cart peaked at {cart_peak:?} on 40 rps"
    );
    assert!(
        scale_writes(&kube, "shop", "ledger").is_empty(),
        "ledger scaled on a waypoint that does not serve it"
    );

    // The waypoint's ledger routes were refused, and counted as such.
    let admin = kube.scaler_admin().expect("the scaler's admin endpoint");
    let client = http_client();
    let metrics =
        surge_e2e::scaler::request(&client, "GET", &format!("http://{admin}/metrics"), "", None)
            .await
            .body;
    let refused: f64 = metrics
        .lines()
        .find(|l| l.starts_with("surge_waypoint_routes_refused_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(refused >= 1.0, "no refused waypoint route:\n{metrics}");

    // Another proxy of the namespace claiming to be a waypoint for api: its traffic to api is
    // refused (not counted, said so), and it is still answered, with the cold list.
    let intruder = |seq: u64, total: u64| {
        json!({
            "version": 1,
            "proxy": {"namespace": "shop", "workload": "intruder", "pod": "intruder-0",
                      "owner": "", "role": "waypoint"},
            "instance": "intruder-0/e2e",
            "seq": seq, "time_ms": seq * 1000, "surge": false,
            "routes": [{"route": "default",
                        "cluster": "inbound-vip|8080|http|api.shop.svc.cluster.local",
                        "requests_total": total, "errors_total": 0,
                        "duration_us_total": 0, "inflight": 0}]
        })
    };
    let url = format!("http://{ingest}{}", surge_wire::REPORTS_PATH);
    let posted = |body: serde_json::Value| {
        let (client, url) = (&client, &url);
        async move {
            let answer = surge_e2e::scaler::request(client, "POST", url, TOKEN, Some(&body)).await;
            (answer.status, answer.body)
        }
    };
    let (status, _) = posted(intruder(1, 0)).await;
    assert_eq!(status, 200);
    let writes_before = scale_writes(&kube, "shop", "api").len();
    let (status, body) = posted(intruder(2, 5000)).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["outcome"], "refused", "{body}");
    assert_eq!(answer["targets"], 0, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        scale_writes(&kube, "shop", "api").len(),
        writes_before,
        "api was scaled on the intruder's report"
    );
    drop(envoy);
}

/// At zero a Service's requests arrive at its waypoint, whose filter holds them: the first
/// request to `app` (0 replicas) is held, its activation report makes the scaler write 0 -> 1 on
/// the real API server, and the request is answered once the pod is Ready and its endpoint has
/// reached the EndpointSlice, with nothing failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_zero_the_waypoint_holds_the_first_request_until_the_service_is_back() {
    use surge_e2e::waypoint::{get, tunnel};

    let kube = install("waypoint-zero", &["shop"], &[]).await;
    kubectl_ok(
        &kube,
        &[
            "label",
            "namespace",
            "shop",
            "istio.io/use-waypoint=waypoint",
        ],
        None,
    );
    apply(
        &kube,
        &format!(
            "{deployment}---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: shop}}
spec:
  selector: {{app: app}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: surge.dev/v1alpha1
kind: SurgeScaler
metadata: {{name: app, namespace: shop}}
spec:
  scaleTargetRef: {{kind: Deployment, name: app}}
  minReplicas: 0
  maxReplicas: 3
  metric: {{type: rps, target: 20}}
  sources: {{sidecars: false, waypoint: {{service: app}}}}
  scaleToZero: {{service: app, port: 8080, idleSeconds: 10}}
",
            deployment = pause_deployment("shop", "app", 0)
        ),
    );
    let upstream = Upstream::start().await.unwrap();
    let vip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));
    let service = WaypointService {
        name: "app".into(),
        namespace: "shop".into(),
        vip,
        port: 8080,
        upstream: upstream.addr(),
        routes: Vec::new(),
    };
    let ingest = kube.scaler_ingest().expect("the scaler pod's ingest");
    let config = json!({"role": "waypoint", "token": TOKEN, "report_interval_ms": 500,
                        "hold": {"timeout_ms": 30000}});
    let bootstrap = WaypointBootstrap::new("shop", vec![service], ingest)
        .filter(WasmFilter::surge(locate_filter_wasm().unwrap(), &config));
    let mut options = EnvoyOptions::new(surge_e2e::installed::dir("waypoint-zero-envoy")).unwrap();
    options.concurrency = 2;
    let envoy = tokio::task::block_in_place(|| Envoy::start_config(&bootstrap.to_json(), &options))
        .unwrap();
    let stat = |suffix: &str| -> i64 {
        envoy
            .stats()
            .unwrap()
            .into_iter()
            .filter(|(name, _)| name.ends_with(suffix))
            .map(|(_, v)| v)
            .sum()
    };
    // The scaler lists app cold (0 replicas) in its answers; the waypoint learns it.
    eventually(
        "the waypoint learns that app is cold",
        Duration::from_secs(30),
        || async { (stat("surge.cold_destinations") == 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sent = std::time::Instant::now();
    let mut to_app = tunnel(envoy.listener_addr(), vip, 8080).await.unwrap();
    let request =
        tokio::spawn(async move { get(&mut to_app, "app.shop.svc.cluster.local", "/").await });
    let woken = eventually(
        "a scale write from zero",
        Duration::from_secs(5),
        || async {
            scale_writes(&kube, "shop", "app")
                .iter()
                .filter_map(replicas)
                .max()
                .filter(|&r| r >= 1)
        },
    )
    .await;
    let written_after = sent.elapsed();
    assert_eq!(
        upstream.requests(),
        0,
        "the request passed while app was at zero"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the held request was not answered within 30 s")
        .unwrap()
        .unwrap();
    let answered_after = sent.elapsed();
    eprintln!(
        "scale write 0 -> {woken} {written_after:?} after the request; answered {answered_after:?} after it"
    );
    assert_eq!(status, 200);
    assert_eq!(upstream.requests(), 1);
    assert_eq!(woken, 1, "one held request wakes one replica");
    assert!(
        written_after < Duration::from_secs(2),
        "the activation took {written_after:?}"
    );
    assert_eq!(stat("surge.held_total"), 1);
    assert_eq!(stat("surge.held_resumed_total"), 1);
    assert_eq!(
        stat("surge.held_timed_out_total") + stat("surge.held_rejected_total"),
        0
    );
}

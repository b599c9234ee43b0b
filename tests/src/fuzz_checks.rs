//! What must hold for ANY input to Surge's parsers, as functions of raw bytes.
//!
//! The coverage-guided fuzz targets in `fuzz/` call these, and `tests/fuzz_corpus.rs` replays
//! the committed corpus (`fuzz/corpus/<target>/`, including every input that ever found a bug)
//! through them on every `make test`, so a fixed crash stays fixed without a fuzzer installed.
//! A violated property panics: that is how a fuzzer and a test both report it.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use surge_filter_core::config::{Config, RouteKeyConfig};
use surge_filter_core::route::{
    MAX_CLUSTER_LEN, MAX_ROUTE_LEN, Registration, RouteKey, RouteTable,
};
use surge_scaler::cli::IdentityMode;
use surge_scaler::clock::Clock;
use surge_scaler::crd::{MetricType, TargetKind};
use surge_scaler::hub::{Hub, Selector, TargetKey};
use surge_scaler::ingest::{IngestState, router};
use surge_scaler::metrics::Metrics;
use surge_scaler::window::WindowConfig;
use surge_wire::{Limits, Report};
use tower::ServiceExt;

/// A decoded report that passes validation stays within every limit and survives a round trip;
/// and the scaler's fast decoder, whenever it answers, answers what serde_json does.
pub fn wire_report(data: &[u8]) {
    let decoded = serde_json::from_slice::<Report>(data);
    if let Some(fast) = surge_scaler::ingest::report_json::decode_plain(data) {
        assert_eq!(
            decoded.as_ref().ok(),
            Some(&fast),
            "the fast decoder disagrees"
        );
    }
    let Ok(report) = decoded else {
        return;
    };
    let limits = Limits::default();
    if report.validate(&limits).is_err() {
        return;
    }
    assert!(report.routes.len() <= limits.max_routes);
    assert!(!report.proxy.namespace.is_empty());
    for route in &report.routes {
        assert!(route.errors_total <= route.requests_total);
        assert!(route.route.len() <= limits.max_route_len);
        assert!(route.cluster.len() <= limits.max_cluster_len);
    }
    let encoded = serde_json::to_vec(&report).expect("a decoded report encodes");
    let again: Report = serde_json::from_slice(&encoded).expect("an encoded report decodes");
    assert_eq!(again, report);
}

/// The scaler's ingest handler, built once per process (a fuzz run calls it millions of times).
pub struct Ingest {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

impl Ingest {
    /// The shared instance: a token, identity binding "when present", and one registered
    /// target (`web/api`), so accepted reports reach the windows and not only the decoder.
    pub fn shared() -> &'static Self {
        static INGEST: OnceLock<Ingest> = OnceLock::new();
        INGEST.get_or_init(|| {
            let hub = Arc::new(Hub::default());
            let key = TargetKey {
                namespace: "web".into(),
                name: "api".into(),
            };
            let selector = Selector {
                namespace: "web".into(),
                kind: TargetKind::Deployment,
                workload: "api".into(),
                routes: Vec::new(),
                sidecars: true,
                gateway_host: Some("api.web.svc.cluster.local".into()),
                gateway_port: None,
                waypoint_host: Some("api.web.svc.cluster.local".into()),
                waypoint_port: None,
            };
            // The waypoint `web/waypoint` serves it, so fuzzed waypoint reports reach the window.
            let windows = WindowConfig {
                stable_ms: 60_000,
                panic_ms: 6_000,
                stale_ms: 10_000,
            };
            let _wake = hub.register(&key, selector, MetricType::Rps, windows);
            hub.set_waypoint(
                &key,
                Some(surge_scaler::waypoint::WaypointRef {
                    namespace: "web".into(),
                    name: "waypoint".into(),
                }),
            );
            let state = IngestState {
                hub,
                clock: Clock::default(),
                token: Some(Arc::from("fuzz-token")),
                identity: IdentityMode::WhenPresent,
                limits: Arc::new(Limits::default()),
                metrics: Arc::new(Metrics::default()),
                answer_wait: std::time::Duration::ZERO,
                mirror: None,
            };
            Ingest {
                runtime: tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a current-thread runtime"),
                router: router(state),
            }
        })
    }

    /// Posts `data` (first byte: which headers to send; the rest: the body) and checks that the
    /// answer is one of the documented statuses with a JSON body.
    pub fn post(&self, data: &[u8]) {
        let (flags, body) = data.split_first().unwrap_or((&0, &[]));
        let mut request = Request::post(surge_wire::REPORTS_PATH)
            .header(header::CONTENT_TYPE, surge_wire::CONTENT_TYPE);
        if flags & 1 == 0 {
            request = request.header(header::AUTHORIZATION, "Bearer fuzz-token");
        }
        if flags & 2 != 0 {
            let namespace = if flags & 4 != 0 { "web" } else { "other" };
            request = request.header(
                "x-forwarded-client-cert",
                format!("By=spiffe://cluster.local/ns/surge-system/sa/surge-scaler;URI=spiffe://cluster.local/ns/{namespace}/sa/default"),
            );
        }
        let request = request
            .body(Body::from(body.to_vec()))
            .expect("a well-formed request");
        let (status, bytes) = self.runtime.block_on(async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("an in-memory body")
                .to_bytes();
            (status, bytes)
        });
        let documented = [
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNPROCESSABLE_ENTITY,
            // Per-instance report rate and tracking caps (scaler/README.md).
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ];
        assert!(documented.contains(&status), "undocumented status {status}");
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).expect("every answer is a JSON body");
        if status != StatusCode::OK {
            assert!(json["error"].is_string(), "a refusal says why: {json}");
        }
    }
}

/// Any pluginConfig is either refused with an error naming a field, or yields a config that
/// validates (the filter only ever runs with one).
pub fn filter_config(data: &[u8]) {
    match Config::parse(data) {
        Ok(config) => assert!(config.validate().is_ok()),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

/// Route keys built from arbitrary property bytes stay bounded and printable; the shared route
/// table decodes any bytes and never grows past its cap.
pub fn route_key(data: &[u8]) {
    // Split the input into the three properties; the first two bytes choose the cuts.
    let (cut_a, cut_b) = match data {
        [a, b, ..] => (usize::from(*a), usize::from(*b)),
        _ => (0, 0),
    };
    let rest = data.get(2..).unwrap_or_default();
    let (route, rest) = rest.split_at(cut_a.min(rest.len()));
    let (virtual_host, cluster) = rest.split_at(cut_b.min(rest.len()));
    for (virtual_host_fallback, include_cluster) in [(true, true), (false, false)] {
        let options = RouteKeyConfig {
            virtual_host_fallback,
            include_cluster,
        };
        let key =
            RouteKey::from_properties(Some(route), Some(virtual_host), Some(cluster), &options);
        assert!(key.route.len() <= MAX_ROUTE_LEN && key.cluster.len() <= MAX_CLUSTER_LEN);
        assert!(
            !key.route
                .chars()
                .chain(key.cluster.chars())
                .any(char::is_control)
        );
    }

    let mut table = RouteTable::decode(data);
    let cap = usize::from(data.first().copied().unwrap_or(4) % 8);
    let key =
        RouteKey::from_properties(Some(route), None, Some(cluster), &RouteKeyConfig::default());
    let before = table.keys().len();
    match table.register(&key, cap) {
        Registration::Appended { encoded, .. } => {
            assert!(table.keys().len() == before + 1 && before < cap);
            assert_eq!(RouteTable::decode(&encoded).keys(), table.keys());
        }
        Registration::Existing(_) => assert!(table.keys().len() == before),
    }
    let again = RouteTable::decode(&table.encode());
    assert_eq!(again.keys(), table.keys());
}

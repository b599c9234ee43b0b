//! The admin listener: `/metrics` (OpenMetrics), `/healthz` (the process serves), `/readyz`
//! (the controller has listed the SurgeScalers once, so decisions are based on real targets;
//! the body says which shards and targets this replica owns).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::hub::Hub;
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};
use crate::shard::Ownership;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Set once the controller's first list of SurgeScalers arrived.
    pub ready: Arc<AtomicBool>,
    /// Which targets this replica owns, of those the hub has registered.
    pub ownership: Arc<Ownership>,
    /// The registered targets.
    pub hub: Arc<Hub>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if !state.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first list of SurgeScalers\n".to_owned(),
        );
    }
    (StatusCode::OK, ownership_text(&state.ownership, &state.hub))
}

/// `ready`, then who this replica is, the shards it holds and the targets it owns, one a line
/// (a replica that owns nothing is still ready: it takes reports and mirrors them).
fn ownership_text(ownership: &Ownership, hub: &Hub) -> String {
    use std::fmt::Write as _;
    let targets: Vec<_> = hub
        .target_keys()
        .into_iter()
        .filter(|key| ownership.owns(key))
        .collect();
    let mut text = String::from("ready\n");
    match ownership.replica_id() {
        Some(id) => {
            let held: Vec<String> = ownership.held().iter().map(u32::to_string).collect();
            let _ = writeln!(
                text,
                "replica {id}: shards [{}] of {}; owns {} targets",
                held.join(" "),
                ownership.shards(),
                targets.len()
            );
        }
        None => {
            let _ = writeln!(text, "runs alone: owns every target ({})", targets.len());
        }
    }
    for target in targets {
        let _ = writeln!(text, "{target}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String, String) {
        let response = router
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn readyz_follows_the_first_list_and_metrics_are_openmetrics() {
        let state = AdminState {
            metrics: Arc::new(Metrics::default()),
            ready: Arc::new(AtomicBool::new(false)),
            ownership: Arc::new(Ownership::everything()),
            hub: Arc::new(Hub::default()),
        };
        let app = router(state.clone());
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.ready.store(true, Ordering::Release);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, content_type, body) = get(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[test]
    fn readiness_lists_the_shards_held_and_the_targets_owned() {
        use crate::hub::{Selector, TargetKey};
        let spec: crate::crd::SurgeScalerSpec = serde_json::from_value(serde_json::json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "any"},
            "maxReplicas": 10, "metric": {"type": "rps", "target": 100}
        }))
        .unwrap();
        let hub = Hub::default();
        let key = |name: &str| TargetKey {
            namespace: "web".into(),
            name: name.into(),
        };
        for name in ["cart", "api", "shop"] {
            hub.register(
                &key(name),
                Selector::from_spec("web", &spec),
                spec.metric.type_,
                crate::window::WindowConfig {
                    stable_ms: 60_000,
                    panic_ms: 6_000,
                    stale_ms: 10_000,
                },
            );
        }
        assert_eq!(
            ownership_text(&Ownership::everything(), &hub),
            "ready\nruns alone: owns every target (3)\nweb/api\nweb/cart\nweb/shop\n"
        );

        // Sharded: the targets of the shards held, whichever they are.
        let clock = crate::clock::Clock::default();
        let shared = Ownership::sharded("scaler-a", 8, 0, clock);
        let shard = |name: &str| crate::shard::shard_of(&key(name), 8);
        for name in ["cart", "api"] {
            shared.hold(shard(name), Some(clock.now() + 10_000));
        }
        let mut held: Vec<u32> = vec![shard("cart"), shard("api")];
        held.sort_unstable();
        held.dedup();
        let owned: Vec<&str> = ["api", "cart", "shop"]
            .into_iter()
            .filter(|name| held.contains(&shard(name)))
            .collect();
        let held: Vec<String> = held.iter().map(u32::to_string).collect();
        let mut expected = format!(
            "ready\nreplica scaler-a: shards [{}] of 8; owns {} targets\n",
            held.join(" "),
            owned.len()
        );
        for name in &owned {
            expected.push_str(&format!("web/{name}\n"));
        }
        assert_eq!(ownership_text(&shared, &hub), expected);
        assert!(owned.contains(&"api") && owned.contains(&"cart"));
    }
}

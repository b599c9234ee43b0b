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

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};
use crate::shard::Ownership;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Set once the controller's first list of SurgeScalers arrived.
    pub ready: Arc<AtomicBool>,
    /// What this replica owns.
    pub ownership: Arc<Ownership>,
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
    (StatusCode::OK, ownership_text(&state.ownership))
}

/// `ready`, then who this replica is, the shards it holds and the targets it owns, one a line
/// (a replica that owns nothing is still ready: it takes reports and mirrors them).
fn ownership_text(ownership: &Ownership) -> String {
    use std::fmt::Write as _;
    let targets = ownership.owned_targets();
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
        let key = |name: &str| crate::hub::TargetKey {
            namespace: "web".into(),
            name: name.into(),
        };
        let alone = Ownership::everything();
        alone.record_target(&key("api"), true);
        assert_eq!(
            ownership_text(&alone),
            "ready\nruns alone: owns every target (1)\nweb/api\n"
        );

        let clock = crate::clock::Clock::default();
        let shared = Ownership::sharded("scaler-a", 8, 0, clock);
        shared.hold(2, Some(clock.now() + 10_000));
        shared.hold(5, Some(clock.now() + 10_000));
        for name in ["cart", "api", "gone"] {
            shared.record_target(&key(name), true);
        }
        shared.record_target(&key("gone"), false);
        assert_eq!(
            ownership_text(&shared),
            "ready\nreplica scaler-a: shards [2 5] of 8; owns 2 targets\nweb/api\nweb/cart\n"
        );
    }
}

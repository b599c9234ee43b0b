//! The floor the report -> scale PATCH benchmark quotes the scaler against: it takes
//! `POST /v1/reports`, reads the reporting workload's name from the body, answers, and at once
//! PATCHes `spec.replicas` of that workload's scale at the API server (plain HTTP: the
//! sandbox's embedded API) over a kept-alive connection. No window, no decision, no
//! resourceVersion: the least any scaler does between a report and a write, on the same
//! runtime and HTTP stack as the scaler.
//!
//! ```text
//! cargo run --release -p surge-scaler --example patch_floor -- 127.0.0.1:8080 http://127.0.0.1:6443 bench
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

struct Floor {
    client: Client<HttpConnector, Full<Bytes>>,
    api: String,
    namespace: String,
}

async fn take(State(floor): State<Arc<Floor>>, body: Bytes) -> StatusCode {
    let workload = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/proxy/workload")?.as_str().map(str::to_owned));
    let Some(workload) = workload else {
        return StatusCode::BAD_REQUEST;
    };
    let url = format!(
        "{}/apis/apps/v1/namespaces/{}/deployments/{workload}/scale",
        floor.api, floor.namespace
    );
    let Ok(request) = http::Request::patch(url)
        .header(header::CONTENT_TYPE, "application/merge-patch+json")
        .body(Full::new(Bytes::from_static(br#"{"spec":{"replicas":2}}"#)))
    else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    let client = floor.client.clone();
    tokio::spawn(async move {
        if let Ok(response) = client.request(request).await {
            let _ = response.into_body().collect().await;
        }
    });
    StatusCode::OK
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: patch_floor <listen address> <API server URL> <namespace>";
    let (Some(addr), Some(api), Some(namespace)) = (args.next(), args.next(), args.next()) else {
        return Err(usage.into());
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let floor = Arc::new(Floor {
        client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
        api: api.trim_end_matches('/').to_owned(),
        namespace,
    });
    let app = Router::new()
        .route(surge_wire::REPORTS_PATH, post(take))
        .with_state(floor);
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

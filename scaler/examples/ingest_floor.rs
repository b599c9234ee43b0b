//! The floor the ingest benchmarks quote the scaler against: an axum server on the same tokio
//! runtime as the scaler that takes `POST /v1/reports`, reads each body whole, drops it, and
//! answers what the scaler answers an accepted report. What the scaler costs beyond this
//! (decode, validate, count, window, wake its target) is its own; measured in the same run as
//! the scaler, the ratio between the two holds on a machine whose neighbours move absolute
//! rates by a factor of several.
//!
//! ```text
//! cargo run --release -p surge-scaler --example ingest_floor -- 127.0.0.1:8080
//! ```

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;

/// The scaler's answer to an accepted report that counted for one target, nothing cold.
const ANSWER: &str = r#"{"outcome":"accepted","targets":1}"#;

async fn take(body: Bytes) -> ([(header::HeaderName, &'static str); 1], &'static str) {
    drop(body);
    ([(header::CONTENT_TYPE, "application/json")], ANSWER)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let addr = std::env::args()
        .nth(1)
        .ok_or("usage: ingest_floor <listen address>")?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let app = Router::new().route(surge_wire::REPORTS_PATH, post(take));
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

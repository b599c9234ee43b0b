//! Running the real `surge-scaler` binary in a test: where the binary is, free ports, and plain
//! HTTP calls to its listeners. (Killing it on drop is `surge_sandbox::process::ChildGuard`.)

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The scaler binary (`SURGE_SCALER_BIN`, else `target/debug/surge-scaler`); panics with what
/// to run when it is missing, so a test never passes without it.
pub fn scaler_bin() -> PathBuf {
    let path = std::env::var_os("SURGE_SCALER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/surge-scaler"));
    assert!(
        path.exists(),
        "surge-scaler binary not found at {}: run `make test` (or `cargo build -p surge-scaler`), \
         or set SURGE_SCALER_BIN",
        path.display()
    );
    path
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

/// A plain HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new [`HttpClient`].
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What the scaler answered.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body as text.
    pub body: String,
}

/// Sends `body` (as JSON, when given) with `authorization: Bearer <token>`.
pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Answer {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"));
    let body = match body {
        Some(json) => {
            builder = builder.header("content-type", "application/json");
            Full::new(Bytes::from(
                serde_json::to_vec(json).expect("a JSON value encodes"),
            ))
        }
        None => Full::new(Bytes::new()),
    };
    let request = builder.body(body).expect("a well-formed request");
    let response = client.request(request).await.expect("the scaler answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a complete body")
        .to_bytes();
    Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Waits until the scaler's admin listener answers `/readyz` with 200; panics after `within`.
pub async fn wait_ready(client: &HttpClient, admin: SocketAddr, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let probe = http::Request::get(format!("http://{admin}/readyz"))
            .body(Full::new(Bytes::new()))
            .expect("a well-formed request");
        if let Ok(Ok(response)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), client.request(probe)).await
            && response.status() == 200
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scaler did not become ready within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

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
    try_request(client, method, url, token, body)
        .await
        .expect("the scaler answers")
}

/// As [`request`], but a connection that fails (a scaler going away) is an `Err`, for tests
/// that send elsewhere then, as a Service would.
pub async fn try_request(
    client: &HttpClient,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<Answer, String> {
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
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
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
    Ok(Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Whether the scaler's `/readyz` answers 200 (within 500 ms).
pub async fn is_ready(client: &HttpClient, admin: SocketAddr) -> bool {
    let probe = http::Request::get(format!("http://{admin}/readyz"))
        .body(Full::new(Bytes::new()))
        .expect("a well-formed request");
    matches!(
        tokio::time::timeout(std::time::Duration::from_millis(500), client.request(probe)).await,
        Ok(Ok(response)) if response.status() == 200
    )
}

/// Waits until the scaler's admin listener answers `/readyz` with 200; panics after `within`.
pub async fn wait_ready(client: &HttpClient, admin: SocketAddr, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        if is_ready(client, admin).await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scaler did not become ready within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The sandbox's embedded Kubernetes API holding what a scaler test needs: Surge's CRD, the
/// Deployment `web/api` with 1 ready replica, and a SurgeScaler `web/api` (min 1, max 10,
/// 100 rps per replica).
pub async fn api_with_one_target() -> surge_sandbox::kubeapi::KubeApi {
    api_with_one_target_using(surge_sandbox::kubeapi::Options::default(), 10).await
}

/// [`api_with_one_target`] with the API's `options` and the SurgeScaler's `maxReplicas`.
pub async fn api_with_one_target_using(
    options: surge_sandbox::kubeapi::Options,
    max_replicas: u32,
) -> surge_sandbox::kubeapi::KubeApi {
    use surge_sandbox::kubeapi::{KubeApi, resources};
    let api = KubeApi::start(options)
        .await
        .expect("the embedded API starts");
    let crd = std::fs::read_to_string(workspace().join("deploy/crds/surgescaler.yaml"))
        .expect("deploy/crds/surgescaler.yaml is readable");
    api.register_crd(&crd).expect("Surge's CRD registers");
    api.create_deployment("web", "api", 1)
        .expect("the Deployment is created");
    api.set_deployment_status("web", "api", 1, 1)
        .expect("its status is written");
    api.store()
        .create(
            resources::SURGESCALERS,
            "web",
            serde_json::json!({
                "apiVersion": "surge.dev/v1alpha1", "kind": "SurgeScaler",
                "metadata": {"name": "api", "namespace": "web"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"},
                         "minReplicas": 1, "maxReplicas": max_replicas,
                         "metric": {"type": "rps", "target": 100}}
            }),
        )
        .expect("the SurgeScaler is created");
    api
}

/// A `surge-scaler run` child with its ports and its log file; killed when dropped.
#[derive(Debug)]
pub struct RunningScaler {
    /// The process (SIGKILLed and reaped on drop).
    pub process: surge_sandbox::process::ChildGuard,
    /// Its report ingest listener.
    pub ingest: SocketAddr,
    /// Its admin listener (`/metrics`, `/readyz`).
    pub admin: SocketAddr,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl RunningScaler {
    /// Starts the scaler binary with the test token `e2e-token`, identity off, `RUST_LOG` as
    /// given, `KUBECONFIG=kubeconfig`, and `extra` flags; its log goes to `dir/scaler.log`.
    pub fn start(
        dir: &std::path::Path,
        kubeconfig: &std::path::Path,
        rust_log: &str,
        extra: &[&str],
    ) -> Self {
        std::fs::create_dir_all(dir).expect("the scaler's directory can be created");
        let log = dir.join("scaler.log");
        let file = std::fs::File::create(&log).expect("the scaler's log file can be created");
        let (ingest, admin) = (free_addr(), free_addr());
        let mut command = std::process::Command::new(scaler_bin());
        command
            .args(["run", "--identity", "off", "--token", "e2e-token"])
            .args(["--ingest-addr", &ingest.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", rust_log)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(file));
        // Forked by the sandbox's spawner, so the scaler dies with the test process even when
        // the test is killed before its guard drops.
        let process = surge_sandbox::process::ChildGuard::spawn("surge-scaler", command)
            .expect("the scaler starts");
        Self {
            process,
            ingest,
            admin,
            log,
        }
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://INGEST/v1/reports`.
    pub fn reports_url(&self) -> String {
        format!("http://{}{}", self.ingest, surge_wire::REPORTS_PATH)
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self, client: &HttpClient) -> String {
        request(
            client,
            "GET",
            &format!("http://{}/metrics", self.admin),
            "",
            None,
        )
        .await
        .body
    }
}

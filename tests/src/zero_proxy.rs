//! A scale-to-zero target `web/app` and the proxies around it, as the scale-to-zero tests set
//! them up by hand: its Service and SurgeScaler, the app's own sidecar (idle) and a caller's
//! client sidecar that holds requests for the app while it is cold.

// Test harness: fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use serde_json::{Value, json};
use surge_sandbox::real::RealKube;

use crate::installed::TOKEN;
use crate::scaler::{HttpClient, request};

/// The destination of Service `app` port 8080 as a caller's proxy names it.
pub const APP: &str = "outbound|8080||app.web.svc.cluster.local";

/// Service `web/<name>` selecting `app: <name>` on `port`.
pub fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: web}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: {port}, targetPort: {port}}}]
"
    )
}

/// A SurgeScaler for Deployment `web/<name>` (concurrency 1 per replica, at most 5) with
/// `minReplicas: min` and the `scale_to_zero` lines of its spec.
pub fn surgescaler(name: &str, scale_to_zero: &str, min: u32) -> String {
    format!(
        "apiVersion: surge.dev/v1alpha1
kind: SurgeScaler
metadata: {{name: {name}, namespace: web}}
spec:
  scaleTargetRef: {{kind: Deployment, name: {name}}}
  minReplicas: {min}
  maxReplicas: 5
  metric: {{type: concurrency, target: 1}}
{scale_to_zero}"
    )
}

/// Reports as the proxies send them, with their sequence numbers.
pub struct Proxy {
    body: Value,
    seq: u64,
}

impl Proxy {
    /// `app`'s own sidecar: nothing completed, in flight or arriving.
    pub fn app_sidecar() -> Self {
        Self {
            body: json!({
                "version": 1,
                "proxy": {"namespace": "web", "workload": "app", "pod": "app-1",
                          "owner": "kubernetes://apis/apps/v1/namespaces/web/deployments/app",
                          "role": "sidecar"},
                "instance": "app-1/e2e", "seq": 0, "time_ms": 0, "surge": false,
                "routes": [{"route": "default", "cluster": "inbound|8080||",
                            "requests_total": 40, "errors_total": 0,
                            "duration_us_total": 80_000, "inflight": 0,
                            "window_requests": 0}],
                "window_ms": 200
            }),
            seq: 0,
        }
    }

    /// A caller's client sidecar (`shop/checkout`), which counts nothing and holds requests.
    pub fn client_sidecar() -> Self {
        Self {
            body: json!({
                "version": 1,
                "proxy": {"namespace": "shop", "workload": "checkout", "pod": "checkout-1",
                          "owner": "", "role": "sidecar"},
                "instance": "checkout-1/e2e", "seq": 0, "time_ms": 0, "surge": false,
                "routes": []
            }),
            seq: 0,
        }
    }

    /// Sends the next report (holding `held` requests for `APP` when some) to the scaler's
    /// first ready endpoint: status and answer.
    pub async fn send(&mut self, kube: &RealKube, client: &HttpClient, held: u64) -> (u16, Value) {
        let ingest = kube
            .scaler_ingest()
            .expect("the scaler has a ready endpoint");
        self.send_to(client, ingest, held).await
    }

    /// [`Proxy::send`] to the scaler replica listening at `ingest`.
    pub async fn send_to(
        &mut self,
        client: &HttpClient,
        ingest: SocketAddr,
        held: u64,
    ) -> (u16, Value) {
        self.seq += 1;
        self.body["seq"] = self.seq.into();
        // The proxy's wall clock: the scaler measures a source's interval on it, and a source
        // silent for more than twice that is late (its data incomplete, never idle).
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        self.body["time_ms"] = unix_ms.into();
        match held {
            0 => {
                if let Some(body) = self.body.as_object_mut() {
                    body.remove("held");
                }
            }
            n => self.body["held"] = json!([{"cluster": APP, "requests": n}]),
        }
        let url = format!("http://{ingest}{}", surge_wire::REPORTS_PATH);
        let answer = request(client, "POST", &url, TOKEN, Some(&self.body)).await;
        let body = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        (answer.status, body)
    }
}

/// The answer's cold destinations.
pub fn cold(answer: &Value) -> Vec<String> {
    let parsed: surge_wire::Answer = serde_json::from_value(answer.clone()).unwrap();
    parsed
        .validate(&surge_wire::Limits::default())
        .unwrap_or_else(|e| panic!("the filter would refuse {answer}: {e}"));
    parsed.cold
}

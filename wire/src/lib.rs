//! `surge-wire`: the report that every Surge proxy filter pushes to the Surge scaler.
//!
//! ```text
//!  Envoy (filter, one reporter VM per proxy)          surge-scaler
//!  ----------------------------------------          ------------------------------
//!  cumulative counters per route  --POST /v1/reports-->  validate (this crate)
//!  seq strictly increasing per instance                  rate = delta of cumulative counters
//! ```
//!
//! Counters are cumulative since the proxy instance started, so a lost report loses nothing (the
//! next one carries the total) and a duplicate or reordered report changes nothing (the receiver
//! keeps the highest `seq` per instance). The format is documented field by field in
//! `wire/README.md`.
//!
//! This crate depends on serde only and builds for native targets and `wasm32-wasip1`; encoding
//! and decoding (JSON) are left to each side so that neither pays for the other's codec choices.

mod validate;

pub use validate::{Limits, ValidationError};

use serde::{Deserialize, Serialize};

/// The only report version this crate speaks.
pub const VERSION: u32 = 1;

/// The HTTP path the scaler accepts reports on.
pub const REPORTS_PATH: &str = "/v1/reports";

/// The content type of a report body.
pub const CONTENT_TYPE: &str = "application/json";

/// One push from one proxy: its identity and the cumulative counters of every route it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Format version; always [`VERSION`].
    pub version: u32,
    /// Who sent this report.
    pub proxy: Proxy,
    /// Identifies one Envoy process (the same for all of its VMs); a new value means the counters
    /// started again from zero.
    pub instance: String,
    /// Strictly increasing per `instance`; lets the receiver drop duplicates and stale reports.
    pub seq: u64,
    /// The proxy's wall clock when the report was built, in milliseconds since the Unix epoch.
    /// Informational: receivers measure rates on their own clock, since proxy clocks skew.
    pub time_ms: u64,
    /// True when the report was sent early because the proxy saw a surge in its request rate.
    pub surge: bool,
    /// Cumulative counters, one entry per distinct (route, cluster).
    pub routes: Vec<RouteCounters>,
    /// The span, in milliseconds up to `time_ms`, that each route's `window_requests` counts
    /// over: the proxy's own view of its current arrival rate, measured over the same recent
    /// window it uses to detect a surge. Absent in reports that carry no window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// The identity of the proxy that sent a report, read from Istio's node metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// Kubernetes namespace of the pod (`NAMESPACE`).
    pub namespace: String,
    /// Workload name (`WORKLOAD_NAME`), by default the Deployment's name.
    pub workload: String,
    /// Pod name (`NAME`).
    pub pod: String,
    /// Owner reference (`OWNER`), e.g. `kubernetes://apis/apps/v1/namespaces/web/deployments/nginx`;
    /// empty when the proxy does not know it.
    #[serde(default)]
    pub owner: String,
    /// Whether this proxy is a workload's sidecar or an ingress gateway.
    pub role: Role,
}

/// Where the reporting proxy sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A workload's sidecar: counts the requests its own pod serves (inbound).
    Sidecar,
    /// An ingress gateway: counts the requests it forwards to each upstream cluster.
    Gateway,
}

/// Cumulative counters for one (route, cluster) since the proxy instance started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCounters {
    /// Route name (`xds.route_name`, else the virtual host), or `other` for the overflow bucket.
    pub route: String,
    /// Upstream cluster (`xds.cluster_name`), e.g. `inbound|80||` or
    /// `outbound|80||web.default.svc.cluster.local`.
    pub cluster: String,
    /// Requests completed.
    pub requests_total: u64,
    /// Requests completed with a 5xx status or a local failure (no response code).
    pub errors_total: u64,
    /// Sum of the durations of the completed requests, in microseconds.
    pub duration_us_total: u64,
    /// Requests in flight when the report was built (a gauge, not cumulative).
    pub inflight: u64,
    /// Requests that reached the proxy on this route during the report's `window_ms`
    /// (completed or still in flight); only with `window_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_requests: Option<u64>,
}

impl RouteCounters {
    /// Requests that have reached the proxy on this route since the instance started: the
    /// completed ones and those still in flight.
    pub fn arrivals_total(&self) -> u64 {
        self.requests_total.saturating_add(self.inflight)
    }
}

impl Report {
    /// Checks every field against `limits`; the error names the first offending field.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        validate::report(self, limits)
    }
}

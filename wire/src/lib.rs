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
//! Scale from zero adds two things (the "hold" extension, `wire/README.md`): the scaler's
//! [`Answer`] names the destinations that are cold (at zero), and a proxy that holds requests
//! for them says so in its reports ([`ReportBody`]: `held` per destination, `hold_totals`).
//!
//! ```text
//!  proxy (gateway, client sidecar)                     surge-scaler
//!  request to a cold destination: held at its headers
//!  ReportBody { report, held: [{cluster, requests}] } --POST--> activation: scale 0 -> N
//!  cold set in shared data, every VM  <--200 Answer {"cold": [cluster, ...]}--
//!  destination no longer listed: held requests resume, in arrival order
//! ```
//!
//! This crate depends on serde only and builds for native targets and `wasm32-wasip1`; encoding
//! and decoding (JSON) are left to each side so that neither pays for the other's codec choices.

mod cluster;
mod validate;

pub use cluster::{ClusterKind, ServiceCluster, cold_entry_covers};
pub use validate::{BodyError, HoldError, Limits, ValidationError};

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
    /// Whether this proxy is a workload's sidecar, an ingress gateway or a waypoint.
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
    /// An ambient-mode waypoint: counts the requests it forwards to each Service it serves,
    /// keyed by the service's cluster (`inbound-vip|<port>|http|<host>`).
    Waypoint,
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

/// The whole JSON body of `POST /v1/reports`: a [`Report`] and, while the proxy holds requests
/// for cold destinations, the hold fields, all in one flat JSON object.
///
/// Kept apart from [`Report`] so that code building a `Report` field by field compiles
/// unchanged; a body without the hold fields is exactly a `Report`. A report whose `held` is
/// not empty is an *activation report*.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    /// The report itself.
    #[serde(flatten)]
    pub report: Report,
    /// Requests the proxy holds now, per destination; empty (and left out) when it holds none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<Held>,
    /// What became of the requests the proxy held since the instance started; absent until it
    /// held or refused one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_totals: Option<HoldTotals>,
}

impl ReportBody {
    /// A body that is only `report`.
    pub fn plain(report: Report) -> Self {
        Self {
            report,
            held: Vec::new(),
            hold_totals: None,
        }
    }

    /// True for an activation report: the proxy holds at least one request.
    pub fn is_activation(&self) -> bool {
        self.held.iter().any(|h| h.requests > 0)
    }

    /// Checks the report and the hold fields against `limits`; the error names the first
    /// offending field.
    pub fn validate(&self, limits: &Limits) -> Result<(), BodyError> {
        self.report.validate(limits).map_err(BodyError::Report)?;
        validate::held(&self.held, self.hold_totals.as_ref(), limits).map_err(BodyError::Hold)
    }
}

/// Requests a proxy holds now for one destination (a gauge, not cumulative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    /// The destination as the proxy names it: the Envoy cluster of the request's route
    /// (`xds.cluster_name`), e.g. `outbound|8080||app.default.svc.cluster.local`; the same
    /// string the [`Answer`] listed as cold.
    pub cluster: String,
    /// Requests held now, at least 1.
    pub requests: u64,
}

/// What became of the requests a proxy held, cumulative since the instance started (like the
/// route counters: a lost report loses nothing). Proxy-wide, all destinations together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldTotals {
    /// Requests held (paused at their headers because their destination was cold).
    pub held_total: u64,
    /// Of those, resumed when their destination turned warm (then forwarded as usual).
    pub resumed_total: u64,
    /// Of those, answered `503` with `Retry-After` when the hold timeout passed (or the
    /// filter's plugin was shut down while holding them).
    pub timed_out_total: u64,
    /// Of those, ended without an answer from the filter: the client went away, or Envoy closed
    /// the stream or destroyed the VM holding it.
    pub cancelled_total: u64,
    /// Requests to a cold destination answered `503` with `Retry-After` at once, never held: the
    /// destination already had the most held requests allowed.
    pub rejected_total: u64,
}

/// The scaler's answer to a report: the HTTP 200 (any 2xx) body.
///
/// Other fields are ignored (today's scaler sends `{"outcome": "...", "targets": n}`), and an
/// empty body or a body without `cold` means nothing is cold, so every answer of a scaler older
/// than this field reads as "nothing cold".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The complete list of destinations that are cold now (the target behind them has no
    /// ready endpoint), by the Envoy cluster name a caller's proxy sees for them:
    /// `outbound|<port>|<subset>|<host>`. A destination not listed is warm and never held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cold: Vec<String>,
}

impl Answer {
    /// Checks the list against `limits`; the error names the first offending entry.
    pub fn validate(&self, limits: &Limits) -> Result<(), HoldError> {
        validate::answer(self, limits)
    }
}

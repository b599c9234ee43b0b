//! `POST /v1/reports`: authenticate, bound, decode, validate, bind identity, count.
//!
//! ```text
//!  token? (401) -> content-length / body limit (413) -> JSON decode (400) -> validate (422)
//!    -> SPIFFE namespace of x-forwarded-client-cert == proxy.namespace? (401/403)
//!    -> a waypoint's SPIFFE service account == proxy.workload? (403) -> Hub
//!    -> a waypoint report whose traffic went only to Services not bound to it: 200 "refused"
//!    -> instance over its report rate (429) or a tracking limit reached (503)
//!    -> 200 {"outcome": ..., "targets": n, "cold": [destinations at zero or not yet ready]}
//! ```
//!
//! A body is a `surge_wire::ReportBody`: the report, and while its proxy holds requests for
//! cold destinations, `held` and `hold_totals` (an activation report wakes its target at once).
//! Every 200 answer lists the cold destinations (`surge_wire::Answer`), so that each proxy
//! learns at its next report what to hold and what to release.
//!
//! Every refusal is a JSON body `{"error": "...", "field": "..."}` naming the field when there
//! is one; nothing a client sends can make the handler panic.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use serde::Serialize;
use surge_wire::{BodyError, Limits, Report, ReportBody, Role, ValidationError};

use crate::cli::IdentityMode;
use crate::clock::Clock;
use crate::hub::{Hub, Ingested, Refusal};
use crate::metrics::{Metrics, Outcome};
use crate::mirror::Mirror;

/// What the ingest handler needs.
#[derive(Clone)]
pub struct IngestState {
    /// Where reports go.
    pub hub: Arc<Hub>,
    /// The scaler's monotonic clock.
    pub clock: Clock,
    /// The bearer token reports must carry, if any.
    pub token: Option<Arc<str>>,
    /// How `x-forwarded-client-cert` binds the report's namespace.
    pub identity: IdentityMode,
    /// Size limits (the body limit and `surge-wire` validation).
    pub limits: Arc<Limits>,
    /// Counters by outcome.
    pub metrics: Arc<Metrics>,
    /// Longest an answer to a report holding requests for a cold destination waits for the
    /// cold list to change (zero: answered at once).
    pub answer_wait: std::time::Duration,
    /// Copies accepted reports to the other replicas (`None`: this replica runs alone).
    pub mirror: Option<Arc<Mirror>>,
}

/// The ingest router: `POST /v1/reports`.
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route(surge_wire::REPORTS_PATH, post(receive))
        .with_state(state)
}

/// A refused report.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Missing or wrong bearer token.
    #[error("authorization: missing or wrong bearer token")]
    Unauthorized,
    /// Identity required but `x-forwarded-client-cert` missing or without a SPIFFE URI.
    #[error("x-forwarded-client-cert: a SPIFFE identity is required")]
    IdentityMissing,
    /// The SPIFFE namespace differs from `proxy.namespace`.
    #[error("proxy.namespace: {claimed:?} does not match the caller's SPIFFE namespace {actual:?}")]
    NamespaceMismatch {
        /// The report's namespace.
        claimed: String,
        /// The namespace in the client certificate.
        actual: String,
    },
    /// Body over the limit.
    #[error("body: larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body could not be read.
    #[error("body: {0}")]
    Body(String),
    /// Not a JSON report.
    #[error("{field}: {message}")]
    Malformed {
        /// Path of the offending field (`.` for the whole body).
        field: String,
        /// The decoder's message.
        message: String,
    },
    /// Values outside the limits.
    #[error("{0}")]
    Invalid(BodyError),
    /// The instance reports faster than the per-source limit; nothing was counted, and its
    /// next report carries this one's traffic (counters are cumulative).
    #[error("instance: reports faster than the per-instance limit; retry in {retry_after_ms} ms")]
    Throttled {
        /// Milliseconds until a report would be accepted.
        retry_after_ms: u64,
    },
    /// A gateway report from a namespace not allowed to send them.
    #[error(
        "proxy.namespace: gateway reports are accepted only from the namespaces given by --gateway-namespaces"
    )]
    GatewayNamespace,
    /// The instance id is tracked for another namespace.
    #[error("instance: already in use by a proxy of another namespace")]
    ForeignInstance,
    /// A waypoint report from a ServiceAccount other than the waypoint's own.
    #[error(
        "proxy.workload: a waypoint reports as its own ServiceAccount ({actual}), not as {claimed:?}"
    )]
    WaypointAccount {
        /// The report's workload (the waypoint's name).
        claimed: String,
        /// The service account in the client certificate.
        actual: String,
    },
    /// A tracking limit is reached; nothing new is tracked until sources expire.
    #[error("{}", over_capacity_message(.0))]
    OverCapacity(Refusal),
}

/// Seconds a refused sender should wait when a tracking limit is full: the default staleness
/// bound, after which silent sources start to expire.
const OVER_CAPACITY_RETRY_SECONDS: u64 = 10;

fn over_capacity_message(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Instances(limit) => format!(
            "instance: the scaler already tracks its limit of {limit} instances; new instances are refused until some expire"
        ),
        Refusal::InstanceRoutes(limit) => format!(
            "routes: the scaler already tracks its limit of {limit} (instance, route) pairs; new routes are refused until some expire"
        ),
        Refusal::NamespaceInstances(limit) => format!(
            "instance: the scaler already tracks its limit of {limit} instances for this namespace; new instances are refused until some expire"
        ),
        Refusal::TargetSources { limit, counted } => format!(
            "instance: a target selecting this report already tracks its limit of {limit} sources (counted for {counted} other targets)"
        ),
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IngestError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized | Self::IdentityMissing => StatusCode::UNAUTHORIZED,
            Self::NamespaceMismatch { .. }
            | Self::ForeignInstance
            | Self::GatewayNamespace
            | Self::WaypointAccount { .. } => StatusCode::FORBIDDEN,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(_) | Self::Malformed { .. } => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::OverCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            Self::Unauthorized | Self::IdentityMissing => Outcome::unauthorized,
            Self::NamespaceMismatch { .. }
            | Self::ForeignInstance
            | Self::GatewayNamespace
            | Self::WaypointAccount { .. } => Outcome::forbidden,
            Self::TooLarge { .. } => Outcome::too_large,
            Self::Body(_) | Self::Malformed { .. } => Outcome::malformed,
            Self::Invalid(_) => Outcome::invalid,
            Self::Throttled { .. } => Outcome::throttled,
            Self::OverCapacity(_) => Outcome::over_capacity,
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            Self::Unauthorized => Some("authorization".into()),
            Self::IdentityMissing => Some("x-forwarded-client-cert".into()),
            Self::NamespaceMismatch { .. } | Self::GatewayNamespace => {
                Some("proxy.namespace".into())
            }
            Self::TooLarge { .. } | Self::Body(_) => Some("body".into()),
            Self::Malformed { field, .. } => Some(field.clone()),
            Self::Invalid(BodyError::Report(e)) => Some(validation_field(e)),
            Self::Invalid(BodyError::Hold(e)) => Some(e.field().to_owned()),
            Self::Throttled { .. } | Self::ForeignInstance => Some("instance".into()),
            Self::WaypointAccount { .. } => Some("proxy.workload".into()),
            Self::OverCapacity(Refusal::InstanceRoutes(_)) => Some("routes".into()),
            Self::OverCapacity(_) => Some("instance".into()),
        }
    }

    /// `Retry-After` in whole seconds (HTTP's unit), rounded up, for the refusals that pass.
    fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            Self::Throttled { retry_after_ms } => Some(retry_after_ms.div_ceil(1000).max(1)),
            Self::OverCapacity(_) => Some(OVER_CAPACITY_RETRY_SECONDS),
            _ => None,
        }
    }
}

fn validation_field(error: &ValidationError) -> String {
    match error {
        ValidationError::UnsupportedVersion { .. } => "version".into(),
        ValidationError::TooManyRoutes { .. } => "routes".into(),
        ValidationError::Empty { field }
        | ValidationError::TooLong { field, .. }
        | ValidationError::BadCharacter { field }
        | ValidationError::DuplicateRoute { field }
        | ValidationError::WindowRequests { field, .. } => field.clone(),
        ValidationError::WindowOutOfRange { .. } => "window_ms".into(),
        ValidationError::ErrorsExceedRequests { field } => format!("{field}.errors_total"),
        ValidationError::InflightTooLarge { field, .. } => format!("{field}.inflight"),
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let field = self.field();
        let body = ErrorBody {
            error: self.to_string(),
            field: field.as_deref(),
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_seconds() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

#[derive(Serialize)]
struct Accepted<'a> {
    outcome: &'static str,
    targets: usize,
    /// The complete list of cold destinations (`surge_wire::Answer::cold`); left out when empty,
    /// which a proxy reads as "nothing cold".
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    cold: &'a [String],
}

async fn receive(State(state): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    match receive_inner(&state, &headers, body).await {
        Ok((outcome, targets, holding)) => {
            let mut cold = state.hub.cold();
            // A proxy holding requests for a cold destination learns that it is warm from this
            // answer: it waits (bounded) for the list to change, so that the held requests
            // resume the moment the target is warm, not one report period later. Meanwhile the
            // proxy's next reports wait for this one; its counters are cumulative, so they only
            // arrive later, whole.
            if !state.answer_wait.is_zero()
                && holding.iter().any(|cluster| {
                    cold.iter()
                        .any(|entry| surge_wire::cold_entry_covers(entry, cluster))
                })
            {
                cold = state.hub.cold_after(&cold, state.answer_wait).await;
            }
            state.metrics.ingest(outcome);
            let name = match outcome {
                Outcome::accepted => "accepted",
                Outcome::baseline => "baseline",
                Outcome::duplicate => "duplicate",
                Outcome::refused => "refused",
                _ => "unmatched",
            };
            (
                StatusCode::OK,
                axum::Json(Accepted {
                    outcome: name,
                    targets,
                    cold: &cold,
                }),
            )
                .into_response()
        }
        Err(error) => {
            state.metrics.ingest(error.outcome());
            tracing::debug!(%error, "report refused");
            error.into_response()
        }
    }
}

/// What an accepted report did: its outcome, the targets it counted for and the destinations
/// its proxy holds requests for.
type Received = (Outcome, usize, Vec<String>);

async fn receive_inner(
    state: &IngestState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Received, IngestError> {
    if let Some(token) = &state.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return Err(IngestError::Unauthorized);
        }
    }
    let limit = state.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(IngestError::TooLarge { limit });
    }
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                IngestError::TooLarge { limit }
            } else {
                IngestError::Body(e.to_string())
            }
        })?
        .to_bytes();

    let body = decode(&bytes)?;
    body.validate(&state.limits).map_err(IngestError::Invalid)?;
    let report = &body.report;

    if state.identity != IdentityMode::Off {
        let xfcc = headers
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok());
        match xfcc.and_then(spiffe_identity) {
            // A waypoint runs as the ServiceAccount Istio names after its Gateway, which is also
            // its workload name: one waypoint cannot report as another of its namespace.
            Some((_, account))
                if report.proxy.role == Role::Waypoint && account != report.proxy.workload =>
            {
                return Err(IngestError::WaypointAccount {
                    claimed: report.proxy.workload.clone(),
                    actual: account.to_owned(),
                });
            }
            Some((actual, _)) if actual == report.proxy.namespace => {}
            Some((actual, _)) => {
                return Err(IngestError::NamespaceMismatch {
                    claimed: report.proxy.namespace.clone(),
                    actual: actual.to_owned(),
                });
            }
            None if xfcc.is_some() || state.identity == IdentityMode::Required => {
                return Err(IngestError::IdentityMissing);
            }
            None => {}
        }
    }

    let (ingested, holds) = state.hub.ingest_body(&body, state.clock.now());
    if let Some(holds) = holds {
        state.metrics.proxy_holds(&holds);
    }
    let holding = body.held.iter().map(|h| h.cluster.clone()).collect();
    let (outcome, targets) = match ingested {
        Ingested::Throttled { retry_after_ms } => {
            return Err(IngestError::Throttled { retry_after_ms });
        }
        Ingested::OverCapacity(refusal) => return Err(IngestError::OverCapacity(refusal)),
        Ingested::ForeignInstance => return Err(IngestError::ForeignInstance),
        Ingested::GatewayNamespace => return Err(IngestError::GatewayNamespace),
        // Answered 200 all the same, with the cold list: the waypoint must keep learning which
        // of the Services it does serve are cold.
        Ingested::Counted {
            targets: 0,
            refused_routes: refused @ 1..,
        } => {
            state.metrics.waypoint_routes_refused(refused);
            (Outcome::refused, 0)
        }
        Ingested::Counted {
            targets: 0,
            refused_routes: 0,
        } => (Outcome::unmatched, 0),
        Ingested::Counted {
            targets,
            refused_routes,
        } => {
            state.metrics.waypoint_routes_refused(refused_routes);
            (Outcome::accepted, targets)
        }
        Ingested::Baseline => (Outcome::baseline, 0),
        Ingested::Duplicate => (Outcome::duplicate, 0),
    };
    // A duplicate is not mirrored: the peers have it, or a newer report of the instance.
    if outcome != Outcome::duplicate
        && let Some(mirror) = &state.mirror
    {
        mirror.send(&report.instance, &bytes);
    }
    Ok((outcome, targets, holding))
}

/// Decodes a report body. The filter's plain shape takes the fast decoder ([`report_json`]);
/// any other body takes serde_json (a body with hold fields as a [`ReportBody`]); only a failure
/// is decoded again with path tracking, to name the offending field (tracking costs on every
/// field).
pub(crate) fn decode(bytes: &[u8]) -> Result<ReportBody, IngestError> {
    if let Some(report) = report_json::decode_plain(bytes) {
        return Ok(ReportBody::plain(report));
    }
    if let Ok(report) = serde_json::from_slice::<Report>(bytes) {
        return Ok(ReportBody::plain(report));
    }
    if let Ok(body) = serde_json::from_slice::<ReportBody>(bytes) {
        return Ok(body);
    }
    // Name the field by the shape the body claims: a flattened report loses the paths of its
    // own fields, so only a body with hold fields is tracked as a ReportBody.
    let with_holds = serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| {
        v.as_object()
            .is_some_and(|o| o.contains_key("held") || o.contains_key("hold_totals"))
    });
    if with_holds {
        tracked::<ReportBody>(bytes)
    } else {
        tracked::<Report>(bytes).map(ReportBody::plain)
    }
}

/// Decodes `bytes` as a `T` with path tracking: the error names the offending field.
fn tracked<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, IngestError> {
    let mut decoder = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut decoder).map_err(|e| {
        let path = e.path().to_string();
        IngestError::Malformed {
            field: path,
            message: e.into_inner().to_string(),
        }
    })?;
    // The tracked decode succeeded, so the plain one failed on what follows the value.
    decoder.end().map_err(|e| IngestError::Malformed {
        field: ".".into(),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// Compares in time independent of where the inputs differ (the length still shows).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The namespace and service account of the SPIFFE URI of the client closest to us in
/// `x-forwarded-client-cert` (Envoy appends one element per hop, comma-separated; the last is
/// the direct peer).
fn spiffe_identity(xfcc: &str) -> Option<(&str, &str)> {
    let element = split_unquoted(xfcc, ',').last()?;
    let uri = split_unquoted(element, ';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("URI")
            .then(|| value.trim().trim_matches('"'))
    })?;
    // spiffe://<trust domain>/ns/<namespace>/sa/<service account>
    let path = uri.strip_prefix("spiffe://")?.split_once('/')?.1;
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(namespace), Some("sa"), Some(account)) if !namespace.is_empty() => {
            Some((namespace, account))
        }
        _ => None,
    }
}

/// Splits on `separator` outside double quotes (XFCC quotes values holding `,` `;` `=`).
fn split_unquoted(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter()
}

pub mod report_json;

#[cfg(test)]
mod tests;

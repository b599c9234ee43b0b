//! Validation of a decoded [`Report`]: bounds on every size, count and string, so that a report
//! that passes can be stored without further checks and a hostile one cannot grow the receiver.

use std::fmt;

use crate::{Answer, Held, HoldTotals, Report, VERSION};

/// Bounds a valid report stays within. [`Limits::default`] is what the scaler enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted body, in bytes (checked by the receiver before decoding).
    pub max_body_bytes: usize,
    /// Most route entries in one report.
    pub max_routes: usize,
    /// Longest `proxy.namespace` (a Kubernetes namespace is a DNS label).
    pub max_namespace_len: usize,
    /// Longest `proxy.workload` and `proxy.pod` (Kubernetes object names).
    pub max_name_len: usize,
    /// Longest `proxy.owner`.
    pub max_owner_len: usize,
    /// Longest `instance`.
    pub max_instance_len: usize,
    /// Longest `routes[].route`.
    pub max_route_len: usize,
    /// Longest `routes[].cluster`.
    pub max_cluster_len: usize,
    /// Largest `routes[].inflight`; anything above is not a real proxy's in-flight count.
    pub max_inflight: u64,
    /// Longest `window_ms`.
    pub max_window_ms: u64,
    /// Most entries in a report body's `held` (destinations with held requests).
    pub max_held: usize,
    /// Most entries in an answer's `cold`.
    pub max_cold: usize,
    /// Largest answer body, in bytes (checked by the filter before reading it).
    pub max_answer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_routes: 256,
            max_namespace_len: 63,
            max_name_len: 253,
            max_owner_len: 512,
            max_instance_len: 128,
            max_route_len: 256,
            max_cluster_len: 512,
            max_inflight: 1_000_000,
            max_window_ms: 60_000,
            max_held: 256,
            max_cold: 256,
            max_answer_bytes: 256 * 1024,
        }
    }
}

/// Why a report was refused. Every variant names the field, as a path such as `routes[3].cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationError {
    /// `version` is not [`VERSION`].
    UnsupportedVersion {
        /// The version the report claimed.
        found: u32,
    },
    /// A required string is empty.
    Empty {
        /// The field.
        field: String,
    },
    /// A string is longer than its limit.
    TooLong {
        /// The field.
        field: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string holds a control character (or, for identity fields, whitespace).
    BadCharacter {
        /// The field.
        field: String,
    },
    /// More route entries than the limit.
    TooManyRoutes {
        /// How many the report had.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The same (route, cluster) appears twice, so the counters would be ambiguous.
    DuplicateRoute {
        /// The field of the second occurrence, e.g. `routes[7]`.
        field: String,
    },
    /// `errors_total` exceeds `requests_total` for a route.
    ErrorsExceedRequests {
        /// The field.
        field: String,
    },
    /// `window_ms` is zero or above the limit.
    WindowOutOfRange {
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// `window_requests` without `window_ms`, or more than the route's requests so far.
    WindowRequests {
        /// The field, e.g. `routes[2].window_requests`.
        field: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `inflight` is above the limit.
    InflightTooLarge {
        /// The field.
        field: String,
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
    },
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion { found } => {
                write!(
                    f,
                    "version: unsupported version {found}, expected {VERSION}"
                )
            }
            Self::Empty { field } => write!(f, "{field}: must not be empty"),
            Self::TooLong { field, len, max } => {
                write!(f, "{field}: {len} bytes, longer than the limit of {max}")
            }
            Self::BadCharacter { field } => {
                write!(f, "{field}: contains a control or whitespace character")
            }
            Self::TooManyRoutes { count, max } => {
                write!(f, "routes: {count} entries, more than the limit of {max}")
            }
            Self::DuplicateRoute { field } => {
                write!(f, "{field}: repeats an earlier (route, cluster) pair")
            }
            Self::ErrorsExceedRequests { field } => {
                write!(f, "{field}.errors_total: larger than requests_total")
            }
            Self::WindowOutOfRange { value, max } => {
                write!(f, "window_ms: {value} is outside 1..={max}")
            }
            Self::WindowRequests { field, reason } => write!(f, "{field}: {reason}"),
            Self::InflightTooLarge { field, value, max } => {
                write!(f, "{field}.inflight: {value} is above the limit of {max}")
            }
        }
    }
}

impl std::error::Error for ValidationError {}

/// Why the hold fields of a report body (`held`, `hold_totals`) or an answer's `cold` were
/// refused. Every variant names the field, as a path such as `held[2].cluster` or `cold[0]`.
///
/// Apart from [`ValidationError`], so that code matching every variant of that compiles
/// unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldError {
    /// More entries than the limit.
    TooMany {
        /// `held` or `cold`.
        field: &'static str,
        /// How many there were.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A destination name is empty.
    Empty {
        /// The field.
        field: String,
    },
    /// A destination name is longer than the cluster limit.
    TooLong {
        /// The field.
        field: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A destination name holds a control character.
    BadCharacter {
        /// The field.
        field: String,
    },
    /// The same destination appears twice.
    Duplicate {
        /// The field of the second occurrence.
        field: String,
    },
    /// `held[].requests` is 0 or above the in-flight limit.
    Requests {
        /// The field, e.g. `held[1].requests`.
        field: String,
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The outcomes in `hold_totals` add up to more than `held_total`.
    Totals,
}

impl HoldError {
    /// The offending field's path, e.g. `held[2].cluster`.
    pub fn field(&self) -> &str {
        match self {
            Self::TooMany { field, .. } => field,
            Self::Empty { field }
            | Self::TooLong { field, .. }
            | Self::BadCharacter { field }
            | Self::Duplicate { field }
            | Self::Requests { field, .. } => field,
            Self::Totals => "hold_totals",
        }
    }
}

impl fmt::Display for HoldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooMany { field, count, max } => {
                write!(f, "{field}: {count} entries, more than the limit of {max}")
            }
            Self::Empty { field } => write!(f, "{field}: must not be empty"),
            Self::TooLong { field, len, max } => {
                write!(f, "{field}: {len} bytes, longer than the limit of {max}")
            }
            Self::BadCharacter { field } => write!(f, "{field}: contains a control character"),
            Self::Duplicate { field } => write!(f, "{field}: repeats an earlier destination"),
            Self::Requests { field, value, max } => {
                write!(f, "{field}: {value} is outside 1..={max}")
            }
            Self::Totals => write!(
                f,
                "hold_totals: resumed_total + timed_out_total + cancelled_total is larger than \
                 held_total"
            ),
        }
    }
}

impl std::error::Error for HoldError {}

/// Why a report body was refused: its report, or its hold fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The report's own fields.
    Report(ValidationError),
    /// `held` or `hold_totals`.
    Hold(HoldError),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Report(e) => e.fmt(f),
            Self::Hold(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {}

/// Identity strings are Kubernetes names: no whitespace or control characters at all.
fn identity(field: &str, value: &str, max: usize, required: bool) -> Result<(), ValidationError> {
    if required && value.is_empty() {
        return Err(ValidationError::Empty {
            field: field.to_owned(),
        });
    }
    if value.len() > max {
        return Err(ValidationError::TooLong {
            field: field.to_owned(),
            len: value.len(),
            max,
        });
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ValidationError::BadCharacter {
            field: field.to_owned(),
        });
    }
    Ok(())
}

/// Route and cluster names come from user configuration (VirtualService names): spaces are
/// tolerated, control characters are not.
fn label(field: impl Fn() -> String, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(ValidationError::TooLong {
            field: field(),
            len: value.len(),
            max,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::BadCharacter { field: field() });
    }
    Ok(())
}

pub(crate) fn report(report: &Report, limits: &Limits) -> Result<(), ValidationError> {
    if report.version != VERSION {
        return Err(ValidationError::UnsupportedVersion {
            found: report.version,
        });
    }
    let proxy = &report.proxy;
    identity(
        "proxy.namespace",
        &proxy.namespace,
        limits.max_namespace_len,
        true,
    )?;
    identity("proxy.workload", &proxy.workload, limits.max_name_len, true)?;
    identity("proxy.pod", &proxy.pod, limits.max_name_len, true)?;
    identity("proxy.owner", &proxy.owner, limits.max_owner_len, false)?;
    identity("instance", &report.instance, limits.max_instance_len, true)?;

    if let Some(window) = report.window_ms
        && !(1..=limits.max_window_ms).contains(&window)
    {
        return Err(ValidationError::WindowOutOfRange {
            value: window,
            max: limits.max_window_ms,
        });
    }
    if report.routes.len() > limits.max_routes {
        return Err(ValidationError::TooManyRoutes {
            count: report.routes.len(),
            max: limits.max_routes,
        });
    }
    for (i, r) in report.routes.iter().enumerate() {
        label(
            || format!("routes[{i}].route"),
            &r.route,
            limits.max_route_len,
        )?;
        label(
            || format!("routes[{i}].cluster"),
            &r.cluster,
            limits.max_cluster_len,
        )?;
        if r.errors_total > r.requests_total {
            return Err(ValidationError::ErrorsExceedRequests {
                field: format!("routes[{i}]"),
            });
        }
        if r.inflight > limits.max_inflight {
            return Err(ValidationError::InflightTooLarge {
                field: format!("routes[{i}]"),
                value: r.inflight,
                max: limits.max_inflight,
            });
        }
        if let Some(recent) = r.window_requests {
            let reason = if report.window_ms.is_none() {
                Some("given without window_ms")
            } else if recent > r.arrivals_total() {
                Some("larger than requests_total + inflight")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ValidationError::WindowRequests {
                    field: format!("routes[{i}].window_requests"),
                    reason,
                });
            }
        }
    }

    // Sorting indices keeps this O(n log n) for the largest allowed report.
    let mut order: Vec<usize> = (0..report.routes.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&report.routes[a], &report.routes[b]);
        (&ra.route, &ra.cluster, a).cmp(&(&rb.route, &rb.cluster, b))
    });
    for pair in order.windows(2) {
        let (first, second) = (&report.routes[pair[0]], &report.routes[pair[1]]);
        if first.route == second.route && first.cluster == second.cluster {
            return Err(ValidationError::DuplicateRoute {
                field: format!("routes[{}]", pair[0].max(pair[1])),
            });
        }
    }
    Ok(())
}

/// A destination name: an Envoy cluster name, as bounded as a route's `cluster`.
fn destination(field: impl Fn() -> String, value: &str, max: usize) -> Result<(), HoldError> {
    if value.is_empty() {
        return Err(HoldError::Empty { field: field() });
    }
    if value.len() > max {
        return Err(HoldError::TooLong {
            field: field(),
            len: value.len(),
            max,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(HoldError::BadCharacter { field: field() });
    }
    Ok(())
}

/// The index of the first name that repeats an earlier one. Quadratic, which the short lists it
/// checks (at most `max_held` / `max_cold` entries, 256 by default) afford, and which keeps the
/// sort's code out of the filter's module.
fn first_repeat(names: &[&str]) -> Option<usize> {
    (1..names.len()).find(|&i| names[..i].contains(&names[i]))
}

pub(crate) fn held(
    held: &[Held],
    totals: Option<&HoldTotals>,
    limits: &Limits,
) -> Result<(), HoldError> {
    if held.len() > limits.max_held {
        return Err(HoldError::TooMany {
            field: "held",
            count: held.len(),
            max: limits.max_held,
        });
    }
    for (i, h) in held.iter().enumerate() {
        destination(
            || format!("held[{i}].cluster"),
            &h.cluster,
            limits.max_cluster_len,
        )?;
        if !(1..=limits.max_inflight).contains(&h.requests) {
            return Err(HoldError::Requests {
                field: format!("held[{i}].requests"),
                value: h.requests,
                max: limits.max_inflight,
            });
        }
    }
    let names: Vec<&str> = held.iter().map(|h| h.cluster.as_str()).collect();
    if let Some(i) = first_repeat(&names) {
        return Err(HoldError::Duplicate {
            field: format!("held[{i}].cluster"),
        });
    }
    if let Some(t) = totals {
        let ended = t
            .resumed_total
            .saturating_add(t.timed_out_total)
            .saturating_add(t.cancelled_total);
        if ended > t.held_total {
            return Err(HoldError::Totals);
        }
    }
    Ok(())
}

pub(crate) fn answer(answer: &Answer, limits: &Limits) -> Result<(), HoldError> {
    if answer.cold.len() > limits.max_cold {
        return Err(HoldError::TooMany {
            field: "cold",
            count: answer.cold.len(),
            max: limits.max_cold,
        });
    }
    for (i, cluster) in answer.cold.iter().enumerate() {
        destination(|| format!("cold[{i}]"), cluster, limits.max_cluster_len)?;
    }
    let names: Vec<&str> = answer.cold.iter().map(String::as_str).collect();
    if let Some(i) = first_repeat(&names) {
        return Err(HoldError::Duplicate {
            field: format!("cold[{i}]"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Proxy, ReportBody, Role, RouteCounters};
    use proptest::prelude::*;

    fn route(name: &str) -> RouteCounters {
        RouteCounters {
            route: name.into(),
            cluster: "inbound|8080||".into(),
            requests_total: 10,
            errors_total: 1,
            duration_us_total: 12_345,
            inflight: 2,
            window_requests: Some(4),
        }
    }

    fn sample() -> Report {
        Report {
            version: VERSION,
            proxy: Proxy {
                namespace: "web".into(),
                workload: "nginx".into(),
                pod: "nginx-5d9c7-abcde".into(),
                owner: "kubernetes://apis/apps/v1/namespaces/web/deployments/nginx".into(),
                role: Role::Sidecar,
            },
            instance: "nginx-5d9c7-abcde/4f1c".into(),
            seq: 7,
            time_ms: 1_790_000_000_000,
            surge: false,
            routes: vec![route("default"), route("api")],
            window_ms: Some(200),
        }
    }

    #[test]
    fn a_well_formed_report_passes() {
        assert_eq!(sample().validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn json_round_trips_with_the_documented_field_names() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["proxy"]["role"], "sidecar");
        assert_eq!(json["routes"][1]["duration_us_total"], 12_345);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn unknown_fields_are_refused_by_the_decoder() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["extra"] = 1.into();
        let err = serde_json::from_value::<Report>(json).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn each_violation_names_its_field() {
        let limits = Limits::default();
        type Mutation = Box<dyn Fn(&mut Report)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|r| r.version = 2),
                "version: unsupported version 2",
            ),
            (
                Box::new(|r| r.proxy.namespace.clear()),
                "proxy.namespace: must not be empty",
            ),
            (
                Box::new(|r| r.proxy.namespace = "a".repeat(64)),
                "proxy.namespace: 64 bytes",
            ),
            (
                Box::new(|r| r.proxy.workload = "a b".into()),
                "proxy.workload: contains",
            ),
            (
                Box::new(|r| r.proxy.pod.clear()),
                "proxy.pod: must not be empty",
            ),
            (
                Box::new(|r| r.proxy.owner = "x\n".into()),
                "proxy.owner: contains",
            ),
            (
                Box::new(|r| r.instance = "i".repeat(129)),
                "instance: 129 bytes",
            ),
            (
                Box::new(|r| r.routes[1].route = "r\u{7}".into()),
                "routes[1].route: contains",
            ),
            (
                Box::new(|r| r.routes[0].cluster = "c".repeat(513)),
                "routes[0].cluster: 513",
            ),
            (
                Box::new(|r| r.routes[1].errors_total = 11),
                "routes[1].errors_total: larger",
            ),
            (
                Box::new(|r| r.routes[0].inflight = 1_000_001),
                "routes[0].inflight: 1000001",
            ),
            (
                Box::new(|r| r.window_ms = Some(0)),
                "window_ms: 0 is outside",
            ),
            (
                Box::new(|r| r.window_ms = Some(60_001)),
                "window_ms: 60001 is outside",
            ),
            (
                Box::new(|r| r.window_ms = None),
                "routes[0].window_requests: given without window_ms",
            ),
            (
                Box::new(|r| r.routes[1].window_requests = Some(13)),
                "routes[1].window_requests: larger than requests_total + inflight",
            ),
            (
                Box::new(|r| r.routes.push(route("default"))),
                "routes[2]: repeats",
            ),
            (
                Box::new(|r| r.routes = (0..257).map(|i| route(&i.to_string())).collect()),
                "routes: 257 entries",
            ),
        ];
        for (mutate, expected) in cases {
            let mut report = sample();
            mutate(&mut report);
            let message = report.validate(&limits).unwrap_err().to_string();
            assert!(
                message.starts_with(expected),
                "{message:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn a_report_without_a_window_decodes_and_passes() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json.as_object_mut().unwrap().remove("window_ms");
        for route in json["routes"].as_array_mut().unwrap() {
            route.as_object_mut().unwrap().remove("window_requests");
        }
        let report: Report = serde_json::from_value(json).unwrap();
        assert_eq!(report.window_ms, None);
        assert!(report.routes.iter().all(|r| r.window_requests.is_none()));
        assert_eq!(report.validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn an_empty_owner_and_no_routes_are_allowed() {
        let mut report = sample();
        report.proxy.owner.clear();
        report.routes.clear();
        assert_eq!(report.validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn the_same_route_on_two_clusters_is_not_a_duplicate() {
        let mut report = sample();
        let mut other = route("default");
        other.cluster = "outbound|80||web.web.svc.cluster.local".into();
        report.routes.push(other);
        assert_eq!(report.validate(&Limits::default()), Ok(()));
    }

    fn held(cluster: &str, requests: u64) -> Held {
        Held {
            cluster: cluster.into(),
            requests,
        }
    }

    fn activation() -> ReportBody {
        ReportBody {
            report: sample(),
            held: vec![
                held("outbound|8080||app.default.svc.cluster.local", 3),
                held("outbound|80||web.shop.svc.cluster.local", 1),
            ],
            hold_totals: Some(HoldTotals {
                held_total: 9,
                resumed_total: 4,
                timed_out_total: 1,
                cancelled_total: 0,
                rejected_total: 2,
            }),
        }
    }

    #[test]
    fn a_body_without_hold_fields_is_exactly_a_report() {
        let report_json = serde_json::to_value(sample()).unwrap();
        let body: ReportBody = serde_json::from_value(report_json.clone()).unwrap();
        assert_eq!(body, ReportBody::plain(sample()));
        assert!(!body.is_activation());
        assert_eq!(serde_json::to_value(&body).unwrap(), report_json);
        assert_eq!(body.validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn an_activation_body_is_one_flat_object_that_round_trips() {
        let json = serde_json::to_value(activation()).unwrap();
        assert_eq!(json["seq"], 7);
        assert_eq!(
            json["held"][0]["cluster"],
            "outbound|8080||app.default.svc.cluster.local"
        );
        assert_eq!(json["held"][0]["requests"], 3);
        assert_eq!(json["hold_totals"]["rejected_total"], 2);
        let back: ReportBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, activation());
        assert!(back.is_activation());
        assert_eq!(back.validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn a_body_refuses_unknown_fields_at_the_top_and_in_held() {
        let mut json = serde_json::to_value(activation()).unwrap();
        json["hold"] = 1.into();
        let err = serde_json::from_value::<ReportBody>(json).unwrap_err();
        assert!(err.to_string().contains("hold"), "{err}");
        let mut json = serde_json::to_value(activation()).unwrap();
        json["held"][0]["requests_total"] = 1.into();
        assert!(serde_json::from_value::<ReportBody>(json).is_err());
    }

    #[test]
    fn each_hold_violation_names_its_field() {
        let limits = Limits::default();
        type Mutation = Box<dyn Fn(&mut ReportBody)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|b| b.held[1].cluster.clear()),
                "held[1].cluster: must not be empty",
            ),
            (
                Box::new(|b| b.held[0].cluster = "c".repeat(513)),
                "held[0].cluster: 513 bytes",
            ),
            (
                Box::new(|b| b.held[0].cluster = "a\nb".into()),
                "held[0].cluster: contains a control character",
            ),
            (
                Box::new(|b| b.held[1].requests = 0),
                "held[1].requests: 0 is outside 1..=1000000",
            ),
            (
                Box::new(|b| b.held[0].requests = 1_000_001),
                "held[0].requests: 1000001 is outside",
            ),
            (
                Box::new(|b| {
                    b.held
                        .push(held("outbound|80||web.shop.svc.cluster.local", 2))
                }),
                "held[2].cluster: repeats an earlier destination",
            ),
            (
                Box::new(|b| b.held = (0..257).map(|i| held(&i.to_string(), 1)).collect()),
                "held: 257 entries",
            ),
            (
                Box::new(|b| {
                    if let Some(t) = b.hold_totals.as_mut() {
                        t.cancelled_total = 5;
                    }
                }),
                "hold_totals: resumed_total + timed_out_total + cancelled_total",
            ),
            (
                Box::new(|b| b.report.routes[0].errors_total = 11),
                "routes[0].errors_total: larger",
            ),
        ];
        for (mutate, expected) in cases {
            let mut body = activation();
            mutate(&mut body);
            let message = body.validate(&limits).unwrap_err().to_string();
            assert!(
                message.starts_with(expected),
                "{message:?} should start with {expected:?}"
            );
        }
        let mut body = activation();
        body.held[0].requests = 0;
        match body.validate(&limits) {
            Err(BodyError::Hold(e)) => assert_eq!(e.field(), "held[0].requests"),
            other => panic!("expected a hold error, got {other:?}"),
        }
    }

    #[test]
    fn every_answer_of_an_older_scaler_reads_as_nothing_cold() {
        for body in [
            r#"{"outcome":"accepted","targets":1}"#,
            r#"{"outcome":"unmatched","targets":0}"#,
            r#"{}"#,
        ] {
            let answer: Answer = serde_json::from_str(body).unwrap();
            assert_eq!(answer, Answer::default(), "{body}");
            assert_eq!(answer.validate(&Limits::default()), Ok(()));
        }
    }

    #[test]
    fn an_answer_lists_cold_destinations_and_round_trips() {
        let body = r#"{"outcome":"accepted","targets":1,
                       "cold":["outbound|8080||app.default.svc.cluster.local"]}"#;
        let answer: Answer = serde_json::from_str(body).unwrap();
        assert_eq!(
            answer.cold,
            ["outbound|8080||app.default.svc.cluster.local"]
        );
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            json,
            r#"{"cold":["outbound|8080||app.default.svc.cluster.local"]}"#
        );
        assert_eq!(serde_json::to_string(&Answer::default()).unwrap(), "{}");
    }

    #[test]
    fn each_answer_violation_names_its_entry() {
        let limits = Limits::default();
        let answer = |cold: Vec<String>| Answer { cold };
        let cases: Vec<(Answer, &str)> = vec![
            (
                answer(vec!["a".into(), String::new()]),
                "cold[1]: must not be empty",
            ),
            (answer(vec!["c".repeat(513)]), "cold[0]: 513 bytes"),
            (answer(vec!["a\u{0}".into()]), "cold[0]: contains"),
            (
                answer(vec!["a".into(), "b".into(), "a".into()]),
                "cold[2]: repeats",
            ),
            (
                answer((0..257).map(|i| i.to_string()).collect()),
                "cold: 257 entries",
            ),
        ];
        for (answer, expected) in cases {
            let error = answer.validate(&limits).unwrap_err();
            let message = error.to_string();
            assert!(
                message.starts_with(expected),
                "{message:?} should start with {expected:?}"
            );
            assert!(expected.starts_with(error.field()), "{expected}");
        }
    }

    proptest! {
        // Few cases with large inputs: each case already covers up to 300 routes, and the
        // lengths straddle the limits (256-byte routes, 256 entries, 63-byte namespaces).
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn validation_never_panics_and_accepts_only_bounded_reports(
            namespace in "\\PC{0,70}",
            route_names in proptest::collection::vec(
                prop_oneof![9 => "[a-z/ ]{0,12}", 1 => "\\PC{250,260}"],
                250..270,
            ),
            requests in any::<u64>(),
            errors in any::<u64>(),
            window in proptest::option::of(any::<u64>()),
        ) {
            let mut report = sample();
            report.proxy.namespace = namespace;
            report.routes = route_names.iter().map(|n| RouteCounters {
                route: n.clone(), cluster: String::new(), requests_total: requests,
                errors_total: errors, duration_us_total: 0, inflight: 0, window_requests: window,
            }).collect();
            let limits = Limits::default();
            if report.validate(&limits).is_ok() {
                prop_assert!(report.routes.len() <= limits.max_routes);
                prop_assert!(report.routes.iter().all(|r| r.route.len() <= limits.max_route_len));
                prop_assert!(errors <= requests || report.routes.is_empty());
                prop_assert!(!report.proxy.namespace.is_empty());
                prop_assert!(report.routes.iter().all(|r| r.window_requests.is_none_or(|w| w <= requests)));
            }
        }
    }
}

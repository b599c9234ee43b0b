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
mod tests;

//! Building the report body from the counters the reporter read, and the outcome of sending it.

use surge_wire::{Proxy, Report, RouteCounters, VERSION};

/// Counters of one route key as read from the host metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests completed.
    pub requests: u64,
    /// Errors (5xx or no response).
    pub errors: u64,
    /// Sum of durations in microseconds.
    pub duration_us: u64,
    /// In-flight gauge (negative readings, possible mid-update, read as 0).
    pub inflight: u64,
}

/// Everything a report carries apart from the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Proxy identity.
    pub proxy: Proxy,
    /// Instance id (same for every VM of the proxy).
    pub instance: String,
    /// Sequence number.
    pub seq: u64,
    /// Proxy wall clock.
    pub time_ms: u64,
    /// Sent early because of a surge.
    pub surge: bool,
}

/// Builds the report. Route keys that never counted a request and hold none in flight are left
/// out, so idle keys do not bloat every report.
pub fn build(header: Header, routes: Vec<(String, String, Counters)>) -> Report {
    let routes = routes
        .into_iter()
        .filter(|(_, _, c)| c.requests > 0 || c.inflight > 0)
        .map(|(route, cluster, c)| RouteCounters {
            route,
            cluster,
            requests_total: c.requests,
            // Metrics are read one at a time while traffic flows; never claim more errors than
            // requests.
            errors_total: c.errors.min(c.requests),
            duration_us_total: c.duration_us,
            inflight: c.inflight,
        })
        .collect();
    Report {
        version: VERSION,
        proxy: header.proxy,
        instance: header.instance,
        seq: header.seq,
        time_ms: header.time_ms,
        surge: header.surge,
        routes,
    }
}

/// Encodes a report as the JSON body.
pub fn encode(report: &Report) -> Vec<u8> {
    // Serialising these plain structs to a Vec cannot fail; an empty body would be refused by
    // the scaler and counted as a failure, which is the safe outcome anyway.
    serde_json::to_vec(report).unwrap_or_default()
}

/// Reads the request duration in microseconds from `request.duration` (i64 nanoseconds, LE).
pub fn duration_us(raw: Option<&[u8]>) -> u64 {
    le_i64(raw).map_or(0, |ns| u64::try_from(ns / 1000).unwrap_or(0))
}

/// Whether a request is an error: a 5xx, or no response code at all (a local failure).
pub fn is_error(response_code: Option<&[u8]>) -> bool {
    match le_i64(response_code) {
        Some(code) => code == 0 || code >= 500,
        None => true,
    }
}

/// Whether a response is an error from its `:status` header value (ASCII digits): a 5xx, or no
/// status at all.
pub fn is_error_status(status: Option<&[u8]>) -> bool {
    let code = status
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.trim().parse::<u16>().ok());
    match code {
        Some(code) => code == 0 || code >= 500,
        None => true,
    }
}

fn le_i64(raw: Option<&[u8]>) -> Option<i64> {
    let bytes: [u8; 8] = raw?.get(..8)?.try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

/// Turns a gauge read back as u64 into a count: a gauge briefly below zero (a decrement seen
/// before its increment) reads as a huge u64.
pub fn gauge_value(raw: u64) -> u64 {
    if raw > i64::MAX as u64 { 0 } else { raw }
}

/// How one report attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// Envoy refused the call (unknown cluster, bad header).
    DispatchFailed,
    /// The scaler answered with a non-2xx status (504 is a timeout).
    Status(u16),
    /// No response headers: connection refused or reset.
    Reset,
}

impl Outcome {
    /// Classifies a call response from its header count and `:status`.
    pub fn from_response(num_headers: usize, status: Option<&str>) -> Self {
        if num_headers == 0 {
            return Self::Reset;
        }
        match status.and_then(|s| s.parse::<u16>().ok()) {
            Some(code) if (200..300).contains(&code) => Self::Delivered,
            Some(code) => Self::Status(code),
            None => Self::Reset,
        }
    }

    fn state(self) -> DeliveryState {
        match self {
            Self::Delivered => DeliveryState::Healthy,
            Self::DispatchFailed => DeliveryState::DispatchFailing,
            Self::Status(_) => DeliveryState::ErrorStatus,
            Self::Reset => DeliveryState::Unreachable,
        }
    }
}

/// The state a sequence of outcomes is in; logging happens only when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Reports are delivered.
    Healthy,
    /// Envoy refuses the call (the cluster is missing, e.g. a `Sidecar` egress limit).
    DispatchFailing,
    /// The scaler answers with errors or times out.
    ErrorStatus,
    /// The scaler cannot be reached.
    Unreachable,
}

/// Tracks delivery and says what to log: one line per change of state, not one per report.
#[derive(Debug, Clone, Default)]
pub struct DeliveryLog {
    state: Option<DeliveryState>,
}

impl DeliveryLog {
    /// Records an outcome; returns the line to log if the state changed.
    pub fn record(&mut self, outcome: Outcome, cluster: &str) -> Option<String> {
        let state = outcome.state();
        let previous = self.state.replace(state);
        if previous == Some(state) {
            return None;
        }
        Some(match outcome {
            Outcome::Delivered if previous.is_none() => {
                format!("reporting to cluster {cluster}")
            }
            Outcome::Delivered => format!("reports delivered again to cluster {cluster}"),
            Outcome::DispatchFailed => format!(
                "cannot send reports: Envoy refused the call to cluster {cluster} \
                 (unknown cluster?); traffic is unaffected, retrying every interval"
            ),
            Outcome::Status(code) => format!(
                "scaler at cluster {cluster} answered {code}; traffic is unaffected, \
                 retrying every interval"
            ),
            Outcome::Reset => format!(
                "scaler at cluster {cluster} unreachable (connection failed or reset); \
                 traffic is unaffected, retrying every interval"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surge_wire::{Limits, Role};

    fn header() -> Header {
        Header {
            proxy: Proxy {
                namespace: "shop".into(),
                workload: "web".into(),
                pod: "web-1".into(),
                owner: String::new(),
                role: Role::Sidecar,
            },
            instance: "00000000000000ff".into(),
            seq: 3,
            time_ms: 1_700_000_000_000,
            surge: true,
        }
    }

    fn counters(requests: u64, errors: u64) -> Counters {
        Counters {
            requests,
            errors,
            duration_us: requests * 10,
            inflight: 0,
        }
    }

    #[test]
    fn report_carries_header_and_cumulative_counters() {
        let report = build(
            header(),
            vec![("a".into(), "inbound|80||".into(), counters(5, 1))],
        );
        assert_eq!(report.seq, 3);
        assert!(report.surge);
        assert_eq!(report.routes[0].requests_total, 5);
        assert_eq!(report.routes[0].errors_total, 1);
        assert_eq!(report.routes[0].duration_us_total, 50);
        assert_eq!(report.validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn idle_route_keys_are_left_out() {
        let report = build(
            header(),
            vec![
                ("idle".into(), String::new(), counters(0, 0)),
                (
                    "busy".into(),
                    String::new(),
                    Counters {
                        inflight: 2,
                        ..Counters::default()
                    },
                ),
            ],
        );
        let names: Vec<&str> = report.routes.iter().map(|r| r.route.as_str()).collect();
        assert_eq!(names, ["busy"]);
    }

    #[test]
    fn errors_never_exceed_requests() {
        let report = build(header(), vec![("a".into(), String::new(), counters(2, 3))]);
        assert_eq!(report.routes[0].errors_total, 2);
    }

    #[test]
    fn encoded_report_is_wire_json() {
        let report = build(header(), vec![("a".into(), String::new(), counters(1, 0))]);
        let decoded: Report = serde_json::from_slice(&encode(&report)).unwrap();
        assert_eq!(decoded, report);
    }

    #[test]
    fn response_codes_classify_errors() {
        let code = |c: i64| c.to_le_bytes();
        assert!(!is_error(Some(&code(200))));
        assert!(!is_error(Some(&code(404))));
        assert!(is_error(Some(&code(503))));
        assert!(is_error(Some(&code(0))));
        assert!(is_error(None));
        assert!(is_error(Some(b"short")));
    }

    #[test]
    fn status_headers_classify_errors() {
        assert!(!is_error_status(Some(b"200")));
        assert!(!is_error_status(Some(b"499")));
        assert!(is_error_status(Some(b"500")));
        assert!(is_error_status(Some(b"504")));
        assert!(is_error_status(Some(b"abc")));
        assert!(is_error_status(None));
    }

    #[test]
    fn durations_convert_from_nanoseconds() {
        assert_eq!(duration_us(Some(&1_500_000i64.to_le_bytes())), 1_500);
        assert_eq!(duration_us(Some(&(-5i64).to_le_bytes())), 0);
        assert_eq!(duration_us(None), 0);
    }

    #[test]
    fn negative_gauges_read_as_zero() {
        assert_eq!(gauge_value(3), 3);
        assert_eq!(gauge_value((-1i64) as u64), 0);
    }

    #[test]
    fn call_responses_are_classified() {
        assert_eq!(Outcome::from_response(0, None), Outcome::Reset);
        assert_eq!(Outcome::from_response(3, Some("202")), Outcome::Delivered);
        assert_eq!(Outcome::from_response(3, Some("504")), Outcome::Status(504));
        assert_eq!(Outcome::from_response(3, None), Outcome::Reset);
    }

    #[test]
    fn delivery_is_logged_once_per_change_of_state() {
        let mut log = DeliveryLog::default();
        let c = "outbound|8080||s";
        assert!(log.record(Outcome::Delivered, c).is_some());
        assert!(log.record(Outcome::Delivered, c).is_none());
        let line = log.record(Outcome::Status(500), c).unwrap();
        assert!(line.contains("500"), "{line}");
        assert!(log.record(Outcome::Status(503), c).is_none());
        assert!(log.record(Outcome::Reset, c).is_some());
        assert!(log.record(Outcome::Reset, c).is_none());
        let line = log.record(Outcome::Delivered, c).unwrap();
        assert!(line.contains("again"), "{line}");
    }
}

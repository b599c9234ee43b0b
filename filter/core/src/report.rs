//! Building the report body from the counters the reporter read, and the outcome of sending it.

use surge_wire::{Held, HoldTotals, Proxy, Report, ReportBody, Role, RouteCounters, VERSION};

use crate::route::Slot;
use crate::surge::{Arrivals, Recent};

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

/// One route key as the reporter read it: its slot in the route table, its names and its
/// process-wide counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Where the key sits in the shared route table (or `other`).
    pub slot: Slot,
    /// Route name.
    pub route: String,
    /// Cluster name (empty when the key leaves it out).
    pub cluster: String,
    /// The counters.
    pub counters: Counters,
}

/// Requests that have reached the proxy per route key: completed plus in flight.
pub fn arrivals(readings: &[Reading]) -> Arrivals {
    let mut arrivals = Arrivals::default();
    for reading in readings {
        let count = reading
            .counters
            .requests
            .saturating_add(reading.counters.inflight);
        match reading.slot {
            Slot::Other => arrivals.other = count,
            Slot::Index(i) => {
                if arrivals.indexed.len() <= i {
                    arrivals.indexed.resize(i + 1, 0);
                }
                if let Some(entry) = arrivals.indexed.get_mut(i) {
                    *entry = count;
                }
            }
        }
    }
    arrivals
}

/// Builds the report, with the recent window when there is one. Route keys that never counted
/// a request and hold none in flight are left out, so idle keys do not bloat every report.
pub fn build(header: Header, readings: Vec<Reading>, recent: Option<&Recent>) -> Report {
    let window_of = |slot: Slot| {
        recent.map(|recent| match slot {
            Slot::Other => recent.arrivals.other,
            Slot::Index(i) => recent.arrivals.indexed.get(i).copied().unwrap_or(0),
        })
    };
    let routes = readings
        .into_iter()
        .filter(|r| r.counters.requests > 0 || r.counters.inflight > 0)
        .map(|r| {
            let c = r.counters;
            RouteCounters {
                // The window never claims more than the route's arrivals so far (the counters
                // are read one at a time while traffic flows).
                window_requests: window_of(r.slot)
                    .map(|w| w.min(c.requests.saturating_add(c.inflight))),
                route: r.route,
                cluster: r.cluster,
                requests_total: c.requests,
                // Likewise, never claim more errors than requests.
                errors_total: c.errors.min(c.requests),
                duration_us_total: c.duration_us,
                inflight: c.inflight,
            }
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
        window_ms: recent.map(|r| r.span_ms),
    }
}

/// Encodes a report as the JSON body. Written by hand: serde_json's serializer would add about
/// 15 KB to every sidecar's `.wasm` for one fixed shape; a test checks the output decodes, with
/// serde_json, to the same report.
pub fn encode(report: &Report) -> Vec<u8> {
    let mut out = Json(Vec::with_capacity(256 + 160 * report.routes.len()));
    write_report(&mut out, report);
    out.raw("}");
    out.0
}

/// Encodes a whole report body: the report and, when there are any, the hold fields.
pub fn encode_body(body: &ReportBody) -> Vec<u8> {
    let report = &body.report;
    let mut out = Json(Vec::with_capacity(
        256 + 160 * report.routes.len() + 80 * body.held.len(),
    ));
    write_report(&mut out, report);
    for (i, h) in body.held.iter().enumerate() {
        out.raw(if i == 0 {
            ",\"held\":[{\"cluster\":"
        } else {
            ",{\"cluster\":"
        });
        out.string(&h.cluster);
        out.raw(",\"requests\":");
        out.number(h.requests);
        out.raw("}");
    }
    if !body.held.is_empty() {
        out.raw("]");
    }
    if let Some(t) = &body.hold_totals {
        let fields = [
            ("held_total", t.held_total),
            ("resumed_total", t.resumed_total),
            ("timed_out_total", t.timed_out_total),
            ("cancelled_total", t.cancelled_total),
            ("rejected_total", t.rejected_total),
        ];
        for (i, (name, value)) in fields.into_iter().enumerate() {
            out.raw(if i == 0 { ",\"hold_totals\":{" } else { "," });
            out.string(name);
            out.raw(":");
            out.number(value);
        }
        out.raw("}");
    }
    out.raw("}");
    out.0
}

/// The hold fields of a report body: what the proxy holds now, and the totals as read (the
/// outcome counters before `held_total`, so no outcome is ever read ahead of its hold), kept
/// consistent with each other and the wire limits.
pub fn hold_fields(held: Vec<Held>, totals: Option<HoldTotals>) -> (Vec<Held>, Option<HoldTotals>) {
    let held = held
        .into_iter()
        .filter(|h| h.requests > 0)
        .map(|h| Held {
            requests: h.requests.min(surge_wire::Limits::default().max_inflight),
            ..h
        })
        .collect();
    let totals = totals.map(|t| {
        // Counters are read one by one while VMs add to them; never claim more outcomes than
        // holds.
        let mut left = t.held_total;
        let mut take = |n: u64| {
            let n = n.min(left);
            left -= n;
            n
        };
        HoldTotals {
            resumed_total: take(t.resumed_total),
            timed_out_total: take(t.timed_out_total),
            cancelled_total: take(t.cancelled_total),
            ..t
        }
    });
    (held, totals)
}

/// Writes the report's fields, leaving its object open for the body's extra fields.
fn write_report(out: &mut Json, report: &Report) {
    let proxy = &report.proxy;
    out.raw("{\"version\":");
    out.number(u64::from(report.version));
    out.raw(",\"proxy\":{\"namespace\":");
    out.string(&proxy.namespace);
    out.raw(",\"workload\":");
    out.string(&proxy.workload);
    out.raw(",\"pod\":");
    out.string(&proxy.pod);
    out.raw(",\"owner\":");
    out.string(&proxy.owner);
    out.raw(match proxy.role {
        Role::Sidecar => ",\"role\":\"sidecar\"},\"instance\":",
        Role::Gateway => ",\"role\":\"gateway\"},\"instance\":",
        Role::Waypoint => ",\"role\":\"waypoint\"},\"instance\":",
    });
    out.string(&report.instance);
    out.raw(",\"seq\":");
    out.number(report.seq);
    out.raw(",\"time_ms\":");
    out.number(report.time_ms);
    out.raw(if report.surge {
        ",\"surge\":true,\"routes\":["
    } else {
        ",\"surge\":false,\"routes\":["
    });
    for (i, r) in report.routes.iter().enumerate() {
        out.raw(if i == 0 {
            "{\"route\":"
        } else {
            ",{\"route\":"
        });
        out.string(&r.route);
        out.raw(",\"cluster\":");
        out.string(&r.cluster);
        out.raw(",\"requests_total\":");
        out.number(r.requests_total);
        out.raw(",\"errors_total\":");
        out.number(r.errors_total);
        out.raw(",\"duration_us_total\":");
        out.number(r.duration_us_total);
        out.raw(",\"inflight\":");
        out.number(r.inflight);
        if let Some(window) = r.window_requests {
            out.raw(",\"window_requests\":");
            out.number(window);
        }
        out.raw("}");
    }
    out.raw("]");
    if let Some(window) = report.window_ms {
        out.raw(",\"window_ms\":");
        out.number(window);
    }
}

/// A JSON writer for the report's fixed shape.
struct Json(Vec<u8>);

impl Json {
    fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.0.extend_from_slice(&digits[start..]);
    }

    /// A string with JSON's escapes; everything else (UTF-8 included) is copied as is.
    fn string(&mut self, text: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.0.push(b'"');
        for &b in text.as_bytes() {
            match b {
                b'"' => self.0.extend_from_slice(b"\\\""),
                b'\\' => self.0.extend_from_slice(b"\\\\"),
                0..=0x1f => {
                    self.0.extend_from_slice(b"\\u00");
                    self.0.push(HEX[usize::from(b >> 4)]);
                    self.0.push(HEX[usize::from(b & 0xf)]);
                }
                _ => self.0.push(b),
            }
        }
        self.0.push(b'"');
    }
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

    fn reading(slot: Slot, route: &str, counters: Counters) -> Reading {
        Reading {
            slot,
            route: route.into(),
            cluster: String::new(),
            counters,
        }
    }

    #[test]
    fn report_carries_header_and_cumulative_counters() {
        let report = build(
            header(),
            vec![Reading {
                cluster: "inbound|80||".into(),
                ..reading(Slot::Index(0), "a", counters(5, 1))
            }],
            None,
        );
        assert_eq!(report.seq, 3);
        assert!(report.surge);
        assert_eq!(report.routes[0].requests_total, 5);
        assert_eq!(report.routes[0].errors_total, 1);
        assert_eq!(report.routes[0].duration_us_total, 50);
        assert_eq!(report.window_ms, None);
        assert_eq!(report.validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn idle_route_keys_are_left_out() {
        let busy = Counters {
            inflight: 2,
            ..Counters::default()
        };
        let report = build(
            header(),
            vec![
                reading(Slot::Index(0), "idle", counters(0, 0)),
                reading(Slot::Index(1), "busy", busy),
            ],
            None,
        );
        let names: Vec<&str> = report.routes.iter().map(|r| r.route.as_str()).collect();
        assert_eq!(names, ["busy"]);
    }

    #[test]
    fn errors_never_exceed_requests() {
        let report = build(
            header(),
            vec![reading(Slot::Index(0), "a", counters(2, 3))],
            None,
        );
        assert_eq!(report.routes[0].errors_total, 2);
    }

    #[test]
    fn arrivals_are_completions_plus_in_flight_by_slot() {
        let with_inflight = Counters {
            inflight: 3,
            ..counters(10, 0)
        };
        let readings = vec![
            reading(Slot::Index(1), "b", with_inflight),
            reading(Slot::Other, "other", counters(4, 0)),
        ];
        let arrivals = arrivals(&readings);
        assert_eq!(arrivals.indexed, [0, 13]);
        assert_eq!(arrivals.other, 4);
        assert_eq!(arrivals.total(), 17);
    }

    #[test]
    fn the_recent_window_goes_to_each_route_by_slot() {
        let recent = Recent {
            span_ms: 200,
            arrivals: Arrivals {
                indexed: vec![7, 50],
                other: 2,
            },
        };
        let report = build(
            header(),
            vec![
                reading(Slot::Index(0), "a", counters(9, 0)),
                reading(Slot::Index(1), "b", counters(30, 0)),
                reading(Slot::Other, "other", counters(2, 0)),
            ],
            Some(&recent),
        );
        assert_eq!(report.window_ms, Some(200));
        let windows: Vec<Option<u64>> = report.routes.iter().map(|r| r.window_requests).collect();
        // b's window is capped at its 30 arrivals so far.
        assert_eq!(windows, [Some(7), Some(30), Some(2)]);
        assert_eq!(report.validate(&Limits::default()), Ok(()));
    }

    #[test]
    fn encoded_report_is_wire_json() {
        let recent = Recent {
            span_ms: 205,
            arrivals: Arrivals {
                indexed: vec![1],
                other: 0,
            },
        };
        let mut report = build(
            header(),
            vec![
                reading(Slot::Index(0), "a", counters(1, 0)),
                reading(Slot::Other, "other", counters(0, 0)),
            ],
            Some(&recent),
        );
        let decoded: Report = serde_json::from_slice(&encode(&report)).unwrap();
        assert_eq!(decoded, report);
        // Escapes, odd characters, the other role, no routes, no window.
        report.proxy.owner = "q\"uote\\back\u{1}ctl\u{7f}é😀".into();
        report.proxy.role = Role::Gateway;
        report.surge = false;
        report.routes.clear();
        report.window_ms = None;
        let decoded: Report = serde_json::from_slice(&encode(&report)).unwrap();
        assert_eq!(decoded, report);
        report.seq = u64::MAX;
        report.time_ms = 0;
        let decoded: Report = serde_json::from_slice(&encode(&report)).unwrap();
        assert_eq!(decoded, report);
    }

    #[test]
    fn an_encoded_body_is_wire_json_with_or_without_the_hold_fields() {
        let report = build(
            header(),
            vec![reading(Slot::Index(0), "a", counters(4, 1))],
            None,
        );
        let plain = ReportBody::plain(report.clone());
        assert_eq!(encode_body(&plain), encode(&report));
        let (held, hold_totals) = hold_fields(
            vec![
                Held {
                    cluster: "outbound|8080||app.default.svc.cluster.local".into(),
                    requests: 2,
                },
                Held {
                    cluster: "q\"uote".into(),
                    requests: 0,
                },
            ],
            Some(HoldTotals {
                held_total: 5,
                resumed_total: 4,
                timed_out_total: 3,
                cancelled_total: 1,
                rejected_total: 7,
            }),
        );
        let body = ReportBody {
            report,
            held,
            hold_totals,
        };
        assert_eq!(body.held.len(), 1, "empty entries are left out");
        let totals = body.hold_totals.unwrap();
        assert_eq!(
            (
                totals.resumed_total,
                totals.timed_out_total,
                totals.cancelled_total
            ),
            (4, 1, 0)
        );
        let decoded: ReportBody = serde_json::from_slice(&encode_body(&body)).unwrap();
        assert_eq!(decoded, body);
        assert!(decoded.is_activation());
        assert_eq!(decoded.validate(&Limits::default()), Ok(()));
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

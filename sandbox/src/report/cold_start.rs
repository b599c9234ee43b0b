//! The cold start of a run whose app went to zero: the first request after the load returned,
//! from its scheduled send to its response, split where the time went.
//!
//! ```text
//!  first request (held by the gateway or the caller's sidecar)
//!   -> activation report at the scaler   (the report tap: the first report carrying held requests)
//!   -> scale write from zero             (the API server's audit log)
//!   -> first ready endpoint              (the app Service's EndpointSlices)
//!   -> its response                      (the load generator: resumed and answered)
//! ```

use serde::{Deserialize, Serialize};

use crate::ingress::HoldCounts;

/// Where a cold start's time went, in milliseconds from the first request's scheduled send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdStart {
    /// When the app reached zero replicas (seconds from the run's start).
    pub zero_at_s: f64,
    /// The first request after that, answered: its latency (`cold_start_ms`).
    pub cold_start_ms: Option<f64>,
    /// Whether that first request was answered 2xx (a 503 means it was not held to the end).
    pub first_request_ok: bool,
    /// -> the first report carrying held requests at the scaler.
    pub activation_report_ms: Option<f64>,
    /// -> the scale write from zero.
    pub scale_from_zero_ms: Option<f64>,
    /// -> the app Service's first ready endpoint.
    pub pod_ready_ms: Option<f64>,
    /// What the proxy in front of the app counted: held, resumed, timed out, 503 at once
    /// (`held_rejected`), cancelled.
    pub hold: HoldCounts,
}

/// What the cold start is read from.
pub(super) struct Inputs<'a> {
    /// Seconds from the start at which the load came back (the scenario's step).
    pub(super) step_at: Option<f64>,
    /// The first request of each second: (latency us, ok).
    pub(super) firsts: &'a [Option<(u64, bool)>],
    /// Reports at the scaler: (seconds from the start, requests held).
    pub(super) reports: &'a [(f64, u64)],
    /// Accepted scale writes: (seconds from the start, replicas written).
    pub(super) writes: &'a [(f64, Option<i64>)],
    /// Ready endpoints over time: (seconds from the start, ready, desired).
    pub(super) timeline: &'a [(f64, u32, u32)],
    /// The hold counters of the proxy in front of the app.
    pub(super) hold: Option<HoldCounts>,
}

/// The cold start, when the app reached zero before the load came back.
pub(super) fn cold_start(c: &Inputs<'_>) -> Option<ColdStart> {
    let step = c.step_at?;
    let zero_at_s = c
        .timeline
        .iter()
        .rev()
        .find(|(t, ready, desired)| *t <= step && *ready == 0 && *desired == 0)
        .map(|(t, _, _)| *t)?;
    let after = |t: f64| (t >= step).then_some((t - step) * 1000.0);
    let first = c.firsts.get(step as usize).copied().flatten();
    Some(ColdStart {
        zero_at_s,
        cold_start_ms: first.map(|(latency_us, _)| latency_us as f64 / 1000.0),
        first_request_ok: first.is_some_and(|(_, ok)| ok),
        activation_report_ms: c
            .reports
            .iter()
            .find(|(t, held)| *t >= step && *held > 0)
            .and_then(|(t, _)| after(*t)),
        scale_from_zero_ms: c
            .writes
            .iter()
            .find(|(t, replicas)| *t >= step && replicas.is_some_and(|r| r > 0))
            .and_then(|(t, _)| after(*t)),
        pod_ready_ms: c
            .timeline
            .iter()
            .find(|(t, ready, _)| *t >= step && *ready > 0)
            .and_then(|(t, _, _)| after(*t)),
        hold: c.hold.unwrap_or_default(),
    })
}

/// The summary's lines for a cold start.
pub(super) fn text(cold: &ColdStart) -> String {
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
    format!(
        "app at zero from {:.1} s; cold start (first request -> its response): {}{}\n  \
         -> activation report {}, scale from zero {}, first ready endpoint {}\n  \
         held {} (resumed {}, timed out {}, cancelled {}), 503 at once over the cap {}\n",
        cold.zero_at_s,
        ms(cold.cold_start_ms),
        if cold.first_request_ok {
            ""
        } else {
            " (not answered 2xx)"
        },
        ms(cold.activation_report_ms),
        ms(cold.scale_from_zero_ms),
        ms(cold.pod_ready_ms),
        cold.hold.held,
        cold.hold.resumed,
        cold.hold.timed_out,
        cold.hold.cancelled,
        cold.hold.rejected,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cold_start_is_split_at_the_activation_the_write_and_the_first_ready_endpoint() {
        let firsts = [None, None, None, Some((1_850_000, true))];
        let inputs = Inputs {
            step_at: Some(3.0),
            firsts: &firsts,
            reports: &[(1.0, 0), (3.002, 1), (3.1, 4)],
            writes: &[(1.5, Some(0)), (3.010, Some(1))],
            timeline: &[(0.0, 1, 1), (1.6, 0, 0), (3.011, 0, 1), (4.8, 1, 1)],
            hold: Some(HoldCounts {
                held: 12,
                resumed: 12,
                ..HoldCounts::default()
            }),
        };
        let cold = cold_start(&inputs).unwrap();
        assert_eq!(cold.zero_at_s, 1.6);
        assert_eq!(cold.cold_start_ms, Some(1850.0));
        assert!(cold.first_request_ok);
        let near = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() < 1e-6;
        assert!(near(cold.activation_report_ms, 2.0));
        assert!(near(cold.scale_from_zero_ms, 10.0));
        assert!(near(cold.pod_ready_ms, 1800.0));
        assert!(text(&cold).contains("held 12 (resumed 12"));
    }

    #[test]
    fn an_app_that_never_reached_zero_has_no_cold_start() {
        let inputs = Inputs {
            step_at: Some(3.0),
            firsts: &[],
            reports: &[],
            writes: &[],
            timeline: &[(0.0, 1, 1), (2.0, 1, 1)],
            hold: None,
        };
        assert_eq!(cold_start(&inputs), None);
    }
}

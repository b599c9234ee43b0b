//! The cold start of a run whose app went to zero: the first request after the load returned,
//! from its scheduled send to its response, split where the time went.
//!
//! ```text
//!  first request (held by the gateway or the caller's sidecar)
//!   -> activation report at the scaler   (the report tap: the first report carrying held requests)
//!   -> scale write from zero             (the API server's audit log)
//!   -> first ready endpoint              (the app Service's EndpointSlices)
//!   -> the first answer saying warm      (the report tap: an answer listing nothing cold)
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
    /// -> the first answer to a proxy, after the activation, that lists nothing cold (the
    /// proxy resumes on it).
    #[serde(default)]
    pub warm_answer_ms: Option<f64>,
    /// What the proxy in front of the app counted: held, resumed, timed out, 503 at once
    /// (`held_rejected`), cancelled.
    pub hold: HoldCounts,
}

/// What the cold start is read from.
pub(super) struct Inputs<'a> {
    /// Seconds from the start at which the load came back (the scenario's step).
    pub(super) step_at: Option<f64>,
    /// The first request of each second: (scheduled at, seconds from the start; latency us;
    /// ok).
    pub(super) firsts: &'a [Option<(f64, u64, bool)>],
    /// Reports at the scaler: (seconds from the start, requests held).
    pub(super) reports: &'a [(f64, u64)],
    /// Their answers: (seconds from the start the answer went back, destinations listed cold).
    pub(super) answers: &'a [(f64, Option<usize>)],
    /// Accepted scale writes: (seconds from the start, replicas written).
    pub(super) writes: &'a [(f64, Option<i64>)],
    /// Ready endpoints over time: (seconds from the start, ready, desired).
    pub(super) timeline: &'a [(f64, u32, u32)],
    /// The hold counters of the proxy in front of the app.
    pub(super) hold: Option<HoldCounts>,
}

/// The cold start, when the app reached zero before the load came back.
pub(super) fn cold_start(c: &Inputs<'_>) -> Option<ColdStart> {
    cold_start_between(c, c.step_at?, f64::INFINITY, c.hold.unwrap_or_default())
}

/// Every cold start of a run whose load comes back several times (`returns`: seconds from the
/// start, in order), each read up to the next return. The proxy's hold counters are read once,
/// at the end of the run, so these carry none (the run's are in [`cold_start`]).
pub(super) fn cold_starts(c: &Inputs<'_>, returns: &[f64]) -> Vec<ColdStart> {
    returns
        .iter()
        .enumerate()
        .filter_map(|(i, &at)| {
            let until = returns.get(i + 1).copied().unwrap_or(f64::INFINITY);
            let since = i.checked_sub(1).map_or(f64::NEG_INFINITY, |p| returns[p]);
            cold_start_between(c, at, until, HoldCounts::default())
                .filter(|cold| cold.zero_at_s > since)
        })
        .collect()
}

/// The cold start of the load returning at `step`, read from what happened before `until`.
fn cold_start_between(
    c: &Inputs<'_>,
    step: f64,
    until: f64,
    hold: HoldCounts,
) -> Option<ColdStart> {
    let zero_at_s = c
        .timeline
        .iter()
        .rev()
        .find(|(t, ready, desired)| *t <= step && *ready == 0 && *desired == 0)
        .map(|(t, _, _)| *t)?;
    // At zero only if nothing came back up between reaching zero and the load's return.
    if c.timeline
        .iter()
        .any(|(t, ready, desired)| *t > zero_at_s && *t <= step && (*ready > 0 || *desired > 0))
    {
        return None;
    }
    let first = c.firsts.get(step as usize).copied().flatten();
    // Times are from the first request's scheduled send (the load resumes at `step`; its
    // first request leaves one inter-arrival time later, at most).
    let sent = first.map_or(step, |(at, _, _)| at.max(step));
    let within = |t: f64| t >= step && t < until;
    let after = |t: f64| within(t).then_some((t - sent) * 1000.0);
    let activation = c
        .reports
        .iter()
        .find(|(t, held)| within(*t) && *held > 0)
        .map(|(t, _)| *t);
    Some(ColdStart {
        zero_at_s,
        cold_start_ms: first.map(|(_, latency_us, _)| latency_us as f64 / 1000.0),
        first_request_ok: first.is_some_and(|(_, _, ok)| ok),
        activation_report_ms: c
            .reports
            .iter()
            .find(|(t, held)| within(*t) && *held > 0)
            .and_then(|(t, _)| after(*t)),
        scale_from_zero_ms: c
            .writes
            .iter()
            .find(|(t, replicas)| within(*t) && replicas.is_some_and(|r| r > 0))
            .and_then(|(t, _)| after(*t)),
        pod_ready_ms: c
            .timeline
            .iter()
            .find(|(t, ready, _)| within(*t) && *ready > 0)
            .and_then(|(t, _, _)| after(*t)),
        warm_answer_ms: activation.and_then(|activated| {
            c.answers
                .iter()
                .filter(|(t, cold)| *t >= activated && within(*t) && *cold == Some(0))
                .map(|(t, _)| *t)
                .min_by(f64::total_cmp)
                .and_then(after)
        }),
        hold,
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
        let firsts = [None, None, None, Some((3.0, 1_850_000, true))];
        let inputs = Inputs {
            step_at: Some(3.0),
            firsts: &firsts,
            reports: &[(1.0, 0), (3.002, 1), (3.1, 4)],
            // The activation's answer is kept until warm; an answer before it says nothing.
            answers: &[(1.0, Some(0)), (3.002, Some(1)), (4.81, Some(0))],
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
        assert!(near(cold.warm_answer_ms, 1810.0));
        assert!(text(&cold).contains("held 12 (resumed 12"));
    }

    #[test]
    fn each_return_to_an_app_at_zero_is_a_cold_start_read_up_to_the_next() {
        // Returns at 3 s (from zero), 6 s (the app was woken at 5 s: warm) and 9 s (zero
        // again at 8 s).
        let mut firsts = vec![None; 10];
        firsts[3] = Some((3.0, 900_000, true));
        firsts[6] = Some((6.0, 20_000, true));
        firsts[9] = Some((9.01, 700_000, false));
        let inputs = Inputs {
            step_at: Some(3.0),
            firsts: &firsts,
            reports: &[(3.01, 1), (9.02, 2)],
            answers: &[],
            writes: &[
                (1.0, Some(0)),
                (3.02, Some(1)),
                (8.0, Some(0)),
                (9.03, Some(2)),
            ],
            timeline: &[
                (0.0, 1, 1),
                (1.1, 0, 0),
                (3.02, 0, 1),
                (3.8, 1, 1),
                (8.0, 0, 0),
                (9.03, 0, 2),
            ],
            hold: None,
        };
        let colds = cold_starts(&inputs, &[3.0, 6.0, 9.0]);
        assert_eq!(colds.len(), 2, "{colds:?}");
        let near = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() < 1e-6;
        assert_eq!(colds[0].zero_at_s, 1.1);
        assert!(near(colds[0].pod_ready_ms, 800.0));
        assert!(colds[0].first_request_ok);
        assert_eq!(colds[1].zero_at_s, 8.0);
        // From the first request's send, 10 ms after the load resumed.
        assert!(near(colds[1].activation_report_ms, 10.0));
        assert!(near(colds[1].scale_from_zero_ms, 20.0));
        // Its pod never became ready within the run: nothing is borrowed from another cycle.
        assert_eq!(colds[1].pod_ready_ms, None);
        assert!(!colds[1].first_request_ok);
    }

    #[test]
    fn an_app_that_never_reached_zero_has_no_cold_start() {
        let inputs = Inputs {
            step_at: Some(3.0),
            firsts: &[],
            reports: &[],
            answers: &[],
            writes: &[],
            timeline: &[(0.0, 1, 1), (2.0, 1, 1)],
            hold: None,
        };
        assert_eq!(cold_start(&inputs), None);
    }
}

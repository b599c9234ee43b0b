//! The live side of the comparison: a real sandbox run (real Envoys with the filter, the real
//! scaler binary, the embedded API) turned into a row of the table, and the cross-check of
//! Surge's replayed decisions against it.
//!
//! The two differ where the simulation simplifies: the replay's queue is a fluid, its pods start
//! exactly on time and its reports arrive at once; the live run has real Envoys and a real
//! scaler sharing a 2-core machine. They must agree on the reaction (issue 5: "within the report
//! interval"): the first scale-up after the load step within one report interval of the filter
//! (1 s). The replicas asked for 2 s after the step and at the peak are reported next to it, not
//! required to match: live pods that start late on a busy machine change what the sidecars
//! count, and so the scaler's later answers.

use serde::{Deserialize, Serialize};

use super::models::surge::report_interval_ms;
use super::report::SystemResult;
use super::sim::{Metrics, ScaleWrite, SecondSample};
use crate::report::{RunResult, SecondRow};

/// Name of the live row in tables and charts.
pub const LIVE_NAME: &str = "Surge (live sandbox)";

/// Seconds after the step at which the replicas asked for are compared.
pub const SETTLE_S: f64 = 2.0;

/// The scale writes of a live run that the API accepted and that changed the replicas.
fn accepted_writes(run: &RunResult, initial: u32) -> Vec<ScaleWrite> {
    let mut current = initial;
    let mut writes = Vec::new();
    for w in &run.scale_writes {
        let Some(replicas) = w.replicas.filter(|_| (200..300).contains(&w.status)) else {
            continue;
        };
        let replicas = u32::try_from(replicas.max(0)).unwrap_or(u32::MAX);
        if replicas != current {
            writes.push(ScaleWrite { t_s: w.t, replicas });
            current = replicas;
        }
    }
    writes
}

/// Desired replicas at `t_s` from an initial value and the writes.
pub fn replicas_at(initial: u32, writes: &[ScaleWrite], t_s: f64) -> u32 {
    writes
        .iter()
        .take_while(|w| w.t_s <= t_s)
        .last()
        .map_or(initial, |w| w.replicas)
}

/// Seconds from `event_s` until the ready capacity covers the offered load again after the
/// first second (at or after the event) it fell short, as the simulation defines it (see
/// [`Metrics::enough_capacity_s`]): 0 if it never fell short, `None` if it never caught up.
pub fn enough_capacity_from_seconds(seconds: &[SecondRow], event_s: f64) -> Option<f64> {
    let mut short = false;
    for s in seconds.iter().filter(|s| s.t as f64 >= event_s.floor()) {
        if s.ready_capacity_rps < s.offered_rps {
            short = true;
        } else if short {
            return Some((s.t as f64 - event_s).max(0.0));
        }
    }
    if short { None } else { Some(0.0) }
}

/// A live run as a row of the comparison, measured from `event_s` (the same event the models
/// are measured from).
pub fn system_result(run: &RunResult, event_s: f64) -> SystemResult {
    measured_row(run, event_s, LIVE_NAME)
}

/// A live run as the row named `system`, measured from `event_s`.
pub fn measured_row(run: &RunResult, event_s: f64, system: &str) -> SystemResult {
    let initial = run
        .seconds
        .first()
        .map_or(run.scenario.scaler.min_replicas, |s| s.desired);
    let writes = accepted_writes(run, initial);
    let before = replicas_at(initial, &writes, event_s);
    let first_scale_up_s = writes
        .iter()
        .find(|w| w.t_s >= event_s && w.replicas > before)
        .map(|w| w.t_s - event_s);
    let mut reversals = 0;
    let mut last_direction = 0i8;
    let mut previous = initial;
    for w in &writes {
        let direction = if w.replicas > previous { 1 } else { -1 };
        if last_direction != 0 && direction != last_direction {
            reversals += 1;
        }
        last_direction = direction;
        previous = w.replicas;
    }
    let summary = &run.summary;
    let requests = summary.requests as f64;
    let metrics = Metrics {
        first_scale_up_s,
        // The summary times it to the millisecond, from a load step to capacity for the
        // step's load; where it has no figure (no step, as on the noisy curve, or a spike over
        // before capacity caught up) the models' definition on the per-second series applies:
        // capacity covering the offered load again.
        enough_capacity_s: summary
            .enough_capacity_ms
            .map(|ms| ms / 1000.0)
            .or_else(|| enough_capacity_from_seconds(&run.seconds, event_s)),
        overloaded_s: f64::from(summary.overloaded_seconds),
        over_objective: summary.over_slo_share,
        refused: if requests > 0.0 {
            summary.failed as f64 / requests
        } else {
            0.0
        },
        pod_seconds: summary.pod_seconds,
        scale_events: writes.len() as u32,
        reversals,
        peak_replicas: summary.max_desired,
        requests,
    };
    let series = run
        .seconds
        .iter()
        .map(|s| SecondSample {
            t_s: u32::try_from(s.t).unwrap_or(u32::MAX),
            offered_rps: s.offered_rps,
            desired: s.desired,
            ready: s.ready.round() as u32,
            capacity_rps: s.ready_capacity_rps,
            served_rps: s.ok as f64,
            overloaded: if crate::report::overloaded(s.offered_rps, s.ready_capacity_rps) {
                1.0
            } else {
                0.0
            },
            backlog: 0.0,
        })
        .collect();
    SystemResult {
        system: system.to_string(),
        median: metrics,
        first_scale_up_range_s: None,
        runs: vec![metrics],
        series,
        initial_replicas: initial,
        writes,
    }
}

/// Replayed against live, on one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossCheck {
    /// Scenario name.
    pub scenario: String,
    /// First scale-up after the step, replayed (seconds).
    pub replay_first_s: Option<f64>,
    /// First scale-up after the step, live (seconds).
    pub live_first_s: Option<f64>,
    /// Replicas asked for [`SETTLE_S`] after the step, replayed.
    pub replay_settled: u32,
    /// Replicas asked for [`SETTLE_S`] after the step, live.
    pub live_settled: u32,
    /// Most replicas asked for, replayed.
    pub replay_peak: u32,
    /// Most replicas asked for, live.
    pub live_peak: u32,
    /// Whether they agree: first scale-ups within one report interval of each other (or both
    /// absent).
    pub agree: bool,
}

/// Compares the replayed Surge row with the live one of the same scenario.
pub fn cross_check(
    scenario: &str,
    event_s: f64,
    replay: &SystemResult,
    live: &SystemResult,
) -> CrossCheck {
    let tolerance_s = report_interval_ms() as f64 / 1000.0;
    let (rf, lf) = (replay.median.first_scale_up_s, live.median.first_scale_up_s);
    let first_agree = match (rf, lf) {
        (Some(r), Some(l)) => (r - l).abs() <= tolerance_s,
        (None, None) => true,
        _ => false,
    };
    let at = event_s + SETTLE_S;
    let replay_settled = replicas_at(replay.initial_replicas, &replay.writes, at);
    let live_settled = replicas_at(live.initial_replicas, &live.writes, at);
    CrossCheck {
        scenario: scenario.to_string(),
        replay_first_s: rf,
        live_first_s: lf,
        replay_settled,
        live_settled,
        replay_peak: replay.median.peak_replicas,
        live_peak: live.median.peak_replicas,
        agree: first_agree,
    }
}

/// The cross-checks as markdown lines.
pub fn markdown(checks: &[CrossCheck]) -> String {
    let seconds = |v: Option<f64>| v.map_or_else(|| "never".into(), |s| format!("{s:.2} s"));
    checks
        .iter()
        .map(|c| {
            format!(
                "- {}: first scale-up replayed {} vs live {}; replicas {SETTLE_S:.0} s after the \
                 step replayed {} vs live {}; peak replayed {} vs live {}: {}\n",
                c.scenario,
                seconds(c.replay_first_s),
                seconds(c.live_first_s),
                c.replay_settled,
                c.live_settled,
                c.replay_peak,
                c.live_peak,
                if c.agree { "agree" } else { "DISAGREE" },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(initial: u32, writes: &[(f64, u32)], first: Option<f64>, peak: u32) -> SystemResult {
        let metrics = Metrics {
            first_scale_up_s: first,
            enough_capacity_s: None,
            overloaded_s: 0.0,
            over_objective: 0.0,
            refused: 0.0,
            pod_seconds: 0.0,
            scale_events: writes.len() as u32,
            reversals: 0,
            peak_replicas: peak,
            requests: 0.0,
        };
        SystemResult {
            system: "x".into(),
            median: metrics,
            first_scale_up_range_s: None,
            runs: vec![metrics],
            series: vec![],
            initial_replicas: initial,
            writes: writes
                .iter()
                .map(|&(t_s, replicas)| ScaleWrite { t_s, replicas })
                .collect(),
        }
    }

    #[test]
    fn enough_capacity_on_the_series_is_the_models_definition() {
        let second = |t: u64, offered: f64, capacity: f64| SecondRow {
            t,
            offered_rps: offered,
            ok: 0,
            errors: 0,
            over_slo: 0,
            p50_ms: None,
            p99_ms: None,
            ready: 0.0,
            desired: 0,
            ready_capacity_rps: capacity,
        };
        let short_then_caught_up = [
            second(9, 100.0, 50.0),
            second(10, 100.0, 150.0),
            second(11, 200.0, 150.0),
            second(12, 200.0, 150.0),
            second(13, 200.0, 250.0),
        ];
        // Short before the event does not count; short at 11, enough again at 13.
        assert_eq!(
            enough_capacity_from_seconds(&short_then_caught_up, 10.5),
            Some(2.5)
        );
        assert_eq!(
            enough_capacity_from_seconds(&short_then_caught_up[..4], 10.5),
            None
        );
        assert_eq!(
            enough_capacity_from_seconds(&short_then_caught_up[..2], 10.0),
            Some(0.0)
        );
    }

    #[test]
    fn replicas_follow_the_writes() {
        let writes = row(1, &[(10.0, 3), (12.0, 5)], None, 5).writes;
        assert_eq!(replicas_at(1, &writes, 9.9), 1);
        assert_eq!(replicas_at(1, &writes, 10.0), 3);
        assert_eq!(replicas_at(1, &writes, 30.0), 5);
    }

    #[test]
    fn agreement_is_first_scale_ups_within_one_report_interval() {
        let replay = row(1, &[(10.2, 5)], Some(0.2), 5);
        let live = row(1, &[(10.5, 3), (11.0, 5)], Some(0.5), 6);
        let check = cross_check("s", 10.0, &replay, &live);
        assert!(check.agree);
        assert_eq!((check.replay_settled, check.live_settled), (5, 5));
        assert_eq!((check.replay_peak, check.live_peak), (5, 6));
        // Live a second and a half later: beyond one report interval.
        let late = row(1, &[(11.7, 5)], Some(1.7), 5);
        let check = cross_check("s", 10.0, &replay, &late);
        assert!(!check.agree);
        assert!(markdown(&[check]).contains("DISAGREE"));
        // One scaled up, the other never did.
        let never = row(1, &[], None, 1);
        assert!(!cross_check("s", 10.0, &replay, &never).agree);
        assert!(cross_check("s", 10.0, &never, &never).agree);
    }
}

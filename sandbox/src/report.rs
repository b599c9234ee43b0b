//! A run's results: the per-second series, the pod timeline, the scale writes seen by the
//! embedded API, and the summary computed from them (pure functions, tested in `report/tests.rs`). Written
//! as JSON for tools and tests, and printed for people (`report/text.rs`).

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod cold_start;
pub mod nodes;
mod text;

pub use cold_start::ColdStart;
pub use nodes::NodeFigures;
pub use text::summary_text;

use crate::ingress::HoldCounts;
use crate::kubeapi::RequestRecord;
use crate::load::{SecondStats, quantile_us};
use crate::pods::PodCounts;
use crate::scenario::Scenario;
use crate::tap::ReportSeen;

/// One second of the run (by scheduled send time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondRow {
    /// Seconds since the run's start.
    pub t: u64,
    /// Requests scheduled in this second.
    pub offered_rps: f64,
    /// Answered 2xx.
    pub ok: u64,
    /// Failed (non-2xx, transport error, timeout, no ready pod).
    pub errors: u64,
    /// Answered slower than the objective.
    pub over_slo: u64,
    /// Median latency (ms), when anything was answered.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency (ms).
    pub p99_ms: Option<f64>,
    /// Ready pods, averaged over the second.
    pub ready: f64,
    /// `spec.replicas` at the end of the second.
    pub desired: u32,
    /// Ready pods times one pod's capacity, averaged over the second.
    pub ready_capacity_rps: f64,
}

/// One change of the pod counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the run's start (negative: before the load started).
    pub t: f64,
    /// `spec.replicas`.
    pub desired: u32,
    /// Pods not being removed.
    pub replicas: u32,
    /// Ready pods.
    pub ready: u32,
    /// Pods consuming resources (also starting and draining ones).
    pub running: u32,
    /// Ready pods times one pod's capacity.
    pub ready_capacity_rps: f64,
}

/// One write of the scale subresource as the embedded API received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleWrite {
    /// Seconds since the run's start (arrival of the request).
    pub t: f64,
    /// PATCH or PUT.
    pub method: String,
    /// The patch type.
    pub content_type: Option<String>,
    /// The `fieldManager` parameter.
    pub field_manager: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// `spec.replicas` in the body, when it names one.
    pub replicas: Option<i64>,
}

/// The numbers a reader wants first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// When the load step began (seconds since start), if the scenario has one.
    pub step_at_s: Option<f64>,
    /// Offered rate after the step.
    pub step_rps: Option<f64>,
    /// Ready pods the step needs (step rate / one pod's capacity, rounded up).
    pub pods_needed: Option<u32>,
    /// From the step to the first early (surge) report reaching the scaler, in milliseconds.
    pub first_surge_report_ms: Option<f64>,
    /// From the step to the first report of any kind reaching the scaler, in milliseconds.
    pub first_report_ms: Option<f64>,
    /// From the step to the first scale write accepted by the API, in milliseconds.
    pub first_scale_patch_ms: Option<f64>,
    /// From the step until enough pods were ready, in milliseconds.
    pub enough_capacity_ms: Option<f64>,
    /// Whole seconds played in which the offered load exceeded the ready capacity.
    pub overloaded_seconds: u32,
    /// Requests scheduled, the last partial second of an interrupted run included: the sum of
    /// those answered within the objective, `slow`, `failed` and `unfinished`.
    pub requests: u64,
    /// Requests answered 2xx slower than the objective.
    #[serde(default)]
    pub slow: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests still unanswered when an interrupted run stopped (0 when the run played out:
    /// it waits for every request to be answered or to time out).
    #[serde(default)]
    pub unfinished: u64,
    /// Share of the requests not answered 2xx within the objective (slow, failed or
    /// unfinished), within 0..=1.
    pub over_slo_share: f64,
    /// Latency objective in milliseconds.
    pub slo_ms: u64,
    /// Median latency over the run (ms).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency over the run (ms).
    pub p99_ms: Option<f64>,
    /// Pod-seconds consumed (starting, ready and draining pods) while the load ran.
    pub pod_seconds: f64,
    /// Highest `spec.replicas` while the load ran.
    pub max_desired: u32,
    /// Most ready pods while the load ran.
    pub max_ready: u32,
    /// Accepted scale writes while the load ran.
    pub scale_writes: usize,
    /// Accepted scale writes while the load ran that lowered the replicas.
    pub scale_downs: usize,
    /// With a `kill_scaler_owner` fault: the slowest takeover of the run, from the kill until
    /// another replica held the app's shard Lease, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover_ms: Option<f64>,
    /// The cold start, when the app was at zero when the load came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStart>,
    /// Every cold start of the run (the load came back after an idle phase with the app at
    /// zero), in order, without hold counts (`cold_start` has the run's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cold_starts: Vec<ColdStart>,
    /// With `nodes:`: the nodes Karpenter launched, when, and what the capacity waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeFigures>,
}

/// What became of a set of scheduled requests. Each request is in exactly one field and
/// [`Outcomes::requests`] is their sum, so every share of it lies within 0..=1 whatever the
/// records say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Answered 2xx within the objective.
    pub within_slo: u64,
    /// Answered 2xx slower than the objective.
    pub slow: u64,
    /// Failed: answered otherwise than 2xx, a transport error, a timeout or no ready pod.
    pub failed: u64,
    /// Scheduled and neither answered nor failed (in flight when an interrupted run stopped).
    pub unfinished: u64,
}

impl Outcomes {
    /// Classifies the requests scheduled in one second against an objective of `slo_us`.
    pub fn of(stats: &SecondStats, slo_us: u64) -> Self {
        let slow = stats.latencies_us.iter().filter(|l| **l > slo_us).count() as u64;
        let answered = stats.ok();
        Self {
            within_slo: answered - slow,
            slow,
            failed: stats.errors,
            // Saturating: should more outcomes than requests ever be recorded, the parts
            // (and so `requests`) count them rather than the share leaving 0..=1.
            unfinished: stats.sent.saturating_sub(answered + stats.errors),
        }
    }

    /// Every request: the sum of the parts.
    pub fn requests(&self) -> u64 {
        self.within_slo + self.slow + self.failed + self.unfinished
    }

    /// Requests answered 2xx.
    pub fn ok(&self) -> u64 {
        self.within_slo + self.slow
    }

    /// Share of the requests not answered 2xx within the objective: a request unanswered when
    /// the run stopped counts against it, as nothing showed it met the objective.
    pub fn over_slo_share(&self) -> f64 {
        let requests = self.requests();
        if requests == 0 {
            0.0
        } else {
            (requests - self.within_slo) as f64 / requests as f64
        }
    }
}

impl std::ops::Add for Outcomes {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            within_slo: self.within_slo + other.within_slo,
            slow: self.slow + other.slow,
            failed: self.failed + other.failed,
            unfinished: self.unfinished + other.unfinished,
        }
    }
}

impl std::iter::Sum for Outcomes {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, b| a + b)
    }
}

/// Everything a run produced (`result.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The scenario played.
    pub scenario: Scenario,
    /// Whether the run was cut short (Ctrl-C or a failure).
    pub interrupted: bool,
    /// What cut it short.
    pub failure: Option<String>,
    /// One ready pod's capacity in requests per second.
    pub capacity_per_pod_rps: f64,
    /// The summary.
    pub summary: Summary,
    /// Per-second series.
    pub seconds: Vec<SecondRow>,
    /// Pod count changes.
    pub timeline: Vec<TimelinePoint>,
    /// Scale writes, in arrival order.
    pub scale_writes: Vec<ScaleWrite>,
    /// Every request the embedded API received, counted by method, path and status (what the
    /// scaler asked of "Kubernetes", and whether it got it).
    pub api_calls: Vec<ApiCalls>,
    /// Whether `chart.png` was written (unset until the outputs are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub png_chart: Option<PngChart>,
    /// Network faults injected, as they happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultRecord>,
    /// Which Kubernetes the run had, in words (every figure above depends on it).
    #[serde(default)]
    pub kubernetes: String,
    /// Which autoscaler drove the app, in words (Surge, or the classic chain and its query).
    #[serde(default)]
    pub autoscaler: String,
}

/// A network fault the run injected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Which (`drop_reports`).
    pub fault: String,
    /// When it began, seconds since the run's start (as `timeline[].t`).
    pub from_s: f64,
    /// When it ended.
    pub until_s: f64,
    /// Packets the kernel dropped meanwhile, as its rule counted them.
    pub packets_dropped: u64,
    /// `kill_scaler_owner`: the replica (pod) killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<String>,
    /// `kill_scaler_owner`: from the kill until another replica held the app's shard Lease
    /// (`None`: none did within a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover_ms: Option<f64>,
}

/// What became of `chart.png`, which needs librsvg's `rsvg-convert` on the PATH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PngChart {
    /// Written to this file.
    Written(std::path::PathBuf),
    /// No `rsvg-convert` on the PATH.
    NoConverter,
    /// `rsvg-convert` ran and did not write the file; why.
    Failed(String),
}

impl PngChart {
    /// One sentence for people: where the PNG is, or why there is none.
    pub fn sentence(&self) -> String {
        match self {
            Self::Written(path) => format!("PNG chart: {}.", path.display()),
            Self::NoConverter => "No PNG chart: rsvg-convert is not on the PATH (Debian: \
                 apt-get install librsvg2-bin); chart.svg has the same chart."
                .into(),
            Self::Failed(why) => {
                format!("No PNG chart: rsvg-convert failed ({why}); chart.svg has the same chart.")
            }
        }
    }
}

/// Requests with the same method, path and answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiCalls {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// HTTP status answered.
    pub status: u16,
    /// How many.
    pub count: usize,
}

fn count_calls(requests: &[RequestRecord]) -> Vec<ApiCalls> {
    let mut counts: std::collections::BTreeMap<(String, String, u16), usize> = Default::default();
    for r in requests {
        *counts
            .entry((r.method.clone(), r.path.clone(), r.status))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((method, path, status), count)| ApiCalls {
            method,
            path,
            status,
            count,
        })
        .collect()
}

/// The inputs collected during a run.
pub struct Collected<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// When the load (warm-up included) started.
    pub start: Instant,
    /// How many seconds were played.
    pub played_seconds: f64,
    /// The load generator's per-second results.
    pub seconds: &'a [SecondStats],
    /// The pod controller's history.
    pub pods: &'a [PodCounts],
    /// The embedded API's request log.
    pub requests: &'a [RequestRecord],
    /// Reports seen between the proxies and the scaler.
    pub reports: &'a [ReportSeen],
    /// The hold counters of the gateway or caller's sidecar in front of the app, if any.
    pub hold: Option<HoldCounts>,
    /// Whether the run was cut short, and why.
    pub failure: Option<String>,
    /// Whether it was interrupted.
    pub interrupted: bool,
}

fn since(start: Instant, at: Instant) -> f64 {
    if at >= start {
        (at - start).as_secs_f64()
    } else {
        -(start - at).as_secs_f64()
    }
}

/// The value of a step function (`points` sorted by time) at `t`: the last point at or
/// before `t`, or 0 before the first.
fn value_at(points: &[(f64, f64)], t: f64) -> f64 {
    points
        .iter()
        .take_while(|(pt, _)| *pt <= t)
        .last()
        .map_or(0.0, |(_, v)| *v)
}

/// The integral of a step function over `[a, b]`.
pub fn integrate(points: &[(f64, f64)], a: f64, b: f64) -> f64 {
    if b <= a {
        return 0.0;
    }
    let mut total = 0.0;
    let mut t = a;
    let mut v = value_at(points, a);
    for (pt, pv) in points.iter().filter(|(pt, _)| *pt > a && *pt < b) {
        total += v * (pt - t);
        t = *pt;
        v = *pv;
    }
    total + v * (b - t)
}

/// How far the offered load must exceed the ready capacity for a second to count as
/// overloaded, in requests per second: a measured second's offered rate is a count of whole
/// requests, so a second at exactly the capacity can read a fraction above it.
pub const OVERLOAD_SLACK_RPS: f64 = 0.5;

/// Whether a second offered `offered_rps` against `capacity_rps` of ready pods is overloaded:
/// the one rule of the measured summary, the measured rows' series and the models.
pub fn overloaded(offered_rps: f64, capacity_rps: f64) -> bool {
    offered_rps > capacity_rps + OVERLOAD_SLACK_RPS
}

/// Builds the result from what a run collected.
pub fn build(c: &Collected<'_>) -> RunResult {
    let scenario = c.scenario;
    let capacity = scenario.pods.capacity_rps();
    let slo_us = scenario.slo_ms * 1000;
    let timeline: Vec<TimelinePoint> = c
        .pods
        .iter()
        .map(|p| TimelinePoint {
            t: since(c.start, p.at),
            desired: p.desired,
            replicas: p.replicas,
            ready: p.ready,
            running: p.running,
            ready_capacity_rps: f64::from(p.ready) * capacity,
        })
        .collect();
    let ready_fn: Vec<(f64, f64)> = timeline.iter().map(|p| (p.t, f64::from(p.ready))).collect();
    let running_fn: Vec<(f64, f64)> = timeline
        .iter()
        .map(|p| (p.t, f64::from(p.running)))
        .collect();
    let desired_fn: Vec<(f64, f64)> = timeline
        .iter()
        .map(|p| (p.t, f64::from(p.desired)))
        .collect();

    // Only what happened while the load played counts in the summary: afterwards the sandbox
    // still waits for the last requests (up to their timeout) while the scaler and pods go on.
    let end = c.played_seconds;
    let played = end.floor() as usize;
    let rows: Vec<SecondRow> = (0..played)
        .map(|s| {
            let stats = c.seconds.get(s).cloned().unwrap_or_default();
            let outcomes = Outcomes::of(&stats, slo_us);
            let ready = integrate(&ready_fn, s as f64, s as f64 + 1.0);
            SecondRow {
                t: s as u64,
                offered_rps: outcomes.requests() as f64,
                ok: outcomes.ok(),
                errors: outcomes.failed,
                over_slo: outcomes.slow,
                p50_ms: stats.quantile_ms(0.5),
                p99_ms: stats.quantile_ms(0.99),
                ready,
                desired: value_at(&desired_fn, s as f64 + 1.0) as u32,
                ready_capacity_rps: ready * capacity,
            }
        })
        .collect();

    let scale_writes: Vec<ScaleWrite> = c
        .requests
        .iter()
        .filter(|r| r.is_scale_write())
        .map(|r| ScaleWrite {
            t: since(c.start, r.received),
            method: r.method.clone(),
            content_type: r.content_type.clone(),
            field_manager: r.field_manager.clone(),
            status: r.status,
            replicas: replicas_in(r),
        })
        .collect();

    // A step the run did not reach (cut short before it) has no reaction to measure.
    let step_at = scenario.step_at().filter(|s| *s <= end);
    let step_rps = step_at.map(|s| scenario.rate_at(s + 0.5));
    let pods_needed = step_rps.map(|r| (r / capacity).ceil().max(1.0) as u32);
    let accepted: Vec<&ScaleWrite> = scale_writes
        .iter()
        .filter(|w| w.t <= end && (200..300).contains(&w.status))
        .collect();
    let played_timeline: Vec<&TimelinePoint> = timeline.iter().filter(|p| p.t <= end).collect();
    let first_scale_patch_ms = step_at.and_then(|s| {
        accepted
            .iter()
            .find(|w| w.t >= s)
            .map(|w| (w.t - s) * 1000.0)
    });
    let enough_capacity_ms = step_at.zip(pods_needed).and_then(|(s, needed)| {
        if value_at(&ready_fn, s) >= f64::from(needed) {
            return Some(0.0);
        }
        played_timeline
            .iter()
            .find(|p| p.t >= s && p.ready >= needed)
            .map(|p| (p.t - s) * 1000.0)
    });
    let report_after = |surge_only: bool| {
        step_at.and_then(|s| {
            c.reports
                .iter()
                .map(|r| (since(c.start, r.at), r.surge))
                .find(|(t, surge)| *t >= s && *t <= end && (*surge || !surge_only))
                .map(|(t, _)| (t - s) * 1000.0)
        })
    };
    let all: Vec<u64> = c
        .seconds
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    let outcomes: Outcomes = c.seconds.iter().map(|s| Outcomes::of(s, slo_us)).sum();
    // The Deployment starts at minReplicas (at least 1), so a first write below that is a
    // scale-down too.
    let mut previous = Some(i64::from(scenario.scaler.min_replicas.max(1)));
    let mut scale_downs = 0;
    for w in &accepted {
        if let (Some(p), Some(r)) = (previous, w.replicas)
            && r < p
        {
            scale_downs += 1;
        }
        previous = w.replicas.or(previous);
    }
    let firsts: Vec<_> = c
        .seconds
        .iter()
        .map(|s| s.first.zip(s.first_at_s).map(|((us, ok), at)| (at, us, ok)))
        .collect();
    let reports: Vec<_> = c
        .reports
        .iter()
        .map(|r| (since(c.start, r.at), r.held))
        .collect();
    let answers: Vec<_> = c
        .reports
        .iter()
        .map(|r| (since(c.start, r.answered), r.cold))
        .collect();
    let writes: Vec<_> = accepted.iter().map(|w| (w.t, w.replicas)).collect();
    let ready_timeline: Vec<_> = played_timeline
        .iter()
        .map(|p| (p.t, p.ready, p.desired))
        .collect();
    let cold_inputs = cold_start::Inputs {
        step_at,
        firsts: &firsts,
        reports: &reports,
        answers: &answers,
        writes: &writes,
        timeline: &ready_timeline,
        hold: c.hold,
    };
    let summary = Summary {
        step_at_s: step_at,
        step_rps,
        pods_needed,
        first_surge_report_ms: report_after(true),
        first_report_ms: report_after(false),
        first_scale_patch_ms,
        enough_capacity_ms,
        overloaded_seconds: rows
            .iter()
            .filter(|r| overloaded(r.offered_rps, r.ready_capacity_rps))
            .count() as u32,
        requests: outcomes.requests(),
        slow: outcomes.slow,
        failed: outcomes.failed,
        unfinished: outcomes.unfinished,
        over_slo_share: outcomes.over_slo_share(),
        slo_ms: scenario.slo_ms,
        p50_ms: quantile_us(&all, 0.5).map(|v| v as f64 / 1000.0),
        p99_ms: quantile_us(&all, 0.99).map(|v| v as f64 / 1000.0),
        pod_seconds: integrate(&running_fn, 0.0, end),
        max_desired: played_timeline.iter().map(|p| p.desired).max().unwrap_or(0),
        max_ready: played_timeline.iter().map(|p| p.ready).max().unwrap_or(0),
        scale_writes: accepted.len(),
        scale_downs,
        takeover_ms: None,
        cold_start: cold_start::cold_start(&cold_inputs),
        cold_starts: cold_start::cold_starts(&cold_inputs, &scenario.returns_from_idle()),
        nodes: None,
    };
    RunResult {
        scenario: scenario.clone(),
        interrupted: c.interrupted,
        failure: c.failure.clone(),
        capacity_per_pod_rps: capacity,
        summary,
        seconds: rows,
        timeline,
        scale_writes,
        api_calls: count_calls(c.requests),
        png_chart: None,
        faults: Vec::new(),
        kubernetes: String::new(),
        autoscaler: String::new(),
    }
}

/// `spec.replicas` in a scale write's body (merge or apply patch, PUT, or a JSON patch's
/// `value`).
fn replicas_in(r: &RequestRecord) -> Option<i64> {
    let body = r.body.as_deref()?;
    let value: Value = serde_json::from_str(body)
        .ok()
        .or_else(|| serde_yaml::from_str(body).ok())?;
    value
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .or_else(|| {
            value.as_array()?.iter().find_map(|op| {
                (op.get("path")?.as_str()? == "/spec/replicas")
                    .then(|| op.get("value")?.as_i64())
                    .flatten()
            })
        })
}

#[cfg(test)]
mod tests;

//! A run's results: the per-second series, the pod timeline, the scale writes seen by the
//! embedded API, and the summary computed from them (pure functions, tested below). Written as
//! JSON for tools and tests, and printed for people.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// Seconds in which the offered load exceeded the ready capacity.
    pub overloaded_seconds: u32,
    /// Requests scheduled.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Share of requests that failed or were slower than the objective.
    pub over_slo_share: f64,
    /// Latency objective in milliseconds.
    pub slo_ms: u64,
    /// Median latency over the run (ms).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency over the run (ms).
    pub p99_ms: Option<f64>,
    /// Pod-seconds consumed (starting, ready and draining pods) while the load ran.
    pub pod_seconds: f64,
    /// Highest `spec.replicas`.
    pub max_desired: u32,
    /// Most ready pods.
    pub max_ready: u32,
    /// Accepted scale writes.
    pub scale_writes: usize,
    /// Accepted scale writes that lowered the replicas.
    pub scale_downs: usize,
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

    let played = c.played_seconds.floor() as usize;
    let rows: Vec<SecondRow> = (0..played.min(c.seconds.len().max(played)))
        .map(|s| {
            let stats = c.seconds.get(s).cloned().unwrap_or_default();
            let ready = integrate(&ready_fn, s as f64, s as f64 + 1.0);
            SecondRow {
                t: s as u64,
                offered_rps: stats.sent as f64,
                ok: stats.ok,
                errors: stats.errors,
                over_slo: stats.latencies_us.iter().filter(|l| **l > slo_us).count() as u64,
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

    let step_at = scenario.step_at();
    let step_rps = step_at.map(|s| scenario.rate_at(s + 0.5));
    let pods_needed = step_rps.map(|r| (r / capacity).ceil().max(1.0) as u32);
    let first_scale_patch_ms = step_at.and_then(|s| {
        scale_writes
            .iter()
            .find(|w| w.t >= s && (200..300).contains(&w.status))
            .map(|w| (w.t - s) * 1000.0)
    });
    let enough_capacity_ms = step_at.zip(pods_needed).and_then(|(s, needed)| {
        if value_at(&ready_fn, s) >= f64::from(needed) {
            return Some(0.0);
        }
        timeline
            .iter()
            .find(|p| p.t >= s && p.ready >= needed)
            .map(|p| (p.t - s) * 1000.0)
    });
    let report_after = |surge_only: bool| {
        step_at.and_then(|s| {
            c.reports
                .iter()
                .map(|r| (since(c.start, r.at), r.surge))
                .find(|(t, surge)| *t >= s && (*surge || !surge_only))
                .map(|(t, _)| (t - s) * 1000.0)
        })
    };
    let all: Vec<u64> = c
        .seconds
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    let requests: u64 = c.seconds.iter().map(|s| s.sent).sum();
    let failed: u64 = c.seconds.iter().map(|s| s.errors).sum();
    let slow = all.iter().filter(|l| **l > slo_us).count() as u64;
    let mut previous: Option<i64> = None;
    let mut scale_downs = 0;
    for w in scale_writes
        .iter()
        .filter(|w| (200..300).contains(&w.status))
    {
        if let (Some(p), Some(r)) = (previous, w.replicas)
            && r < p
        {
            scale_downs += 1;
        }
        previous = w.replicas.or(previous);
    }
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
            .filter(|r| r.offered_rps > r.ready_capacity_rps + 0.5)
            .count() as u32,
        requests,
        failed,
        over_slo_share: if requests == 0 {
            0.0
        } else {
            (slow + failed) as f64 / requests as f64
        },
        slo_ms: scenario.slo_ms,
        p50_ms: quantile_us(&all, 0.5).map(|v| v as f64 / 1000.0),
        p99_ms: quantile_us(&all, 0.99).map(|v| v as f64 / 1000.0),
        pod_seconds: integrate(&running_fn, 0.0, c.played_seconds),
        max_desired: timeline.iter().map(|p| p.desired).max().unwrap_or(0),
        max_ready: timeline.iter().map(|p| p.ready).max().unwrap_or(0),
        scale_writes: scale_writes
            .iter()
            .filter(|w| (200..300).contains(&w.status))
            .count(),
        scale_downs,
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

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

/// The summary as printed at the end of a run.
pub fn summary_text(result: &RunResult) -> String {
    let s = &result.summary;
    let mut out = String::new();
    out.push_str(&format!("== {} ==\n", result.scenario.name));
    if let Some(failure) = &result.failure {
        out.push_str(&format!("run cut short: {failure}\n"));
    }
    if let (Some(at), Some(rps)) = (s.step_at_s, s.step_rps) {
        out.push_str(&format!(
            "load step at {at:.2} s to {rps:.0} rps (needs {} ready pods of {:.0} rps each)\n",
            s.pods_needed.unwrap_or(0),
            result.capacity_per_pod_rps
        ));
    }
    out.push_str(&format!(
        "step -> first report / surge report at the scaler: {} / {}\n",
        ms(s.first_report_ms),
        ms(s.first_surge_report_ms)
    ));
    out.push_str(&format!(
        "step -> first scale PATCH:      {}\n",
        ms(s.first_scale_patch_ms)
    ));
    out.push_str(&format!(
        "step -> enough ready capacity:  {}\n",
        ms(s.enough_capacity_ms)
    ));
    out.push_str(&format!(
        "seconds overloaded:             {}\n",
        s.overloaded_seconds
    ));
    out.push_str(&format!(
        "requests over {} ms or failed:  {:.2} % ({} requests, {} failed)\n",
        s.slo_ms,
        s.over_slo_share * 100.0,
        s.requests,
        s.failed
    ));
    out.push_str(&format!(
        "latency p50 / p99:              {} / {}\n",
        ms(s.p50_ms),
        ms(s.p99_ms)
    ));
    out.push_str(&format!(
        "pod-seconds:                    {:.1}\n",
        s.pod_seconds
    ));
    out.push_str(&format!(
        "replicas: max desired {}, max ready {}; scale writes {} ({} down)\n",
        s.max_desired, s.max_ready, s.scale_writes, s.scale_downs
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrate_a_step_function() {
        let f = [(0.0, 1.0), (2.0, 3.0), (5.0, 0.0)];
        assert!((integrate(&f, 0.0, 6.0) - (2.0 + 9.0)).abs() < 1e-9);
        assert!((integrate(&f, 1.0, 3.0) - (1.0 + 3.0)).abs() < 1e-9);
        assert!((integrate(&f, -1.0, 1.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn replicas_are_read_from_every_patch_type() {
        let rec = |ct: &str, body: &str| RequestRecord {
            received: Instant::now(),
            unix_ms: 0,
            method: "PATCH".into(),
            path: "/apis/apps/v1/namespaces/default/deployments/app/scale".into(),
            query: String::new(),
            content_type: Some(ct.into()),
            field_manager: None,
            status: 200,
            body: Some(body.into()),
        };
        assert_eq!(
            replicas_in(&rec(
                "application/merge-patch+json",
                r#"{"spec":{"replicas":4}}"#
            )),
            Some(4)
        );
        assert_eq!(
            replicas_in(&rec(
                "application/apply-patch+yaml",
                "apiVersion: autoscaling/v1\nkind: Scale\nspec:\n  replicas: 6\n"
            )),
            Some(6)
        );
        assert_eq!(
            replicas_in(&rec(
                "application/json-patch+json",
                r#"[{"op":"replace","path":"/spec/replicas","value":5}]"#
            )),
            Some(5)
        );
    }
}

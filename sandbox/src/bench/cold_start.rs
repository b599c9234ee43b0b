//! `surge-sandbox bench-cold-start`: how much of a cold start is Surge's, over many cold
//! starts on the real control plane.
//!
//! One sandbox run plays `runs` cycles: the app serves a little, idles until Surge takes it to
//! zero, then a burst arrives through the ingress gateway, whose filter holds the first
//! requests. For each cycle the first request's latency is split at the scale write from zero
//! and the app's first ready endpoint:
//!
//! ```text
//!  first request --(Surge: hold, activation report, scale write)--> write from zero
//!     --(Kubernetes and the pod: controllers, scheduler, kubelet, start-up, readiness,
//!        EndpointSlice)--> first ready endpoint
//!     --(Surge: warm delay, answer to the proxies, resume)--> its response
//! ```
//!
//! Surge's part (the overhead) is the latency minus the middle span, which any autoscaler
//! waits for. The warm delay (`scaler.warmDelayMs`, default 500 ms) is in Surge's part: it
//! covers the time a mesh's proxies take to learn a new endpoint from istiod, which this
//! sandbox's proxies do not need (they reach the Service address, as kube-proxy routes it).

use std::path::Path;

use serde::Serialize;

use crate::load::quantile_us;
use crate::report::ColdStart;
use crate::run::{KubeMode, RunError, RunOptions, run};
use crate::scenario::Scenario;

/// One cold start, split (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Split {
    /// First request sent -> its response.
    pub latency_ms: f64,
    /// First request -> the scale write from zero.
    pub to_write_ms: f64,
    /// Scale write -> first ready endpoint (Kubernetes and the pod).
    pub kubernetes_ms: f64,
    /// First ready endpoint -> the response (warm delay, answer, resume).
    pub to_answer_ms: f64,
    /// Surge's part: `to_write_ms + to_answer_ms`.
    pub overhead_ms: f64,
    /// The median latency of the burst's last second, the app warm: the part of `to_answer_ms`
    /// that is the app's own work on the request, not the cold start's.
    pub warm_ms: Option<f64>,
    /// `overhead_ms - warm_ms`: what the cold start added beyond an answer from a warm app.
    pub overhead_net_ms: Option<f64>,
    /// First ready endpoint -> the first answer saying warm left the scaler (the scaler's
    /// EndpointSlice watch, its warm delay and its parked answer).
    pub to_warm_answer_ms: Option<f64>,
    /// That answer -> the response (the proxy's resume, the way to the new pod, the app).
    pub warm_answer_to_response_ms: Option<f64>,
}

impl Split {
    /// The split of a cold start whose first request was answered 2xx after the write and the
    /// ready endpoint were seen; `None` otherwise.
    pub fn of(cold: &ColdStart, warm_ms: Option<f64>) -> Option<Self> {
        if !cold.first_request_ok {
            return None;
        }
        let latency_ms = cold.cold_start_ms?;
        let to_write_ms = cold.scale_from_zero_ms?;
        let ready = cold.pod_ready_ms?;
        let kubernetes_ms = ready - to_write_ms;
        let to_answer_ms = latency_ms - ready;
        Some(Self {
            latency_ms,
            to_write_ms,
            kubernetes_ms,
            to_answer_ms,
            overhead_ms: to_write_ms + to_answer_ms,
            warm_ms,
            overhead_net_ms: warm_ms.map(|w| to_write_ms + to_answer_ms - w),
            to_warm_answer_ms: cold.warm_answer_ms.map(|w| w - ready),
            warm_answer_to_response_ms: cold.warm_answer_ms.map(|w| latency_ms - w),
        })
    }
}

/// The benchmark's result (`bench-cold-start.json`).
#[derive(Debug, Clone, Serialize)]
pub struct ColdStartBench {
    /// Extra chart values the run had (`scaler.warmDelayMs=0`, ...).
    pub helm_set: Vec<String>,
    /// The cycles whose cold start was measured.
    pub runs: Vec<Split>,
    /// Cycles whose app was not at zero when the load came back (no cold start to measure; the
    /// scenario leaves time enough, so this says the scaler kept it warm longer than expected).
    pub not_cold: usize,
    /// Cold starts not measured in full (the first request not answered 2xx, or no write or
    /// ready endpoint seen): counted as slower than any measured one.
    pub missed: usize,
    /// Median and 99th percentile (nearest rank, misses counted slowest) of the overhead.
    pub overhead_p50_ms: Option<f64>,
    /// See `overhead_p50_ms`.
    pub overhead_p99_ms: Option<f64>,
    /// Median latency of the first request.
    pub latency_p50_ms: Option<f64>,
    /// Median of the Kubernetes-and-pod span.
    pub kubernetes_p50_ms: Option<f64>,
    /// Median of first request -> scale write.
    pub to_write_p50_ms: Option<f64>,
    /// Median of first ready endpoint -> response.
    pub to_answer_p50_ms: Option<f64>,
    /// Median and 99th percentile of `overhead_net_ms` (misses counted slowest).
    pub overhead_net_p50_ms: Option<f64>,
    /// See `overhead_net_p50_ms`.
    pub overhead_net_p99_ms: Option<f64>,
}

/// Length of each burst.
const BURST_SECONDS: f64 = 4.0;

/// Length of each idle phase.
const IDLE_SECONDS: f64 = 46.0;

/// The scenario the benchmark plays: `runs` idle-then-burst cycles through the gateway.
pub fn scenario(runs: u32) -> Result<Scenario, RunError> {
    let mut text = String::from(
        "name: bench-cold-start
warmup_s: 2
cooldown_s: 2
pods: {startup_delay_ms: 1000}
scaler:
  min_replicas: 0
  max_replicas: 4
  target: 70
  idle_s: 10
  stable_window_s: 6
  scale_down_stabilization_s: 0
traffic:
  via: gateway
  hold: {max_requests: 100, timeout_ms: 10000, retry_after_s: 1}
load:
  - steady: {rps: 10, seconds: 3}
",
    );
    // Long enough for the app to be gone when the burst comes: 10 s of reported idleness, but
    // the pods the wake-up's overshoot added report until they are gone and then count as
    // missing sources until they expire (10 s), so zero is written 7-37 s after a burst
    // (measured), and the last pod drains for 5 s more.
    for _ in 0..runs {
        text.push_str(&format!(
            "  - steady: {{rps: 0, seconds: {IDLE_SECONDS}}}\n  - steady: {{rps: 20, seconds: {BURST_SECONDS}}}\n"
        ));
    }
    Scenario::parse(&text).map_err(|e| RunError::Setup(format!("bench scenario: {e}")))
}

/// Plays [`scenario`] on the real control plane with `helm_set`, writing the run's files and
/// `bench-cold-start.json` into `out_dir`.
pub async fn bench_cold_start(
    runs: u32,
    helm_set: Vec<String>,
    out_dir: &Path,
    cancel: impl Future<Output = ()>,
) -> Result<ColdStartBench, RunError> {
    let scenario = scenario(runs)?;
    let options = RunOptions {
        out_dir: out_dir.to_path_buf(),
        live: false,
        kube: KubeMode::Real,
        helm_set: helm_set.clone(),
        autoscaler: crate::classic::Autoscaler::Surge,
    };
    let result = run(&scenario, &options, cancel).await?;
    if let Some(failure) = &result.failure {
        return Err(RunError::Setup(format!("the run failed: {failure}")));
    }
    // The burst's last second: the app has been warm for seconds.
    let warm_at = |zero_at_s: f64| {
        let back = scenario
            .returns_from_idle()
            .into_iter()
            .find(|&r| r > zero_at_s)?;
        let last = (back + BURST_SECONDS - 1.0) as u64;
        result.seconds.iter().find(|r| r.t == last)?.p50_ms
    };
    let measured: Vec<Split> = result
        .summary
        .cold_starts
        .iter()
        .filter_map(|cold| Split::of(cold, warm_at(cold.zero_at_s)))
        .collect();
    let cold = result.summary.cold_starts.len();
    let mut bench = summarize(helm_set, measured, cold);
    bench.not_cold = (runs as usize).saturating_sub(cold);
    let json = serde_json::to_string_pretty(&bench)
        .map_err(|e| RunError::Setup(format!("encode the result: {e}")))?;
    std::fs::write(out_dir.join("bench-cold-start.json"), json).map_err(|source| RunError::Io {
        context: "write bench-cold-start.json".into(),
        source,
    })?;
    Ok(bench)
}

/// Quantiles over the measured cycles, the `expected - measured` missing ones counted slowest.
fn summarize(helm_set: Vec<String>, runs: Vec<Split>, expected: usize) -> ColdStartBench {
    let missed = expected.saturating_sub(runs.len());
    let us = |f: fn(&Split) -> f64, pad: bool| {
        let mut v: Vec<u64> = runs
            .iter()
            .map(|s| (f(s) * 1000.0).round() as u64)
            .collect();
        if pad {
            v.extend(std::iter::repeat_n(u64::MAX, missed));
        }
        v
    };
    let q = |v: &[u64], q: f64| {
        quantile_us(v, q)
            .filter(|&x| x != u64::MAX)
            .map(|x| x as f64 / 1000.0)
    };
    let overhead = us(|s| s.overhead_ms, true);
    let net: Vec<u64> = runs
        .iter()
        .map(|s| {
            s.overhead_net_ms
                .map_or(u64::MAX, |v| (v.max(0.0) * 1000.0).round() as u64)
        })
        .chain(std::iter::repeat_n(u64::MAX, missed))
        .collect();
    ColdStartBench {
        helm_set,
        not_cold: 0,
        missed,
        overhead_p50_ms: q(&overhead, 0.5),
        overhead_p99_ms: q(&overhead, 0.99),
        latency_p50_ms: q(&us(|s| s.latency_ms, true), 0.5),
        kubernetes_p50_ms: q(&us(|s| s.kubernetes_ms, false), 0.5),
        to_write_p50_ms: q(&us(|s| s.to_write_ms, false), 0.5),
        to_answer_p50_ms: q(&us(|s| s.to_answer_ms, false), 0.5),
        overhead_net_p50_ms: q(&net, 0.5),
        overhead_net_p99_ms: q(&net, 0.99),
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::HoldCounts;

    fn cold(latency: f64, write: f64, ready: f64, ok: bool) -> ColdStart {
        ColdStart {
            zero_at_s: 1.0,
            cold_start_ms: Some(latency),
            first_request_ok: ok,
            activation_report_ms: Some(write / 2.0),
            scale_from_zero_ms: Some(write),
            pod_ready_ms: Some(ready),
            warm_answer_ms: None,
            hold: HoldCounts::default(),
        }
    }

    #[test]
    fn the_overhead_is_the_latency_less_what_kubernetes_and_the_pod_took() {
        let split = Split::of(&cold(1600.0, 12.0, 1540.0, true), Some(40.0)).unwrap();
        assert_eq!(split.kubernetes_ms, 1528.0);
        assert_eq!(split.to_answer_ms, 60.0);
        assert_eq!(split.overhead_ms, 72.0);
        assert_eq!(split.overhead_net_ms, Some(32.0));
        assert_eq!(Split::of(&cold(1600.0, 12.0, 1540.0, false), None), None);
    }

    #[test]
    fn a_missed_cycle_counts_as_slower_than_any_measured() {
        let runs: Vec<Split> = [50.0, 60.0, 70.0]
            .iter()
            .map(|&o| {
                Split::of(
                    &cold(1000.0 + o, o / 2.0, 1000.0 + o / 2.0, true),
                    Some(10.0),
                )
                .unwrap()
            })
            .collect();
        let bench = summarize(Vec::new(), runs.clone(), 3);
        assert_eq!(
            (bench.overhead_p50_ms, bench.overhead_p99_ms),
            (Some(60.0), Some(70.0))
        );
        assert_eq!(bench.overhead_net_p50_ms, Some(50.0));
        let bench = summarize(Vec::new(), runs, 4);
        assert_eq!(bench.missed, 1);
        // The slowest is the missed one: no figure rather than a flattering one.
        assert_eq!(bench.overhead_p99_ms, None);
    }

    #[test]
    fn the_scenario_has_one_return_from_idle_per_run() {
        assert_eq!(scenario(3).unwrap().returns_from_idle().len(), 3);
    }
}

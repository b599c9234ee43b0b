//! `surge-sandbox bench-reaction`: the time from a load step to the first scale PATCH arriving
//! at the embedded API, over many runs, with the real Envoys, filter and scaler.
//!
//! Each run starts a fresh scaler (so no state carries over), plays a steady base load so the
//! scaler has reports to compare against, then steps the load 10x and waits for the PATCH.
//! Between runs the scaler is killed and the Deployment is set back to one replica.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::kubeapi::{Part, resources};
use crate::load::{self, Recorder, quantile_us};
use crate::pods::Pods;
use crate::run::{NAMESPACE, RunError, Sandbox, WORKLOAD};
use crate::scenario::Scenario;

/// Settings of the benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Number of steps measured.
    pub runs: u32,
    /// Base load before the step.
    pub base_rps: f64,
    /// Load after the step.
    pub step_rps: f64,
    /// Seconds of base load before each step.
    pub base_seconds: f64,
    /// Seconds of stepped load.
    pub step_seconds: f64,
}

/// The benchmark's result (`bench-reaction.json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Reaction of each run in milliseconds (`None`: no PATCH within the step).
    pub runs_ms: Vec<Option<f64>>,
    /// Per run, from the step to the first surge report reaching the scaler (ms).
    pub surge_report_ms: Vec<Option<f64>>,
    /// Median of `surge_report_ms`.
    pub surge_report_p50_ms: Option<f64>,
    /// Median of the measured runs.
    pub p50_ms: Option<f64>,
    /// 99th percentile (nearest rank; with 20 runs, the slowest).
    pub p99_ms: Option<f64>,
    /// Fastest.
    pub min_ms: Option<f64>,
    /// Slowest.
    pub max_ms: Option<f64>,
    /// Runs without a PATCH during the step.
    pub missed: usize,
    /// Base and step rates.
    pub base_rps: f64,
    /// Rate after the step.
    pub step_rps: f64,
}

/// Runs the benchmark with `scenario`'s pods and SurgeScaler.
pub async fn bench_reaction(
    scenario: &Scenario,
    options: &BenchOptions,
    out_dir: &Path,
) -> Result<BenchResult, RunError> {
    let mut sandbox = Sandbox::start(scenario, out_dir, false).await?;
    let mut runs_ms = Vec::new();
    let mut surge_report_ms = Vec::new();
    for run in 0..options.runs {
        // Back to one replica, scaler fresh.
        sandbox
            .api
            .store()
            .modify(
                resources::DEPLOYMENTS,
                NAMESPACE,
                WORKLOAD,
                Part::Scale,
                false,
                |_| Ok(json!({"spec": {"replicas": scenario.scaler.min_replicas}})),
            )
            .map_err(|e| RunError::Setup(format!("reset replicas: {}", e.message)))?;
        wait_settled(
            &sandbox,
            scenario.scaler.min_replicas,
            Duration::from_secs(30),
        )
        .await?;
        sandbox.start_scaler().await?;

        let endpoints = sandbox
            .pods
            .as_ref()
            .map(Pods::endpoints)
            .unwrap_or_default();
        let start = Instant::now() + Duration::from_millis(50);
        let step_at = start + Duration::from_secs_f64(options.base_seconds);
        let (base, step, base_s) = (options.base_rps, options.step_rps, options.base_seconds);
        let load_task = tokio::spawn(load::play(
            tokio::time::Instant::from_std(start),
            Duration::from_secs_f64(options.base_seconds + options.step_seconds),
            move |t| if t < base_s { base } else { step },
            endpoints,
            Recorder::default(),
        ));
        let wait = step_at.saturating_duration_since(Instant::now())
            + Duration::from_secs_f64(options.step_seconds);
        let patch = sandbox
            .api
            .wait_for_request(wait, |r| {
                r.is_scale_write() && r.received >= step_at && (200..300).contains(&r.status)
            })
            .await;
        let reaction = patch.map(|r| (r.received - step_at).as_secs_f64() * 1000.0);
        let surge_report = sandbox
            .reports()
            .iter()
            .find(|r| r.surge && r.at >= step_at)
            .map(|r| (r.at - step_at).as_secs_f64() * 1000.0);
        let show = |v: Option<f64>| v.map_or("none".to_string(), |ms| format!("{ms:.0} ms"));
        println!(
            "run {:>2}: first scale PATCH {} (first surge report at the scaler {})",
            run + 1,
            show(reaction),
            show(surge_report)
        );
        surge_report_ms.push(surge_report);
        runs_ms.push(reaction);
        sandbox.kill_scaler();
        let _ = load_task.await;
    }
    sandbox.shutdown().await;
    let measured: Vec<u64> = runs_ms
        .iter()
        .flatten()
        .map(|ms| (ms * 1000.0) as u64)
        .collect();
    let q = |p: f64| quantile_us(&measured, p).map(|us| us as f64 / 1000.0);
    let reports: Vec<u64> = surge_report_ms
        .iter()
        .flatten()
        .map(|ms| (ms * 1000.0) as u64)
        .collect();
    let result = BenchResult {
        surge_report_p50_ms: quantile_us(&reports, 0.5).map(|us| us as f64 / 1000.0),
        surge_report_ms,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        min_ms: q(0.0),
        max_ms: q(1.0),
        missed: runs_ms.iter().filter(|r| r.is_none()).count(),
        runs_ms,
        base_rps: options.base_rps,
        step_rps: options.step_rps,
    };
    let json = serde_json::to_string_pretty(&result)
        .map_err(|e| RunError::Setup(format!("encode the result: {e}")))?;
    std::fs::write(out_dir.join("bench-reaction.json"), json).map_err(|source| RunError::Io {
        context: "write bench-reaction.json".into(),
        source,
    })?;
    Ok(result)
}

/// Waits until the pods match `replicas` (desired, ready, nothing draining).
async fn wait_settled(sandbox: &Sandbox, replicas: u32, timeout: Duration) -> Result<(), RunError> {
    let deadline = Instant::now() + timeout;
    let pods = sandbox.pods.as_ref();
    loop {
        if let Some(c) = pods.and_then(Pods::current)
            && c.desired == replicas
            && c.ready == replicas
            && c.running == replicas
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RunError::Setup(format!(
                "pods did not settle at {replicas} replicas within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! `surge-sandbox bench-reaction`: the time from a load step to the first scale PATCH arriving
//! at the embedded API, over many runs, with the real Envoys, filter and scaler.
//!
//! Default (running scaler): one scaler runs throughout; its SurgeScaler uses a 6 s stable
//! window and no scale-down stabilization so that, between steps, a base load brings the
//! Deployment back to `minReplicas`; each run then steps the load 10x on a system in steady
//! state, as a burst meets a production system. With `fresh_scaler`, each run instead starts a
//! new scaler process (its first seconds: fail-static, holding the scale) after the Deployment
//! is reset to `minReplicas`.

pub mod cold_start;
pub mod nodes;

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::{self, Recorder, quantile_us};
use crate::run::RunError;
use crate::sandbox::{KubeMode, Sandbox, StartOptions};
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
    /// Least seconds of base load before each step.
    pub base_seconds: f64,
    /// Seconds of stepped load.
    pub step_seconds: f64,
    /// Start a new scaler for every run instead of keeping one running.
    pub fresh_scaler: bool,
}

/// The benchmark's result (`bench-reaction.json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// `running scaler` or `fresh scaler per run`.
    pub mode: String,
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
    /// Runs without a PATCH during the step (counted as slower than any measured run).
    pub missed: usize,
    /// Base and step rates.
    pub base_rps: f64,
    /// Rate after the step.
    pub step_rps: f64,
}

/// Runs the benchmark with `scenario`'s pods and SurgeScaler bounds, on `kube`.
pub async fn bench_reaction(
    scenario: &Scenario,
    options: &BenchOptions,
    out_dir: &Path,
    kube: KubeMode,
) -> Result<BenchResult, RunError> {
    let mut scenario = scenario.clone();
    if !options.fresh_scaler {
        scenario.scaler.stable_window_s = Some(6);
        scenario.scaler.scale_down_stabilization_s = Some(0);
    }
    let min = scenario.scaler.min_replicas;
    let start = StartOptions {
        start_scaler: !options.fresh_scaler,
        kube,
        ..StartOptions::embedded(out_dir)
    };
    let mut sandbox = Sandbox::start(&scenario, &start).await?;
    let endpoints = sandbox.endpoints();
    let base = options.base_rps;
    let mut runs_ms = Vec::new();
    let mut surge_report_ms = Vec::new();
    for run in 0..options.runs {
        if options.fresh_scaler {
            sandbox.kill_scaler();
            sandbox.set_replicas(min).await?;
            wait_settled(&sandbox, min, Duration::from_secs(30)).await?;
            sandbox.start_scaler().await?;
            play_base(&endpoints, base, options.base_seconds).await;
        } else {
            // Base load until the scaler has brought the Deployment back to min.
            let deadline = Instant::now() + Duration::from_secs(90);
            play_base(&endpoints, base, options.base_seconds).await;
            while !settled(&sandbox, min) {
                if Instant::now() >= deadline {
                    return Err(RunError::Setup(format!(
                        "the scaler did not return to {min} replicas within 90 s of base load"
                    )));
                }
                play_base(&endpoints, base, 1.0).await;
            }
            // A little more base load so the latest reports show it.
            play_base(&endpoints, base, 2.0).await;
        }

        let start = Instant::now() + Duration::from_millis(20);
        let step_at = start;
        let step = options.step_rps;
        let load_task = tokio::spawn(load::play(
            tokio::time::Instant::from_std(start),
            Duration::from_secs_f64(options.step_seconds),
            move |_| step,
            endpoints.clone(),
            Recorder::default(),
        ));
        let patch = sandbox
            .wait_for_request(
                Duration::from_secs_f64(options.step_seconds) + Duration::from_millis(20),
                |r| r.is_scale_write() && r.received >= step_at && (200..300).contains(&r.status),
            )
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
        runs_ms.push(reaction);
        surge_report_ms.push(surge_report);
        let _ = load_task.await;
    }
    sandbox.shutdown().await;
    let to_us = |v: &[Option<f64>]| -> Vec<u64> {
        v.iter().flatten().map(|ms| (ms * 1000.0) as u64).collect()
    };
    let missed = runs_ms.iter().filter(|r| r.is_none()).count();
    let mut measured = to_us(&runs_ms);
    // A missed run is slower than the step: it counts at the top of the distribution.
    measured.extend(std::iter::repeat_n(u64::MAX, missed));
    let q = |p: f64| {
        quantile_us(&measured, p).and_then(|us| (us != u64::MAX).then(|| us as f64 / 1000.0))
    };
    let result = BenchResult {
        mode: if options.fresh_scaler {
            "fresh scaler per run"
        } else {
            "running scaler"
        }
        .into(),
        surge_report_p50_ms: quantile_us(&to_us(&surge_report_ms), 0.5)
            .map(|us| us as f64 / 1000.0),
        surge_report_ms,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        min_ms: q(0.0),
        max_ms: q(1.0),
        missed,
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

async fn play_base(endpoints: &crate::pods::Endpoints, rps: f64, seconds: f64) {
    load::play(
        tokio::time::Instant::now(),
        Duration::from_secs_f64(seconds),
        move |_| rps,
        endpoints.clone(),
        Recorder::default(),
    )
    .await;
}

fn settled(sandbox: &Sandbox, replicas: u32) -> bool {
    sandbox
        .current()
        .is_some_and(|c| c.desired == replicas && c.ready == replicas && c.running == replicas)
}

/// Waits until the pods match `replicas` (desired, ready, nothing draining).
async fn wait_settled(sandbox: &Sandbox, replicas: u32, timeout: Duration) -> Result<(), RunError> {
    let deadline = Instant::now() + timeout;
    while !settled(sandbox, replicas) {
        if Instant::now() >= deadline {
            return Err(RunError::Setup(format!(
                "pods did not settle at {replicas} replicas within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Start-up of the real control plane, stage by stage, over several starts
/// (`bench-startup.json`).
#[derive(Debug, Clone, Serialize)]
pub struct StartupResult {
    /// Each start's times, in seconds: pki, etcd, kube-apiserver, controllers, total.
    pub runs: Vec<[f64; 5]>,
    /// The median of each stage.
    pub median: [f64; 5],
}

/// Starts and stops the control plane `runs` times under `out_dir/startup`.
pub async fn bench_startup(runs: u32, out_dir: &Path) -> Result<StartupResult, RunError> {
    let mut all = Vec::new();
    for run in 0..runs {
        let dir = out_dir.join("startup");
        let _ = std::fs::remove_dir_all(&dir);
        let plane = surge_cluster::ControlPlane::start(surge_cluster::Options::new(&dir))
            .await
            .map_err(|e| RunError::Setup(format!("start the control plane: {e}")))?;
        let t = plane.start_times();
        let stages = [t.pki, t.etcd, t.apiserver, t.controllers, t.total].map(|d| d.as_secs_f64());
        println!(
            "start {:>2}: {:.2} s (certificates {:.3} s, etcd {:.2} s, kube-apiserver {:.2} s, controllers {:.2} s)",
            run + 1,
            stages[4],
            stages[0],
            stages[1],
            stages[2],
            stages[3]
        );
        all.push(stages);
        drop(plane);
    }
    let median = std::array::from_fn(|i| {
        let mut column: Vec<f64> = all.iter().map(|r| r[i]).collect();
        column.sort_by(f64::total_cmp);
        column.get(column.len() / 2).copied().unwrap_or(0.0)
    });
    let result = StartupResult { runs: all, median };
    let json = serde_json::to_string_pretty(&result)
        .map_err(|e| RunError::Setup(format!("encode the result: {e}")))?;
    std::fs::write(out_dir.join("bench-startup.json"), json).map_err(|source| RunError::Io {
        context: "write bench-startup.json".into(),
        source,
    })?;
    Ok(result)
}

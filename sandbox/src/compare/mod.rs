//! Side by side: Surge against the classic Prometheus + KEDA + HPA chain and Knative's KPA, on the
//! same per-second load, the same pod start-up time and the same capacity per pod
//! (`surge-sandbox compare`; results in `docs/benchmarks/compare.md`).
//!
//! The models are a pure, deterministic discrete-time simulation (no clock, no I/O); for the
//! scenario files given on the command line (or the built-in set with `--live`) the real
//! sandbox plays the same scenarios next to them:
//!
//! ```text
//!  scenario file (sandbox format) --> Trace (per-second offered load, pods, bounds, target)
//!        |
//!        v
//!  sim::simulate ── every 100 ms ──> pods (start-up delay, capacity) ──> fluid queue ──> series
//!        ^                                   |
//!        |  desired replicas                 | Observation (counters, ready pods, ...)
//!        +──────────── models::* <───────────+
//!                                                  report (table, JSON) + chart (SVG)
//!  run::run (live sandbox) --> live::system_result --> live::cross_check against the replay
//! ```
//!
//! - [`sim`]: the simulation loop, the pod and queue model and the metrics of one run.
//! - [`models`]: one [`sim::Autoscaler`] per system: the classic chain, the tutorial's counter
//!   variant and Knative's KPA, each a pure struct whose constants cite
//!   `shared/reference/autoscalers.md`; and Surge, replayed through the scaler's own ingest hub
//!   and decision code.
//! - [`scenarios`]: the scenario set (steps, spike, ramp, noisy diurnal curve, drop to zero) and
//!   the [`scenarios::Trace`] the simulation plays.
//! - [`report`]: runs every system over every scenario and writes the markdown and JSON table.
//! - [`chart`]: hand-written SVG charts per scenario.
//! - [`live`]: a live sandbox run as a row of the table, and the cross-check against the replay.
//! - [`real`]: `make compare-real`: Surge and the real classic chain on the real control plane,
//!   measured beside the models, with `summary.json` and the goals of issue 15.
//! - [`rng`]: a small seeded generator, so phases and noise are reproducible.

pub mod chart;
pub mod live;
pub mod models;
pub mod real;
pub mod report;
pub mod rng;
pub mod scenarios;
pub mod sim;

use std::future::Future;
use std::path::{Path, PathBuf};

use report::Comparison;
use scenarios::Trace;

use crate::run::{RunOptions, run};
use crate::scenario::Scenario;

/// Phase seeds the table is computed over by default: enough for a stable median of the
/// classic chain's phase-dependent answers, and still well under a second in a release build.
pub const DEFAULT_SEEDS: u64 = 21;

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A scenario file was refused (the message names the field and line).
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
    /// A built-in scenario did not parse (a defect: the tests parse them all).
    #[error("built-in scenario: {0}")]
    Builtin(String),
    /// A system could not be built (a defect: the tests build them all).
    #[error("cannot build the systems: {0}")]
    Systems(String),
    /// A live sandbox run failed or was interrupted.
    #[error("live sandbox run of {scenario}: {message}")]
    Live {
        /// The scenario.
        scenario: String,
        /// What went wrong.
        message: String,
    },
    /// `--play` named a system `compare-real` does not play.
    #[error("--play {0}: compare-real plays surge and classic only")]
    NotPlayed(String),
    /// The output could not be written.
    #[error("cannot write the comparison to {dir}: {source}")]
    Write {
        /// The output directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The scenarios of `files`, or the standard set when `files` is empty.
pub fn load_scenarios(files: &[PathBuf]) -> Result<Vec<Scenario>, CompareError> {
    if files.is_empty() {
        return scenarios::standard_scenarios().map_err(CompareError::Builtin);
    }
    files
        .iter()
        .map(|path| Scenario::from_file(path).map_err(CompareError::from))
        .collect()
}

/// The traces of `files`, or the standard set when `files` is empty.
pub fn load_traces(files: &[PathBuf]) -> Result<Vec<Trace>, CompareError> {
    Ok(load_scenarios(files)?
        .iter()
        .map(Trace::from_scenario)
        .collect())
}

/// Runs every modelled system over `traces` with seeds `1..=seeds` and writes the table
/// (`compare.md`, `compare.json`) and one SVG chart per scenario into `out_dir`.
pub fn compare(
    traces: &[Trace],
    seeds: u64,
    out_dir: &Path,
) -> Result<(Comparison, Vec<PathBuf>), CompareError> {
    let seeds: Vec<u64> = (1..=seeds.max(1)).collect();
    let comparison = report::run(traces, &seeds, &models::all).map_err(CompareError::Systems)?;
    let written = report::write(&comparison, out_dir).map_err(|source| CompareError::Write {
        dir: out_dir.to_path_buf(),
        source,
    })?;
    Ok((comparison, written))
}

/// Like [`compare`], and also plays each scenario in the live sandbox (real Envoys with the
/// filter, the real scaler binary; one scenario after the other, each as long as its trace):
/// adds a "Surge (live sandbox)" row per scenario and the cross-check of the replayed decisions
/// against it. `cancel` makes the future that interrupts a run (Ctrl-C).
pub async fn compare_live<F: Future<Output = ()>>(
    scenarios: &[Scenario],
    seeds: u64,
    out_dir: &Path,
    cancel: impl Fn() -> F,
) -> Result<(Comparison, Vec<PathBuf>), CompareError> {
    let traces: Vec<Trace> = scenarios.iter().map(Trace::from_scenario).collect();
    let seeds: Vec<u64> = (1..=seeds.max(1)).collect();
    let mut comparison =
        report::run(&traces, &seeds, &models::all).map_err(CompareError::Systems)?;
    for ((scenario, trace), result) in scenarios
        .iter()
        .zip(&traces)
        .zip(comparison.scenarios.iter_mut())
    {
        let failed = |message: String| CompareError::Live {
            scenario: scenario.name.clone(),
            message,
        };
        let options = RunOptions::embedded(out_dir.join("live").join(&scenario.name), false);
        let outcome = run(scenario, &options, cancel())
            .await
            .map_err(|e| failed(e.to_string()))?;
        if outcome.interrupted {
            return Err(failed(
                outcome.failure.unwrap_or_else(|| "interrupted".into()),
            ));
        }
        let live_row = live::system_result(&outcome, trace.event_s);
        if let Some(replay) = result
            .systems
            .iter()
            .find(|s| s.system == models::surge::REPLAY_NAME)
        {
            comparison.cross_checks.push(live::cross_check(
                &scenario.name,
                trace.event_s,
                replay,
                &live_row,
            ));
        }
        result.systems.push(live_row);
    }
    let written = report::write(&comparison, out_dir).map_err(|source| CompareError::Write {
        dir: out_dir.to_path_buf(),
        source,
    })?;
    Ok((comparison, written))
}

//! `make compare-real`: scenarios of the standard set played on the real control plane, once
//! under Surge and once under the real classic chain (Prometheus scraping every 15 s, KEDA, the
//! kube-controller-manager's HPA; `crate::classic`), through the same Envoys, load, pods and
//! start-up delays. The models run on the very same traces beside them, so every measured figure
//! stands next to the model's with their difference.
//!
//! Two adjustments make the standard set playable here, both applied to the models' traces too:
//!
//! - **Load scale** ([`DEFAULT_LOAD_SCALE`]): this 2-core machine cannot push 600 rps through
//!   10 pods' Envoys and apps (`docs/benchmarks/compare.md`), so rates, the per-replica target,
//!   the app's concurrency and its queue are all multiplied by the same factor: every replica
//!   count, utilisation and queueing time stays what it is at full scale; only request totals
//!   shrink.
//! - **Lead-in** ([`LEAD_IN_S`]): the run starts that many seconds earlier at the first rate,
//!   so Prometheus' `rate(...[1m])` has a full window before the event, as the models' warm-up
//!   gives theirs.
//!
//! The runs are [`crate::run::run`] with [`crate::classic::Autoscaler`]; what is pure (the
//! scaling here, the differences, goals and summary in [`summary`](mod@summary)) is unit-tested.

use std::future::Future;
use std::path::{Path, PathBuf};

use super::CompareError;
use super::live::{cross_check, measured_row};
use super::models::{self, surge::REPLAY_NAME};
use super::report::{self, Comparison};
use super::scenarios::Trace;
use crate::classic::Autoscaler;
use crate::run::{RunOptions, run};
use crate::sandbox::KubeMode;
use crate::scenario::Scenario;

pub mod summary;

use summary::row;
pub use summary::{Difference, Goal, Summary, differences, goals, markdown, summary};

/// Scenarios played by default, issue 15's four: the 10x and 3x steps, the spike and the noisy
/// curve (the 5x step, played before the 3x step joined the standard set, stays playable).
pub const DEFAULT_SCENARIOS: [&str; 4] = ["step-10x", "step-3x", "spike-20s", "diurnal-noisy"];

/// Load scale played by default: 600 rps becomes 300, which this machine carries.
pub const DEFAULT_LOAD_SCALE: f64 = 0.5;

/// Seconds at the first rate added before each scenario: with the scenarios' own 30 s before
/// the event, Prometheus' 1 m rate window is full when the load changes.
pub const LEAD_IN_S: u64 = 30;

/// A model and a measurement are said to differ when the model is off by more than this share
/// of the measured value (issue 15: correct the model or say why not).
pub const MODEL_TOLERANCE: f64 = 0.2;

/// Name of Surge's measured row.
pub const SURGE_REAL: &str = "Surge (real Kubernetes)";
/// Name of the classic chain's measured row.
pub const CLASSIC_REAL: &str = "classic (real Prometheus+KEDA+HPA)";
/// The classic chain's model row (`models::classic::ClassicChain::new`).
pub const CLASSIC_MODEL: &str = models::classic::NAME;

/// The systems played for real, each with its row name and the model row it is checked against.
pub const PLAYED: [(Autoscaler, &str, &str); 2] = [
    (Autoscaler::Surge, SURGE_REAL, REPLAY_NAME),
    (Autoscaler::Classic, CLASSIC_REAL, CLASSIC_MODEL),
];

/// `scenario` as `compare-real` plays it: load, target, app concurrency and queue multiplied
/// by `load_scale`, and [`LEAD_IN_S`] more seconds at the first rate. Fails (naming what) when
/// the concurrency would not stay a whole number of at least 1 or a rate leaves its range.
pub fn prepare(scenario: &Scenario, load_scale: f64) -> Result<Scenario, String> {
    if !(load_scale.is_finite() && load_scale > 0.0 && load_scale <= 1.0) {
        return Err(format!(
            "load scale must be within (0, 1], got {load_scale}"
        ));
    }
    let mut out = scenario.clone();
    let concurrency = f64::from(scenario.pods.concurrency) * load_scale;
    if concurrency < 1.0 || (concurrency - concurrency.round()).abs() > 1e-9 {
        return Err(format!(
            "{}: pods.concurrency {} x load scale {load_scale} is not a whole number >= 1",
            scenario.name, scenario.pods.concurrency
        ));
    }
    out.pods.concurrency = concurrency.round() as u32;
    out.pods.queue = ((f64::from(scenario.pods.queue) * load_scale).round() as u32).max(1);
    out.scaler.target = scenario.scaler.target * load_scale;
    out.load = scenario
        .load
        .iter()
        .map(|phase| phase.scaled(load_scale))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", scenario.name))?;
    out.warmup_s = scenario.warmup_s + LEAD_IN_S;
    Ok(out)
}

/// The scenarios of the standard set named in `names` (all of [`DEFAULT_SCENARIOS`] when
/// empty), in the order given; an unknown name is an error that lists the known ones.
pub fn select(names: &[String]) -> Result<Vec<Scenario>, CompareError> {
    let all = super::scenarios::standard_scenarios().map_err(CompareError::Builtin)?;
    let wanted: Vec<String> = if names.is_empty() {
        DEFAULT_SCENARIOS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        names.to_vec()
    };
    wanted
        .iter()
        .map(|name| {
            all.iter()
                .find(|s| &s.name == name)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                    CompareError::Builtin(format!(
                        "no scenario {name:?} in the standard set (known: {})",
                        known.join(", ")
                    ))
                })
        })
        .collect()
}

/// Where and how `compare-real` runs.
#[derive(Debug, Clone)]
pub struct RealOptions {
    /// Output directory (`target/compare-real`).
    pub out_dir: PathBuf,
    /// Phase seeds of the models.
    pub seeds: u64,
    /// See [`prepare`].
    pub load_scale: f64,
    /// Print one progress line per second of each run.
    pub progress: bool,
    /// Take a run's `result.json` from an earlier `compare-real` into the same folder instead
    /// of playing it again (when it exists and played the same scenario): the models and the
    /// summary are computed afresh.
    pub reuse: bool,
    /// Play only this system: the other's row is reused from an earlier run when there is one
    /// (as with `reuse`) and left out otherwise.
    pub play: Option<Autoscaler>,
}

/// An earlier run of `scenario`, read from `path`; refused if it played something else.
fn reuse(path: &Path, scenario: &Scenario) -> Result<crate::report::RunResult, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let result: crate::report::RunResult = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a run's result.json: {e}", path.display()))?;
    if &result.scenario != scenario {
        return Err(format!(
            "{} played another scenario (other load scale or version): play it again without \
             --reuse",
            path.display()
        ));
    }
    Ok(result)
}

/// Plays each scenario (as [`prepare`]d) under each system of [`PLAYED`], one run after the
/// other, beside the models; after each scenario writes what it has so far (the table and
/// charts of `make compare`, `summary.json`, `compare-real.md`), so an interrupted session
/// keeps its finished scenarios. `cancel` makes the future that interrupts a run (Ctrl-C).
pub async fn compare_real<F: Future<Output = ()>>(
    scenarios: &[Scenario],
    options: &RealOptions,
    cancel: impl Fn() -> F,
) -> Result<(Comparison, Summary, Vec<PathBuf>), CompareError> {
    check_play(options.play)?;
    let seeds: Vec<u64> = (1..=options.seeds.max(1)).collect();
    let mut comparison = Comparison {
        seeds: seeds.clone(),
        warmup_s: 0,
        scenarios: Vec::new(),
        cross_checks: Vec::new(),
    };
    let mut written = Vec::new();
    for original in scenarios {
        let failed = |message: String| CompareError::Live {
            scenario: original.name.clone(),
            message,
        };
        let scenario = prepare(original, options.load_scale).map_err(failed)?;
        let trace = Trace::from_scenario(&scenario);
        // The models start as the real runs do (minReplicas, empty windows), so that a
        // difference is the models' and not the start's.
        let mut modelled = report::run_from(
            std::slice::from_ref(&trace),
            &seeds,
            &models::all,
            report::Start::AtMinReplicas,
        )
        .map_err(CompareError::Systems)?;
        let Some(mut result) = modelled.scenarios.pop() else {
            return Err(CompareError::Systems("the models gave no result".into()));
        };
        for (autoscaler, name, _) in PLAYED {
            let run_options = RunOptions {
                out_dir: options
                    .out_dir
                    .join("runs")
                    .join(&scenario.name)
                    .join(autoscaler_dir(autoscaler)),
                live: options.progress,
                kube: KubeMode::Real,
                helm_set: Vec::new(),
                autoscaler,
            };
            let saved = run_options.out_dir.join("result.json");
            let outcome = match source(options, autoscaler, saved.exists()) {
                Source::Skip => continue,
                Source::Saved => reuse(&saved, &scenario).map_err(failed)?,
                Source::Play => run(&scenario, &run_options, cancel())
                    .await
                    .map_err(|e| failed(e.to_string()))?,
            };
            if outcome.interrupted {
                return Err(failed(
                    outcome.failure.unwrap_or_else(|| "interrupted".into()),
                ));
            }
            result
                .systems
                .push(measured_row(&outcome, trace.event_s, name));
        }
        if let (Some(replay), Some(measured)) =
            (row(&result, REPLAY_NAME), row(&result, SURGE_REAL))
        {
            comparison.cross_checks.push(cross_check(
                &scenario.name,
                trace.event_s,
                replay,
                measured,
            ));
        }
        comparison.scenarios.push(result);
        written = write(&comparison, options.load_scale, &options.out_dir)?;
    }
    Ok((
        comparison.clone(),
        summary(&comparison, options.load_scale),
        written,
    ))
}

/// Where a system's row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Played now.
    Play,
    /// Read from the run saved in the output folder.
    Saved,
    /// Left out: not played now, and no earlier run.
    Skip,
}

/// Refuses a `--play` that names none of [`PLAYED`] (it would play nothing at all).
fn check_play(play: Option<Autoscaler>) -> Result<(), CompareError> {
    match play {
        Some(only) if !PLAYED.iter().any(|(a, _, _)| *a == only) => {
            // Named as on the command line (`classic-literal`).
            let name = clap::ValueEnum::to_possible_value(&only)
                .map_or_else(|| format!("{only:?}"), |v| v.get_name().to_owned());
            Err(CompareError::NotPlayed(name))
        }
        _ => Ok(()),
    }
}

fn source(options: &RealOptions, autoscaler: Autoscaler, saved: bool) -> Source {
    let played = options.play.is_none_or(|only| only == autoscaler);
    match (played, saved) {
        (false, false) => Source::Skip,
        (false, true) => Source::Saved,
        (true, true) if options.reuse => Source::Saved,
        (true, _) => Source::Play,
    }
}

fn autoscaler_dir(autoscaler: Autoscaler) -> &'static str {
    match autoscaler {
        Autoscaler::Surge => "surge",
        Autoscaler::Classic => "classic",
        Autoscaler::ClassicLiteral => "classic-literal",
    }
}

/// Writes the table and charts of `make compare` plus `summary.json` and `compare-real.md`.
pub fn write(
    comparison: &Comparison,
    load_scale: f64,
    dir: &Path,
) -> Result<Vec<PathBuf>, CompareError> {
    let io = |source| CompareError::Write {
        dir: dir.to_path_buf(),
        source,
    };
    let mut written = report::write(comparison, dir).map_err(io)?;
    let summary = summary(comparison, load_scale);
    let json = serde_json::to_string_pretty(&summary).map_err(|e| io(std::io::Error::other(e)))?;
    let path = dir.join("summary.json");
    std::fs::write(&path, json).map_err(io)?;
    written.push(path);
    let path = dir.join("compare-real.md");
    std::fs::write(&path, markdown(&summary)).map_err(io)?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preparing_scales_load_target_and_pods_alike_and_adds_the_lead_in() {
        let step = select(&["step-10x".into()]).unwrap().remove(0);
        let half = prepare(&step, 0.5).unwrap();
        assert_eq!(half.pods.concurrency, step.pods.concurrency / 2);
        assert_eq!(half.pods.queue, step.pods.queue / 2);
        assert_eq!(half.scaler.target, step.scaler.target / 2.0);
        assert_eq!(half.warmup_s, step.warmup_s + LEAD_IN_S);
        // Replicas needed stay the same: capacity and target shrink with the load.
        let peak = |s: &Scenario| {
            (0..s.total_seconds() as u32)
                .map(|t| s.rate_at(f64::from(t)))
                .fold(0.0, f64::max)
        };
        assert_eq!(peak(&half), peak(&step) / 2.0);
        assert_eq!(
            peak(&half) / half.pods.capacity_rps(),
            peak(&step) / step.pods.capacity_rps()
        );
        // The event moves by the lead-in only.
        let (a, b) = (Trace::from_scenario(&step), Trace::from_scenario(&half));
        // (The step is found on a 10 ms grid.)
        assert!(
            (b.event_s - a.event_s - LEAD_IN_S as f64).abs() <= 0.011,
            "{} vs {}",
            b.event_s,
            a.event_s
        );
    }

    #[test]
    fn play_plays_one_system_and_takes_the_other_from_the_folder_or_leaves_it_out() {
        let options = |reuse, play| RealOptions {
            out_dir: PathBuf::new(),
            seeds: 1,
            load_scale: 0.5,
            progress: false,
            reuse,
            play,
        };
        let both = options(false, None);
        assert_eq!(source(&both, Autoscaler::Classic, true), Source::Play);
        assert_eq!(
            source(&options(true, None), Autoscaler::Classic, true),
            Source::Saved
        );
        assert_eq!(
            source(&options(true, None), Autoscaler::Classic, false),
            Source::Play
        );
        assert!(check_play(Some(Autoscaler::Classic)).is_ok() && check_play(None).is_ok());
        let err = check_play(Some(Autoscaler::ClassicLiteral)).unwrap_err();
        assert!(err.to_string().contains("--play classic-literal"), "{err}");
        let surge_only = options(false, Some(Autoscaler::Surge));
        assert_eq!(source(&surge_only, Autoscaler::Surge, true), Source::Play);
        assert_eq!(
            source(&surge_only, Autoscaler::Classic, true),
            Source::Saved
        );
        assert_eq!(
            source(&surge_only, Autoscaler::Classic, false),
            Source::Skip
        );
    }

    #[test]
    fn reuse_refuses_a_file_that_is_not_a_run_naming_it() {
        let dir = std::env::temp_dir().join(format!("surge-reuse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("result.json");
        let _ = std::fs::remove_file(&path);
        let step = select(&["step-10x".into()]).unwrap().remove(0);
        let missing = reuse(&path, &step).unwrap_err();
        assert!(
            missing.contains("cannot read") && missing.contains("result.json"),
            "{missing}"
        );
        std::fs::write(&path, "{\"scenario\": 1}").unwrap();
        let bad = reuse(&path, &step).unwrap_err();
        assert!(bad.contains("not a run's result.json"), "{bad}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn preparing_refuses_what_cannot_be_played() {
        let step = select(&["step-10x".into()]).unwrap().remove(0);
        let err = prepare(&step, 0.3).unwrap_err();
        assert!(err.contains("pods.concurrency"), "{err}");
        assert!(prepare(&step, 0.0).unwrap_err().contains("load scale"));
        assert!(prepare(&step, 1.5).unwrap_err().contains("load scale"));
        let err = select(&["step-4x".into()]).unwrap_err().to_string();
        assert!(err.contains("step-4x") && err.contains("step-10x"), "{err}");
    }

    #[test]
    fn the_default_set_is_in_the_standard_set() {
        let names: Vec<String> = select(&[]).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, DEFAULT_SCENARIOS);
        for scenario in select(&[]).unwrap() {
            prepare(&scenario, DEFAULT_LOAD_SCALE).unwrap();
        }
    }
}

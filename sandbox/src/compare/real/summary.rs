//! The measured rows of `compare-real` against the models: figure-by-figure differences, issue
//! 15's goals, `summary.json` and its markdown table. Pure: no runs, no I/O.

use serde::{Deserialize, Serialize};

use super::{CLASSIC_REAL, LEAD_IN_S, MODEL_TOLERANCE, PLAYED, SURGE_REAL};
use crate::compare::report::{Comparison, ScenarioResult, SystemResult};
use crate::compare::sim::Metrics;

/// One figure, modelled and measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// Which figure.
    pub metric: String,
    /// The model's median (`None`: never reached).
    pub model: Option<f64>,
    /// The measured value (`None`: never reached).
    pub measured: Option<f64>,
    /// (model - measured) / measured; `None` when either is missing or the measured is 0 and
    /// the model is not.
    pub relative: Option<f64>,
    /// The model is off by more than [`MODEL_TOLERANCE`] (or reached what the measurement did
    /// not, or the other way round).
    pub beyond_tolerance: bool,
}

fn difference(metric: &str, model: Option<f64>, measured: Option<f64>) -> Difference {
    let relative = match (model, measured) {
        (Some(m), Some(x)) if x != 0.0 => Some((m - x) / x),
        (Some(0.0), Some(_)) => Some(0.0),
        _ => None,
    };
    let beyond_tolerance = match (model, measured) {
        (None, None) => false,
        _ => relative.is_none_or(|r| r.abs() > MODEL_TOLERANCE),
    };
    Difference {
        metric: metric.to_owned(),
        model,
        measured,
        relative,
        beyond_tolerance,
    }
}

/// The figures `compare-real` sets side by side, model against measurement.
pub fn differences(model: &Metrics, measured: &Metrics) -> Vec<Difference> {
    let pair =
        |name: &str, get: fn(&Metrics) -> Option<f64>| difference(name, get(model), get(measured));
    vec![
        pair("first_scale_up_s", |m| m.first_scale_up_s),
        pair("enough_capacity_s", |m| m.enough_capacity_s),
        pair("overloaded_s", |m| Some(m.overloaded_s)),
        pair("over_objective", |m| Some(m.over_objective)),
        pair("refused", |m| Some(m.refused)),
        pair("pod_seconds", |m| Some(m.pod_seconds)),
        pair("scale_events", |m| Some(f64::from(m.scale_events))),
    ]
}

/// One system of one scenario in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemSummary {
    /// The measured row's name.
    pub system: String,
    /// The model row it is checked against.
    pub model: String,
    /// What was measured.
    pub measured: Metrics,
    /// The model's medians over the phase seeds.
    pub modelled: Metrics,
    /// Figure by figure.
    pub differences: Vec<Difference>,
}

/// One scenario in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSummary {
    /// Scenario name (of the standard set).
    pub scenario: String,
    /// Second of the run the figures are measured from.
    pub event_s: f64,
    /// One entry per system played.
    pub systems: Vec<SystemSummary>,
}

/// A goal of issue 15, checked on the measured rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// What is compared, with the figures.
    pub what: String,
    /// Whether it is met.
    pub met: bool,
}

/// `target/compare-real/summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Load scale the scenarios were played at.
    pub load_scale: f64,
    /// Seconds of lead-in added before each scenario.
    pub lead_in_s: u64,
    /// Phase seeds of the models.
    pub model_seeds: usize,
    /// One entry per scenario played.
    pub scenarios: Vec<ScenarioSummary>,
    /// Issue 15's goals, for the scenarios played.
    pub goals: Vec<Goal>,
}

pub(crate) fn row<'a>(scenario: &'a ScenarioResult, name: &str) -> Option<&'a SystemResult> {
    scenario.systems.iter().find(|s| s.system == name)
}

/// Issue 15's goals on the measured rows: on the 10x step, Surge's first scale-up >= 100x
/// sooner than the classic chain's, and its overloaded seconds <= 1/10 of the chain's at <= 1.2x
/// its pod-seconds; on the noisy curve, no more scale events than the chain.
pub fn goals(comparison: &Comparison) -> Vec<Goal> {
    let mut out = Vec::new();
    let find = |name: &str| comparison.scenarios.iter().find(|s| s.scenario == name);
    if let Some(step) = find("step-10x")
        && let (Some(surge), Some(classic)) = (row(step, SURGE_REAL), row(step, CLASSIC_REAL))
    {
        let (s, c) = (&surge.median, &classic.median);
        match (s.first_scale_up_s, c.first_scale_up_s) {
            (Some(sf), Some(cf)) => {
                let ratio = cf / sf.max(1e-3);
                out.push(Goal {
                    what: format!(
                        "step-10x, first scale-up: Surge {sf:.2} s vs classic {cf:.1} s = \
                         {ratio:.0}x sooner (goal >= 100x)"
                    ),
                    met: ratio >= 100.0,
                });
            }
            (sf, cf) => out.push(Goal {
                what: format!(
                    "step-10x, first scale-up: Surge {sf:?} s vs classic {cf:?} s (one never \
                     scaled up)"
                ),
                met: sf.is_some() && cf.is_none(),
            }),
        }
        let overload = s.overloaded_s / c.overloaded_s.max(1e-9);
        let cost = s.pod_seconds / c.pod_seconds.max(1e-9);
        out.push(Goal {
            what: format!(
                "step-10x, overloaded: Surge {:.0} s vs classic {:.0} s = {overload:.3} of it \
                 (goal <= 0.1), at {cost:.2}x its pod-seconds (goal <= 1.2x)",
                s.overloaded_s, c.overloaded_s
            ),
            met: overload <= 0.1 && cost <= 1.2,
        });
    }
    if let Some(noisy) = find("diurnal-noisy")
        && let (Some(surge), Some(classic)) = (row(noisy, SURGE_REAL), row(noisy, CLASSIC_REAL))
    {
        let (s, c) = (surge.median.scale_events, classic.median.scale_events);
        out.push(Goal {
            what: format!(
                "diurnal-noisy, scale events: Surge {s} vs classic {c} (goal: no more than \
                 the classic chain)"
            ),
            met: s <= c,
        });
    }
    out
}

/// The summary of `comparison` (scenarios without a measured row are left out).
pub fn summary(comparison: &Comparison, load_scale: f64) -> Summary {
    let scenarios = comparison
        .scenarios
        .iter()
        .map(|scenario| ScenarioSummary {
            scenario: scenario.scenario.clone(),
            event_s: scenario.event_s,
            systems: PLAYED
                .iter()
                .filter_map(|(_, measured, model)| {
                    let (m, x) = (row(scenario, model)?, row(scenario, measured)?);
                    Some(SystemSummary {
                        system: (*measured).to_owned(),
                        model: (*model).to_owned(),
                        measured: x.median,
                        modelled: m.median,
                        differences: differences(&m.median, &x.median),
                    })
                })
                .collect(),
        })
        .filter(|s: &ScenarioSummary| !s.systems.is_empty())
        .collect();
    Summary {
        load_scale,
        lead_in_s: LEAD_IN_S,
        model_seeds: comparison.seeds.len(),
        scenarios,
        goals: goals(comparison),
    }
}

/// A figure with two decimals, or two significant digits below 0.1: shares are fractions, and
/// a 0.1 % share printed as "0.00" beside a modelled 0.0 % hid what the table flags.
fn figure(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.1 {
        let digits = (1 - v.abs().log10().floor() as i32).clamp(2, 6) as usize;
        format!("{v:.digits$}")
    } else {
        format!("{v:.2}")
    }
}

/// The model-against-measurement table and the goals, as markdown.
pub fn markdown(summary: &Summary) -> String {
    let value = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), figure);
    let mut out = format!(
        "Played at load scale {} with {} s of lead-in; models: medians over {} phase seeds, \
         started as the real runs start (minReplicas, every window empty).\n\n\
         | scenario | system | figure | model | measured | model off by |\n|---|---|---|---|---|---|\n",
        summary.load_scale, summary.lead_in_s, summary.model_seeds
    );
    for scenario in &summary.scenarios {
        for system in &scenario.systems {
            for d in &system.differences {
                let off = match d.relative {
                    Some(r) => format!("{:+.0} %", r * 100.0),
                    None if d.model.is_none() && d.measured.is_none() => "-".to_owned(),
                    None => "n/a".to_owned(),
                };
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {}{} |\n",
                    scenario.scenario,
                    system.system,
                    d.metric,
                    value(d.model),
                    value(d.measured),
                    off,
                    if d.beyond_tolerance { " (> 20 %)" } else { "" },
                ));
            }
        }
    }
    if !summary.goals.is_empty() {
        out.push_str("\nGoals (issue 15), on the measured rows:\n\n");
        for goal in &summary.goals {
            let verdict = if goal.met { "met" } else { "NOT met" };
            out.push_str(&format!("- {}: {verdict}\n", goal.what));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::compare::models::surge::REPLAY_NAME;
    use crate::compare::real::{CLASSIC_MODEL, select};
    use crate::compare::scenarios::Trace;
    use crate::compare::sim::ScaleWrite;

    fn metrics(first: Option<f64>, overloaded: f64, pod_seconds: f64, events: u32) -> Metrics {
        Metrics {
            first_scale_up_s: first,
            enough_capacity_s: first.map(|f| f + 5.0),
            overloaded_s: overloaded,
            over_objective: 0.1,
            refused: 0.0,
            pod_seconds,
            scale_events: events,
            reversals: 0,
            peak_replicas: 5,
            requests: 1000.0,
        }
    }

    fn system(name: &str, m: Metrics) -> SystemResult {
        SystemResult {
            system: name.into(),
            median: m,
            first_scale_up_range_s: None,
            runs: vec![m],
            series: vec![],
            initial_replicas: 1,
            writes: vec![ScaleWrite {
                t_s: 30.0,
                replicas: 5,
            }],
        }
    }

    #[test]
    fn differences_flag_a_model_off_by_more_than_a_fifth() {
        let model = metrics(Some(16.9), 40.0, 1000.0, 4);
        let measured = metrics(Some(20.1), 38.0, 1300.0, 4);
        let d = differences(&model, &measured);
        let get = |name: &str| d.iter().find(|d| d.metric == name).unwrap();
        let first = get("first_scale_up_s");
        assert!((first.relative.unwrap() - (16.9 - 20.1) / 20.1).abs() < 1e-12);
        assert!(!first.beyond_tolerance);
        assert!(!get("overloaded_s").beyond_tolerance);
        assert!(get("pod_seconds").beyond_tolerance);
        assert_eq!(get("scale_events").relative, Some(0.0));
        // Reached by one and never by the other: beyond, with no ratio.
        let never = metrics(None, 40.0, 1000.0, 0);
        let d = differences(&never, &measured);
        assert!(d[0].relative.is_none() && d[0].beyond_tolerance);
        let d = differences(&never, &never);
        assert!(!d[0].beyond_tolerance);
        // A measured zero against a modelled zero agrees; against a modelled value it does not.
        assert_eq!(difference("x", Some(0.0), Some(0.0)).relative, Some(0.0));
        assert!(difference("x", Some(1.0), Some(0.0)).beyond_tolerance);
    }

    fn scenario(name: &str, systems: Vec<SystemResult>) -> ScenarioResult {
        let step = select(&["step-10x".into()]).unwrap().remove(0);
        let trace = Trace::from_scenario(&step);
        ScenarioResult {
            scenario: name.into(),
            description: String::new(),
            event_s: trace.event_s,
            target: super::super::models::ScaleTarget {
                min_replicas: 1,
                max_replicas: 10,
                target_rps_per_pod: 35.0,
            },
            pod: trace.pod,
            offered_rps: trace.rps,
            systems,
        }
    }

    #[test]
    fn goals_and_summary_use_the_measured_rows() {
        let comparison = Comparison {
            seeds: vec![1, 2, 3],
            warmup_s: 120,
            scenarios: vec![
                scenario(
                    "step-10x",
                    vec![
                        system(CLASSIC_MODEL, metrics(Some(16.9), 40.0, 2000.0, 5)),
                        system(REPLAY_NAME, metrics(Some(0.2), 5.0, 2100.0, 2)),
                        system(SURGE_REAL, metrics(Some(0.15), 3.0, 2200.0, 2)),
                        system(CLASSIC_REAL, metrics(Some(20.1), 45.0, 2000.0, 6)),
                    ],
                ),
                scenario(
                    "diurnal-noisy",
                    vec![
                        system(SURGE_REAL, metrics(Some(1.0), 3.0, 2200.0, 9)),
                        system(CLASSIC_REAL, metrics(Some(20.0), 45.0, 2000.0, 8)),
                    ],
                ),
                scenario(
                    "spike-20s",
                    vec![system(CLASSIC_MODEL, metrics(None, 1.0, 1.0, 0))],
                ),
            ],
            cross_checks: vec![],
        };
        let goals = goals(&comparison);
        assert_eq!(goals.len(), 3);
        // 20.1 / 0.15 = 134x; 3/45 = 0.067 at 1.1x the pod-seconds; 9 events against 8.
        assert!(goals[0].met, "{}", goals[0].what);
        assert!(goals[0].what.contains("134x"), "{}", goals[0].what);
        assert!(goals[1].met, "{}", goals[1].what);
        assert!(!goals[2].met, "{}", goals[2].what);
        let summary = summary(&comparison, 0.5);
        // The noisy curve has no model rows here and the spike no measured ones: one scenario
        // with both systems.
        assert_eq!(summary.scenarios.len(), 1);
        let step = &summary.scenarios[0];
        assert_eq!(step.systems.len(), 2);
        assert_eq!(step.systems[0].system, SURGE_REAL);
        assert_eq!(step.systems[1].model, CLASSIC_MODEL);
        let text = markdown(&summary);
        assert!(text.contains("| step-10x | classic (real Prometheus+KEDA+HPA) | first_scale_up_s | 16.90 | 20.10 | -16 % |"), "{text}");
        assert!(text.contains("NOT met"), "{text}");
    }

    #[test]
    fn small_figures_keep_two_significant_digits() {
        let shown: Vec<String> = [0.0, 0.001, 0.0123, 0.05, 0.5, 13.4, 5726.0]
            .into_iter()
            .map(figure)
            .collect();
        assert_eq!(
            shown,
            [
                "0.00", "0.0010", "0.012", "0.050", "0.50", "13.40", "5726.00"
            ]
        );
    }
}

//! Runs every system over every scenario and writes the comparison table (markdown and JSON).
//!
//! Each system runs once per phase seed: the classic chain's answer depends on where the step
//! falls between its unsynchronised scrape and loop phases, so the table gives the median over
//! the seeds (and the range of the first scale-up); the series and charts are the first seed's.

use serde::{Deserialize, Serialize};

use super::models::ScaleTarget;
use super::scenarios::Scenario;
use super::sim::{Autoscaler, Metrics, PodModel, SecondSample, SimConfig, simulate};

/// Seconds of warm-up at the trace's first value: fills the 60 s windows of Prometheus' rate and
/// KPA with room to spare (see `sim`).
pub const WARMUP_S: u32 = 120;

/// Builds the systems to compare for one run.
pub type SystemFactory<'a> = dyn Fn(ScaleTarget, &PodModel, u64) -> Vec<Box<dyn Autoscaler>> + 'a;

/// One system over one scenario, across the phase seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemResult {
    /// The system's name.
    pub system: String,
    /// Field-by-field median of the runs' metrics.
    pub median: Metrics,
    /// Smallest and largest first scale-up over the seeds, if every run scaled up.
    pub first_scale_up_range_s: Option<(f64, f64)>,
    /// Every run's metrics, in seed order.
    pub runs: Vec<Metrics>,
    /// The first seed's per-second series.
    pub series: Vec<SecondSample>,
}

/// All systems over one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub scenario: String,
    /// What the scenario shows.
    pub description: String,
    /// Second of the load change.
    pub event_s: f64,
    /// The shared bounds and target.
    pub target: ScaleTarget,
    /// Offered load, per second.
    pub offered_rps: Vec<f64>,
    /// One entry per system.
    pub systems: Vec<SystemResult>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The pod model shared by all systems.
    pub pod: PodModel,
    /// Phase seeds used.
    pub seeds: Vec<u64>,
    /// Warm-up before each scenario, seconds.
    pub warmup_s: u32,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioResult>,
}

/// Ready pods a scenario starts with: what its first second needs at the target, within bounds.
pub fn initial_replicas(scenario: &Scenario, target: &ScaleTarget) -> u32 {
    let first = scenario.rps.first().copied().unwrap_or(0.0);
    let needed = if target.target_rps_per_pod > 0.0 {
        (first / target.target_rps_per_pod).ceil() as u32
    } else {
        0
    };
    needed.clamp(
        target.min_replicas,
        target.max_replicas.max(target.min_replicas),
    )
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Median of optional values, `None` counting as larger than any value (never reached).
fn median_option(values: &[Option<f64>]) -> Option<f64> {
    let mut reached: Vec<f64> = values.iter().flatten().copied().collect();
    reached.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return None;
    }
    // With None as +inf, the middle element(s) of the full sorted list.
    let at = |i: usize| reached.get(i).copied();
    if n % 2 == 1 {
        at(n / 2)
    } else {
        Some((at(n / 2 - 1)? + at(n / 2)?) / 2.0)
    }
}

fn median_u32(values: impl Iterator<Item = u32>) -> u32 {
    median_f64(values.map(f64::from).collect()).round() as u32
}

fn summarize(runs: &[Metrics]) -> Metrics {
    let f = |get: fn(&Metrics) -> f64| median_f64(runs.iter().map(get).collect());
    Metrics {
        first_scale_up_s: median_option(
            &runs.iter().map(|m| m.first_scale_up_s).collect::<Vec<_>>(),
        ),
        enough_capacity_s: median_option(
            &runs.iter().map(|m| m.enough_capacity_s).collect::<Vec<_>>(),
        ),
        overloaded_s: f(|m| m.overloaded_s),
        over_objective: f(|m| m.over_objective),
        pod_seconds: f(|m| m.pod_seconds),
        scale_events: median_u32(runs.iter().map(|m| m.scale_events)),
        reversals: median_u32(runs.iter().map(|m| m.reversals)),
        peak_replicas: median_u32(runs.iter().map(|m| m.peak_replicas)),
        requests: f(|m| m.requests),
    }
}

/// Runs the systems built by `systems` over each scenario, once per seed.
pub fn run(
    scenarios: &[Scenario],
    pod: &PodModel,
    seeds: &[u64],
    systems: &SystemFactory<'_>,
) -> Comparison {
    let mut results = Vec::with_capacity(scenarios.len());
    for scenario in scenarios {
        let target = ScaleTarget::for_pod(pod, scenario.min_replicas, scenario.max_replicas);
        let config = SimConfig {
            pod: *pod,
            warmup_s: WARMUP_S,
            initial_replicas: initial_replicas(scenario, &target),
        };
        let mut per_system: Vec<(String, Vec<Metrics>, Vec<SecondSample>)> = Vec::new();
        for (i, &seed) in seeds.iter().enumerate() {
            for (j, mut system) in systems(target, pod, seed).into_iter().enumerate() {
                let outcome = simulate(&scenario.rps, scenario.event_s, &config, system.as_mut());
                if i == 0 {
                    per_system.push((outcome.system, vec![outcome.metrics], outcome.series));
                } else if let Some(entry) = per_system.get_mut(j) {
                    entry.1.push(outcome.metrics);
                }
            }
        }
        let systems = per_system
            .into_iter()
            .map(|(system, runs, series)| {
                let firsts: Option<Vec<f64>> = runs.iter().map(|m| m.first_scale_up_s).collect();
                let first_scale_up_range_s = firsts.filter(|v| !v.is_empty()).map(|v| {
                    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    (min, max)
                });
                SystemResult {
                    system,
                    median: summarize(&runs),
                    first_scale_up_range_s,
                    runs,
                    series,
                }
            })
            .collect();
        results.push(ScenarioResult {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            event_s: scenario.event_s,
            target,
            offered_rps: scenario.rps.clone(),
            systems,
        });
    }
    Comparison {
        pod: *pod,
        seeds: seeds.to_vec(),
        warmup_s: WARMUP_S,
        scenarios: results,
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "never".to_string(), |s| format!("{s:.1}"))
}

/// The comparison as a markdown table (one row per scenario and system).
pub fn markdown(comparison: &Comparison) -> String {
    let pod = &comparison.pod;
    let mut out = String::new();
    out.push_str(&format!(
        "Pod: ready {:.1} s after creation, {:.0} rps capacity, {:.0} ms service time, \
         latency objective {:.0} ms. Target {:.0} rps per pod for every system. \
         Medians over {} phase seeds (first scale-up: median [min-max]).\n\n",
        pod.startup_delay_s,
        pod.capacity_rps,
        pod.service_time_ms,
        pod.latency_objective_ms,
        pod.capacity_rps * super::models::kpa::TARGET_UTILIZATION,
        comparison.seeds.len(),
    ));
    out.push_str(
        "| scenario | system | first scale-up (s) | enough capacity (s) | overloaded (s) \
         | over objective | pod-seconds | scale events | reversals | peak |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for scenario in &comparison.scenarios {
        for system in &scenario.systems {
            let m = &system.median;
            let first = match (m.first_scale_up_s, system.first_scale_up_range_s) {
                (Some(s), Some((lo, hi))) if hi - lo >= 0.05 => {
                    format!("{s:.1} [{lo:.1}-{hi:.1}]")
                }
                (value, _) => seconds(value),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} | {:.1} % | {:.0} | {} | {} | {} |\n",
                scenario.scenario,
                system.system,
                first,
                seconds(m.enough_capacity_s),
                m.overloaded_s,
                m.over_objective * 100.0,
                m.pod_seconds,
                m.scale_events,
                m.reversals,
                m.peak_replicas,
            ));
        }
    }
    out
}

/// The comparison as pretty JSON (metrics, every run, and the first seed's series).
pub fn json(comparison: &Comparison) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(comparison)
}

#[cfg(test)]
mod tests {
    use super::super::models::anchors;
    use super::super::scenarios::{spike, step};
    use super::*;

    #[test]
    fn medians_treat_never_as_larger_than_any_value() {
        assert_eq!(median_option(&[Some(1.0), None, Some(3.0)]), Some(3.0));
        assert_eq!(median_option(&[Some(1.0), None, None]), None);
        assert_eq!(median_option(&[Some(1.0), Some(2.0)]), Some(1.5));
        assert_eq!(median_option(&[]), None);
        assert_eq!(median_f64(vec![3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn table_has_a_row_per_scenario_and_system_and_json_round_trips() {
        let pod = PodModel::default();
        let comparison = run(&[step(10), spike()], &pod, &[1, 2, 3], &|t, p, s| {
            anchors(t, p, s)
        });
        let table = markdown(&comparison);
        let rows = table
            .lines()
            .filter(|l| l.starts_with("| step-10x") || l.starts_with("| spike"))
            .count();
        assert_eq!(rows, 6, "{table}");
        assert!(table.contains("Knative KPA"));
        let text = json(&comparison).unwrap_or_default();
        let back: Result<Comparison, _> = serde_json::from_str(&text);
        assert!(back.is_ok_and(|b| b.scenarios.len() == 2));
        let classic = &comparison.scenarios[0].systems[0];
        assert_eq!(classic.runs.len(), 3);
        assert_eq!(
            classic.series.len(),
            comparison.scenarios[0].offered_rps.len()
        );
    }

    #[test]
    fn initial_replicas_fit_the_first_second_within_bounds() {
        let pod = PodModel::default();
        let s = step(10);
        let t = ScaleTarget::for_pod(&pod, 1, 10);
        assert_eq!(initial_replicas(&s, &t), 1);
        let mut big = s.clone();
        big.rps[0] = 10_000.0;
        assert_eq!(initial_replicas(&big, &t), 10);
    }
}

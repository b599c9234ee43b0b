//! Runs every system over every scenario and writes the comparison table (markdown and JSON).
//!
//! Each system runs once per phase seed: the classic chain's answer depends on where the step
//! falls between its unsynchronised scrape and loop phases, so the table gives the median over
//! the seeds (and the range of the first scale-up); the series and charts are the first seed's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::models::ScaleTarget;
use super::scenarios::Trace;
use super::sim::{
    Autoscaler, Metrics, Outcome, PodModel, ScaleWrite, SecondSample, SimConfig, simulate,
};

/// Seconds of warm-up: fills the 60 s windows of Prometheus' rate and KPA with room to spare
/// (see `sim`).
pub const WARMUP_S: u32 = 120;

/// The warm-up plays the mean of the trace's first seconds (up to this many), so that a noisy
/// first second does not set the starting scale.
pub const WARMUP_BASIS_S: usize = 30;

/// Builds the systems to compare for one run.
pub type SystemFactory<'a> =
    dyn Fn(ScaleTarget, &PodModel, u64) -> Result<Vec<Box<dyn Autoscaler>>, String> + 'a;

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
    /// The first seed's replicas at the start.
    pub initial_replicas: u32,
    /// The first seed's scale writes, at their exact times.
    pub writes: Vec<ScaleWrite>,
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
    /// The pod model shared by the systems.
    pub pod: PodModel,
    /// Offered load, per second.
    pub offered_rps: Vec<f64>,
    /// One entry per system.
    pub systems: Vec<SystemResult>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Phase seeds used.
    pub seeds: Vec<u64>,
    /// Warm-up before each scenario, seconds.
    pub warmup_s: u32,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioResult>,
    /// Replayed Surge against the live sandbox, per scenario played live.
    #[serde(default)]
    pub cross_checks: Vec<super::live::CrossCheck>,
}

/// The load the warm-up plays: the mean of the first [`WARMUP_BASIS_S`] seconds, or of those
/// before the scenario's event if it comes sooner.
pub fn warmup_rps(scenario: &Trace) -> f64 {
    let until = (scenario.event_s.floor() as usize)
        .clamp(0, WARMUP_BASIS_S)
        .max(1)
        .min(scenario.rps.len());
    let head = &scenario.rps[..until];
    if head.is_empty() {
        0.0
    } else {
        head.iter().sum::<f64>() / head.len() as f64
    }
}

/// Ready pods a scenario starts with: what its warm-up load needs at the target, within bounds.
pub fn initial_replicas(scenario: &Trace, target: &ScaleTarget) -> u32 {
    let first = warmup_rps(scenario);
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
        refused: f(|m| m.refused),
        pod_seconds: f(|m| m.pod_seconds),
        scale_events: median_u32(runs.iter().map(|m| m.scale_events)),
        reversals: median_u32(runs.iter().map(|m| m.reversals)),
        peak_replicas: median_u32(runs.iter().map(|m| m.peak_replicas)),
        requests: f(|m| m.requests),
    }
}

/// How the systems start a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After [`WARMUP_S`] at the scenario's opening load, with the replicas it needs: the
    /// steady state before the event, every window full (`make compare`).
    Warm,
    /// At `minReplicas` (at least 1) with every window empty, as a real run starts (the Deployment created
    /// at `minReplicas`, Prometheus and the scaler with no history): `make compare-real`.
    AtMinReplicas,
}

/// Runs the systems built by `systems` over each scenario, once per seed, from a warm start;
/// fails only if a system cannot be built.
pub fn run(
    scenarios: &[Trace],
    seeds: &[u64],
    systems: &SystemFactory<'_>,
) -> Result<Comparison, String> {
    run_from(scenarios, seeds, systems, Start::Warm)
}

/// [`run`], starting as `start` says.
pub fn run_from(
    scenarios: &[Trace],
    seeds: &[u64],
    systems: &SystemFactory<'_>,
    start: Start,
) -> Result<Comparison, String> {
    let mut results = Vec::with_capacity(scenarios.len());
    for scenario in scenarios {
        let pod = &scenario.pod;
        let target = ScaleTarget {
            min_replicas: scenario.min_replicas,
            max_replicas: scenario.max_replicas,
            target_rps_per_pod: scenario.target_rps_per_pod,
        };
        let config = match start {
            Start::Warm => SimConfig {
                pod: *pod,
                warmup_s: WARMUP_S,
                warmup_rps: Some(warmup_rps(scenario)),
                initial_replicas: initial_replicas(scenario, &target),
            },
            Start::AtMinReplicas => SimConfig {
                pod: *pod,
                warmup_s: 0,
                warmup_rps: None,
                initial_replicas: target.min_replicas.max(1),
            },
        };
        let mut per_system: Vec<(Outcome, Vec<Metrics>)> = Vec::new();
        for (i, &seed) in seeds.iter().enumerate() {
            for (j, mut system) in systems(target, pod, seed)?.into_iter().enumerate() {
                let outcome = simulate(&scenario.rps, scenario.event_s, &config, system.as_mut());
                if i == 0 {
                    let metrics = outcome.metrics;
                    per_system.push((outcome, vec![metrics]));
                } else if let Some(entry) = per_system.get_mut(j) {
                    entry.1.push(outcome.metrics);
                }
            }
        }
        let systems = per_system
            .into_iter()
            .map(|(first, runs)| {
                let firsts: Option<Vec<f64>> = runs.iter().map(|m| m.first_scale_up_s).collect();
                let first_scale_up_range_s = firsts.filter(|v| !v.is_empty()).map(|v| {
                    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    (min, max)
                });
                SystemResult {
                    system: first.system,
                    median: summarize(&runs),
                    first_scale_up_range_s,
                    runs,
                    series: first.series,
                    initial_replicas: first.initial_replicas,
                    writes: first.writes,
                }
            })
            .collect();
        results.push(ScenarioResult {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            event_s: scenario.event_s,
            target,
            pod: *pod,
            offered_rps: scenario.rps.clone(),
            systems,
        });
    }
    Ok(Comparison {
        seeds: seeds.to_vec(),
        warmup_s: match start {
            Start::Warm => WARMUP_S,
            Start::AtMinReplicas => 0,
        },
        scenarios: results,
        cross_checks: Vec::new(),
    })
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "never".to_string(), |s| format!("{s:.1}"))
}

/// The comparison as a markdown table (one row per scenario and system).
pub fn markdown(comparison: &Comparison) -> String {
    let mut out = String::new();
    let mut pods: Vec<(PodModel, f64)> = Vec::new();
    for s in &comparison.scenarios {
        if !pods.contains(&(s.pod, s.target.target_rps_per_pod)) {
            pods.push((s.pod, s.target.target_rps_per_pod));
        }
    }
    for (pod, target) in pods {
        out.push_str(&format!(
            "Pods: ready {:.1} s after creation, {:.0} rps capacity, {:.0} ms service time, \
             {} waiting at most, latency objective {:.0} ms; target {:.0} rps per pod for every \
             system.\n",
            pod.startup_delay_s,
            pod.capacity_rps,
            pod.service_time_ms,
            pod.queue_per_pod
                .map_or_else(|| "unbounded".to_string(), |q| format!("{q:.0}")),
            pod.latency_objective_ms,
            target,
        ));
    }
    out.push_str(&format!(
        "Medians over {} phase seeds; first scale-up as median [min-max].\n\n",
        comparison.seeds.len()
    ));
    out.push_str(
        "| scenario | system | first scale-up (s) | enough capacity (s) | overloaded (s) \
         | over objective | refused | pod-seconds | scale events | reversals | peak |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
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
                "| {} | {} | {} | {} | {:.1} | {:.1} % | {:.1} % | {:.0} | {} | {} | {} |\n",
                scenario.scenario,
                system.system,
                first,
                seconds(m.enough_capacity_s),
                m.overloaded_s,
                m.over_objective * 100.0,
                m.refused * 100.0,
                m.pod_seconds,
                m.scale_events,
                m.reversals,
                m.peak_replicas,
            ));
        }
    }
    out
}

/// The comparison as JSON (metrics, every run, and the first seed's series); compact, as the
/// series make it large.
pub fn json(comparison: &Comparison) -> Result<String, serde_json::Error> {
    serde_json::to_string(comparison)
}

/// The system of `scenario` whose name starts with `prefix`.
fn system<'a>(scenario: &'a ScenarioResult, prefix: &str) -> Option<&'a SystemResult> {
    scenario
        .systems
        .iter()
        .find(|s| s.system.starts_with(prefix))
}

/// Issue 5's goals, checked on this comparison's medians: on the 10x step, Surge's first
/// scale-up against the classic chain's (>= 30x sooner) and KPA's (>= 5x sooner), its
/// overloaded seconds against the classic chain's (<= 1/10) at <= 1.2x its pod-seconds; on the
/// noisy curve, no more scale events than KPA. Lines only for what the comparison holds.
pub fn goals(comparison: &Comparison) -> String {
    let mut out = String::new();
    let find = |name: &str| comparison.scenarios.iter().find(|s| s.scenario == name);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    if let Some(step) = find("step-10x")
        && let (Some(surge), Some(classic), Some(kpa)) = (
            system(step, "Surge"),
            system(step, "classic"),
            system(step, "Knative"),
        )
    {
        let (s, c, k) = (&surge.median, &classic.median, &kpa.median);
        if let (Some(sf), Some(cf), Some(kf)) =
            (s.first_scale_up_s, c.first_scale_up_s, k.first_scale_up_s)
        {
            let vs_classic = cf / sf.max(1e-9);
            let vs_kpa = kf / sf.max(1e-9);
            out.push_str(&format!(
                "- step-10x, first scale-up: {sf:.1} s vs classic {cf:.1} s = {vs_classic:.0}x \
                 sooner (goal >= 30x: {}); vs KPA {kf:.1} s = {vs_kpa:.1}x sooner \
                 (goal >= 5x: {})\n",
                verdict(vs_classic >= 30.0),
                verdict(vs_kpa >= 5.0),
            ));
        }
        let overload = s.overloaded_s / c.overloaded_s.max(1e-9);
        let cost = s.pod_seconds / c.pod_seconds.max(1e-9);
        out.push_str(&format!(
            "- step-10x, overloaded: {:.1} s vs classic {:.1} s = {overload:.3} of it (goal <= \
             0.1: {}), at {cost:.2}x its pod-seconds (goal <= 1.2x: {})\n",
            s.overloaded_s,
            c.overloaded_s,
            verdict(overload <= 0.1),
            verdict(cost <= 1.2),
        ));
    }
    if let Some(noisy) = find("diurnal-noisy")
        && let (Some(surge), Some(kpa)) = (system(noisy, "Surge"), system(noisy, "Knative"))
    {
        let (s, k) = (surge.median.scale_events, kpa.median.scale_events);
        out.push_str(&format!(
            "- diurnal-noisy, scale events: Surge {s} vs KPA {k} (goal: no more than KPA: {})\n",
            verdict(s <= k),
        ));
    }
    out
}

/// Writes `compare.md` (the table), `compare.json` and one `<scenario>.svg` per scenario into
/// `dir` (created if missing); returns the paths written.
pub fn write(comparison: &Comparison, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let table = dir.join("compare.md");
    let goals = goals(comparison);
    let mut text = markdown(comparison);
    if !goals.is_empty() {
        text.push_str(&format!("\nGoals (issue 5), on these medians:\n\n{goals}"));
    }
    if !comparison.cross_checks.is_empty() {
        text.push_str(&format!(
            "\nReplayed decisions against the live sandbox:\n\n{}",
            super::live::markdown(&comparison.cross_checks)
        ));
    }
    std::fs::write(&table, text)?;
    written.push(table);
    let data = dir.join("compare.json");
    std::fs::write(&data, json(comparison).map_err(std::io::Error::other)?)?;
    written.push(data);
    for scenario in &comparison.scenarios {
        let chart = dir.join(format!("{}.svg", scenario.scenario));
        std::fs::write(&chart, super::chart::svg(scenario, None))?;
        written.push(chart);
        // The first minute after the event, where sub-second and 15 s loops differ.
        let start = (scenario.event_s - 10.0).max(0.0);
        let end = (start + 70.0).min(scenario.offered_rps.len() as f64);
        if end - start >= 10.0 {
            let chart = dir.join(format!("{}-reaction.svg", scenario.scenario));
            std::fs::write(&chart, super::chart::svg(scenario, Some((start, end))))?;
            written.push(chart);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::super::models::anchors;
    use super::super::scenarios::standard_set;
    use super::*;

    fn two_scenarios() -> Vec<Trace> {
        standard_set()
            .unwrap()
            .into_iter()
            .filter(|t| t.name == "step-10x" || t.name == "spike-20s")
            .collect()
    }

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
        let comparison = run(&two_scenarios(), &[1, 2, 3], &|t, p, s| {
            Ok(anchors(t, p, s))
        })
        .unwrap();
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

    fn result(
        system: &str,
        first: f64,
        overloaded: f64,
        pod_seconds: f64,
        events: u32,
    ) -> SystemResult {
        let metrics = Metrics {
            first_scale_up_s: Some(first),
            enough_capacity_s: Some(first),
            overloaded_s: overloaded,
            over_objective: 0.0,
            refused: 0.0,
            pod_seconds,
            scale_events: events,
            reversals: 0,
            peak_replicas: 9,
            requests: 1.0,
        };
        SystemResult {
            system: system.into(),
            median: metrics,
            first_scale_up_range_s: None,
            runs: vec![metrics],
            series: vec![],
            initial_replicas: 1,
            writes: vec![],
        }
    }

    #[test]
    fn goals_are_checked_against_the_medians() {
        let scenario = |name: &str, systems: Vec<SystemResult>| ScenarioResult {
            scenario: name.into(),
            description: String::new(),
            event_s: 30.0,
            target: ScaleTarget {
                min_replicas: 1,
                max_replicas: 10,
                target_rps_per_pod: 70.0,
            },
            pod: PodModel::default(),
            offered_rps: vec![],
            systems,
        };
        let comparison = Comparison {
            seeds: vec![1],
            warmup_s: WARMUP_S,
            cross_checks: vec![],
            scenarios: vec![
                scenario(
                    "step-10x",
                    vec![
                        result("classic (x)", 15.0, 60.0, 1000.0, 5),
                        result("Knative KPA", 2.0, 10.0, 900.0, 5),
                        result("Surge (x)", 0.5, 5.0, 1300.0, 5),
                    ],
                ),
                scenario(
                    "diurnal-noisy",
                    vec![
                        result("Knative KPA", 1.0, 0.0, 1.0, 4),
                        result("Surge (x)", 1.0, 0.0, 1.0, 6),
                    ],
                ),
            ],
        };
        let text = goals(&comparison);
        assert!(text.contains("30x sooner (goal >= 30x: met)"), "{text}");
        assert!(text.contains("4.0x sooner (goal >= 5x: NOT met)"), "{text}");
        assert!(text.contains("0.083 of it (goal <= 0.1: met)"), "{text}");
        assert!(
            text.contains("1.30x its pod-seconds (goal <= 1.2x: NOT met)"),
            "{text}"
        );
        assert!(
            text.contains("Surge 6 vs KPA 4 (goal: no more than KPA: NOT met)"),
            "{text}"
        );
        assert!(
            goals(&Comparison {
                scenarios: vec![],
                ..comparison
            })
            .is_empty()
        );
    }

    #[test]
    fn initial_replicas_fit_the_first_second_within_bounds() {
        let s = two_scenarios().remove(0);
        let t = ScaleTarget {
            min_replicas: 1,
            max_replicas: 10,
            target_rps_per_pod: 70.0,
        };
        assert_eq!(initial_replicas(&s, &t), 1);
        let mut big = s.clone();
        big.rps[..30].fill(10_000.0);
        assert_eq!(initial_replicas(&big, &t), 10);
    }
}

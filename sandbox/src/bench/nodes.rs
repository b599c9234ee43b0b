//! `surge-sandbox bench-nodes`: the 10x step with the nodes full, side by side, on the real
//! control plane with real Karpenter: (a) Surge without headroom, (b) Surge with headroom,
//! (c) the classic chain (Prometheus, KEDA, the HPA), each `rounds` times, interleaved (a, b,
//! c, a, b, c, ...) so that the machine's drift spreads over all three. Writes
//! `bench-nodes.json` and `bench-nodes.md` (medians, and every run) into the output folder.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::classic::Autoscaler;
use crate::report::Summary;
use crate::run::{KubeMode, RunError, RunOptions, run};
use crate::scenario::Scenario;

/// The scenario every variant plays (without its headroom for (a) and (c)).
const SCENARIO: &str = include_str!("../../scenarios/burst-nodes-headroom.yaml");

/// One variant of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Variant {
    /// Surge, no headroom.
    Surge,
    /// Surge with its headroom (a CapacityBuffer Karpenter keeps room for).
    SurgeHeadroom,
    /// The classic chain, no headroom.
    Classic,
}

impl Variant {
    /// Its row label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Surge => "(a) Surge, no headroom",
            Self::SurgeHeadroom => "(b) Surge with headroom",
            Self::Classic => "(c) classic chain (Prometheus 15 s, KEDA, HPA 15 s)",
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Self::Surge => "surge",
            Self::SurgeHeadroom => "surge-headroom",
            Self::Classic => "classic",
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Which variant.
    pub variant: Variant,
    /// Round (from 0).
    pub round: u32,
    /// The run's summary (nodes included).
    pub summary: Summary,
}

/// The scenario of `variant`: the shipped headroom scenario, its headroom removed for (a) and
/// (c).
pub fn scenario_of(variant: Variant) -> Result<Scenario, RunError> {
    let mut scenario =
        Scenario::parse(SCENARIO).map_err(|e| RunError::Setup(format!("the scenario: {e}")))?;
    if variant != Variant::SurgeHeadroom {
        scenario.scaler.headroom = None;
    }
    scenario.name = format!("burst-nodes ({})", variant.folder());
    Ok(scenario)
}

/// Runs the three variants `rounds` times each, interleaved; files under `out_dir`.
pub async fn bench_nodes(rounds: u32, out_dir: &Path) -> Result<Vec<Measured>, RunError> {
    let mut measured = Vec::new();
    for round in 0..rounds {
        for variant in [Variant::Surge, Variant::SurgeHeadroom, Variant::Classic] {
            let scenario = scenario_of(variant)?;
            let options = RunOptions {
                out_dir: out_dir.join(format!("{}-{round}", variant.folder())),
                live: false,
                kube: KubeMode::Real,
                helm_set: Vec::new(),
                autoscaler: match variant {
                    Variant::Classic => Autoscaler::Classic,
                    _ => Autoscaler::Surge,
                },
            };
            let result = run(&scenario, &options, std::future::pending()).await?;
            if let Some(failure) = &result.failure {
                return Err(RunError::Setup(format!(
                    "{} round {round} failed: {failure}",
                    variant.label()
                )));
            }
            eprintln!(
                "bench-nodes: {} round {round}: enough capacity {} ms",
                variant.label(),
                result
                    .summary
                    .enough_capacity_ms
                    .map_or("-".into(), |v| format!("{v:.0}"))
            );
            measured.push(Measured {
                variant,
                round,
                summary: result.summary,
            });
        }
    }
    let io = |context: &str| {
        let context = context.to_owned();
        move |source| RunError::Io { context, source }
    };
    let json = serde_json::to_string_pretty(&measured)
        .map_err(|e| RunError::Setup(format!("encode the result: {e}")))?;
    std::fs::write(out_dir.join("bench-nodes.json"), json).map_err(io("write bench-nodes.json"))?;
    std::fs::write(out_dir.join("bench-nodes.md"), table(&measured))
        .map_err(io("write bench-nodes.md"))?;
    Ok(measured)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn secs(ms: Option<f64>) -> String {
    ms.map_or("-".into(), |v| format!("{:.1} s", v / 1000.0))
}

/// The medians per variant, then every run, as Markdown.
pub fn table(measured: &[Measured]) -> String {
    let mut out = String::from(
        "| variant | runs | step -> first scale write | step -> enough ready capacity | of which node wait | overloaded s | over SLO or failed | pod-s | added node-s | nodes launched (before step) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for variant in [Variant::Surge, Variant::SurgeHeadroom, Variant::Classic] {
        let runs: Vec<&Summary> = measured
            .iter()
            .filter(|m| m.variant == variant)
            .map(|m| &m.summary)
            .collect();
        if runs.is_empty() {
            continue;
        }
        let m = |f: &dyn Fn(&Summary) -> Option<f64>| {
            median(runs.iter().filter_map(|s| f(s)).collect())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.0} | {:.1} % | {:.0} | {:.0} | {:.0} ({:.0}) |",
            variant.label(),
            runs.len(),
            secs(m(&|s| s.first_scale_patch_ms)),
            secs(m(&|s| s.enough_capacity_ms)),
            secs(m(&|s| s.nodes.as_ref()?.capacity_split.map(|c| c.node_ms))),
            m(&|s| Some(f64::from(s.overloaded_seconds))).unwrap_or(0.0),
            m(&|s| Some(s.over_slo_share * 100.0)).unwrap_or(0.0),
            m(&|s| Some(s.pod_seconds)).unwrap_or(0.0),
            m(&|s| Some(s.nodes.as_ref()?.node_seconds)).unwrap_or(0.0),
            m(&|s| Some(f64::from(s.nodes.as_ref()?.launched))).unwrap_or(0.0),
            m(&|s| Some(f64::from(s.nodes.as_ref()?.launched_before_step))).unwrap_or(0.0),
        );
    }
    out.push_str("\nEvery run (medians above):\n\n| variant | round | enough capacity | decision / node / pod start | first node launched / Ready | overloaded s | over SLO or failed |\n|---|---|---|---|---|---|---|\n");
    for m in measured {
        let s = &m.summary;
        let split = s
            .nodes
            .as_ref()
            .and_then(|n| n.capacity_split)
            .map_or("-".into(), |c| {
                format!(
                    "{} / {} / {}",
                    secs(Some(c.decision_ms)),
                    secs(Some(c.node_ms)),
                    secs(Some(c.pod_start_ms))
                )
            });
        let nodes = s.nodes.as_ref().map_or("-".into(), |n| {
            format!(
                "{} / {}",
                secs(n.first_node_launched_ms),
                secs(n.first_node_ready_ms)
            )
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {split} | {nodes} | {} | {:.1} % |",
            m.variant.label(),
            m.round,
            secs(s.enough_capacity_ms),
            s.overloaded_seconds,
            s.over_slo_share * 100.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_headroom_variant_keeps_the_headroom() {
        assert!(
            scenario_of(Variant::SurgeHeadroom)
                .unwrap()
                .scaler
                .headroom
                .is_some()
        );
        for variant in [Variant::Surge, Variant::Classic] {
            let scenario = scenario_of(variant).unwrap();
            assert!(scenario.scaler.headroom.is_none());
            assert!(scenario.nodes.is_some());
        }
    }

    #[test]
    fn medians_skip_missing_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
    }
}

//! Scenario files: the load to play, the pods' capacity and start-up, the SurgeScaler to apply
//! and the faults to inject. YAML, validated while it is read, so every error names the field
//! and the line (serde_yaml reports the path and position of the value that failed).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::ingress::{Hold, Via};

mod check;
mod nodes;

pub use nodes::{Headroom, Nodes};

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid scenario; the message names the field and line.
    #[error("invalid scenario {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// serde_yaml's message: `field.path: what is wrong at line L column C`.
        message: String,
    },
}

/// A number of requests per second, at least 0 and at most 5000 (what one machine's sandbox
/// can offer without measuring itself).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Rps(f64);

impl Rps {
    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl From<Rps> for f64 {
    fn from(r: Rps) -> f64 {
        r.0
    }
}

impl TryFrom<f64> for Rps {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v.is_finite() && (0.0..=5000.0).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!(
                "requests per second must be within 0..=5000, got {v}"
            ))
        }
    }
}

/// A duration in whole seconds, 1..=3600.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Seconds(u64);

impl Seconds {
    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<Seconds> for u64 {
    fn from(s: Seconds) -> u64 {
        s.0
    }
}

impl TryFrom<u64> for Seconds {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        if (1..=3600).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("seconds must be within 1..=3600, got {v}"))
        }
    }
}

/// One phase of the load, played in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Phase {
    /// A constant rate.
    Steady {
        /// Requests per second.
        rps: Rps,
        /// How long.
        seconds: Seconds,
    },
    /// A linear change of rate.
    Ramp {
        /// Rate at the start.
        from: Rps,
        /// Rate at the end.
        to: Rps,
        /// How long.
        seconds: Seconds,
    },
    /// `base`, then `peak` for `peak_seconds` in the middle, then `base` again.
    Spike {
        /// Rate around the peak.
        base: Rps,
        /// Rate during the peak.
        peak: Rps,
        /// Length of the whole phase.
        seconds: Seconds,
        /// Length of the peak (less than `seconds`).
        peak_seconds: Seconds,
    },
    /// Replay of a per-second trace: one rate per second.
    Trace {
        /// The rates, one per second (at most 3600).
        rps: Vec<Rps>,
    },
    /// Replay of a per-second trace from a file: one rate per line (or separated by commas or
    /// spaces; `#` starts a comment), path relative to the scenario file. Read into a `trace`
    /// when the scenario is read.
    TraceFile {
        /// The file.
        path: PathBuf,
    },
}

impl Phase {
    /// Length in seconds.
    pub fn seconds(&self) -> f64 {
        match self {
            Phase::Steady { seconds, .. }
            | Phase::Ramp { seconds, .. }
            | Phase::Spike { seconds, .. } => seconds.get() as f64,
            Phase::Trace { rps } => rps.len() as f64,
            Phase::TraceFile { .. } => 0.0,
        }
    }

    /// The same phase with every rate multiplied by `factor` (`make compare-real` plays the
    /// standard set at a load this machine can carry); fails where a rate leaves `Rps`'s range.
    pub fn scaled(&self, factor: f64) -> Result<Phase, String> {
        let by = |r: &Rps| Rps::try_from(r.get() * factor);
        Ok(match self {
            Phase::Steady { rps, seconds } => Phase::Steady {
                rps: by(rps)?,
                seconds: *seconds,
            },
            Phase::Ramp { from, to, seconds } => Phase::Ramp {
                from: by(from)?,
                to: by(to)?,
                seconds: *seconds,
            },
            Phase::Spike {
                base,
                peak,
                seconds,
                peak_seconds,
            } => Phase::Spike {
                base: by(base)?,
                peak: by(peak)?,
                seconds: *seconds,
                peak_seconds: *peak_seconds,
            },
            Phase::Trace { rps } => Phase::Trace {
                rps: rps.iter().map(by).collect::<Result<_, _>>()?,
            },
            Phase::TraceFile { path } => Phase::TraceFile { path: path.clone() },
        })
    }

    /// The rate `t` seconds into the phase.
    pub fn rate_at(&self, t: f64) -> f64 {
        match self {
            Phase::Steady { rps, .. } => rps.get(),
            Phase::Ramp { from, to, seconds } => {
                let f = (t / seconds.get() as f64).clamp(0.0, 1.0);
                from.get() + (to.get() - from.get()) * f
            }
            Phase::Spike {
                base,
                peak,
                seconds,
                peak_seconds,
            } => {
                let start = (seconds.get() - peak_seconds.get()) as f64 / 2.0;
                if t >= start && t < start + peak_seconds.get() as f64 {
                    peak.get()
                } else {
                    base.get()
                }
            }
            Phase::Trace { rps } => rps
                .get(t.max(0.0) as usize)
                .or(rps.last())
                .map_or(0.0, |r| r.get()),
            Phase::TraceFile { .. } => 0.0,
        }
    }
}

/// The pods' model: each replica is an Envoy sidecar in front of an app with finite capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pods {
    /// Time from a pod's creation until it is ready (image pull, app start), in milliseconds.
    pub startup_delay_ms: u64,
    /// Requests the app serves at once.
    pub concurrency: u32,
    /// Time the app spends per request, in milliseconds.
    pub service_time_ms: u64,
    /// Requests waiting for a slot beyond which the app answers 503.
    pub queue: u32,
    /// Pods created after this many (counting the initial ones) never become ready, as a crash
    /// loop would; `null` means every pod starts.
    pub fail_after: Option<u32>,
    /// Envoy worker threads per pod (at least 2 exercises the filter's multi-VM path).
    pub envoy_concurrency: u32,
    /// The app container's CPU request (a Kubernetes quantity; the sidecar asks 100m more):
    /// what the scheduler and Karpenter fit onto nodes. Real control plane only.
    pub cpu: String,
}

impl Default for Pods {
    fn default() -> Self {
        Self {
            startup_delay_ms: 2000,
            concurrency: 4,
            service_time_ms: 40,
            queue: 200,
            fail_after: None,
            envoy_concurrency: 2,
            cpu: "100m".into(),
        }
    }
}

impl Pods {
    /// Requests per second one ready pod serves at most.
    pub fn capacity_rps(&self) -> f64 {
        f64::from(self.concurrency) * 1000.0 / self.service_time_ms as f64
    }
}

/// How the scaler is reached by the proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Proxies report to the scaler.
    #[default]
    Reachable,
    /// The scaler's address refuses connections.
    Refused,
    /// The scaler's address accepts connections and never answers.
    Hanging,
}

/// The SurgeScaler applied for the run, and how the scaler runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scaler {
    /// `spec.minReplicas`.
    pub min_replicas: u32,
    /// `spec.maxReplicas`.
    pub max_replicas: u32,
    /// `spec.metric.type`: `rps` or `concurrency`.
    pub metric: String,
    /// `spec.metric.target` per replica.
    pub target: f64,
    /// Whether the proxies can reach the scaler.
    pub reachability: Reachability,
    /// `spec.windows.stableSeconds` (6..=3600); the CRD's default (60) when absent.
    pub stable_window_s: Option<u32>,
    /// `spec.behavior.scaleDown.stabilizationWindowSeconds`; the CRD's default (300) when absent.
    pub scale_down_stabilization_s: Option<u32>,
    /// With `min_replicas: 0`: seconds of reported idleness before the app goes to zero
    /// (`spec.scaleToZero.idleSeconds`).
    pub idle_s: Option<u32>,
    /// Scaler replicas, sharing the targets through Leases (the chart's `replicaCount`, 1..=10;
    /// more than one needs the real control plane). Absent: the chart's default (2) on the
    /// real control plane, one process on the embedded API.
    pub replicas: Option<u32>,
    /// Node headroom for the app (`spec.headroom`): spare pods of its shape that the cluster
    /// autoscaler keeps room for. Needs `nodes:` (Karpenter's CapacityBuffer).
    pub headroom: Option<Headroom>,
}

impl Default for Scaler {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 10,
            metric: "rps".into(),
            target: 70.0,
            reachability: Reachability::Reachable,
            stable_window_s: None,
            scale_down_stabilization_s: None,
            idle_s: None,
            replicas: None,
            headroom: None,
        }
    }
}

/// Where the load enters, and how the proxy there holds requests to the app at zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    /// `sidecars` (straight to the ready pods, the default), `gateway` or `client`.
    pub via: Via,
    /// The filter's `hold` settings on the gateway or the caller's sidecar.
    pub hold: Hold,
}

/// A fault injected during the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Kill the scaler (SIGKILL) `at_s` seconds into the load and start it again
    /// `restart_after_s` later.
    KillScaler {
        /// When, in seconds from the start of the load.
        at_s: f64,
        /// Downtime in seconds.
        restart_after_s: f64,
    },
    /// SIGKILL the scaler replica that owns the app's SurgeScaler (holds its shard Lease)
    /// `at_s` seconds into the load; the node starts it again `restart_after_s` later. The
    /// result records which replica was killed and `takeover_ms`, from the kill until another
    /// replica held the Lease. Real control plane, two replicas or more.
    KillScalerOwner {
        /// When, in seconds from the start of the load.
        at_s: f64,
        /// Downtime in seconds.
        restart_after_s: f64,
    },
    /// Have the kernel drop every packet the proxies send towards the scaler (nftables on its
    /// port) from `at_s` seconds into the load for `for_s` seconds: reports lost in flight,
    /// connections hanging. Needs root and `nft`.
    DropReports {
        /// When, in seconds from the start of the load.
        at_s: f64,
        /// How long, in seconds.
        for_s: f64,
    },
}

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in the report.
    pub name: String,
    /// Latency objective in milliseconds (the summary counts requests over it).
    #[serde(default = "default_slo_ms")]
    pub slo_ms: u64,
    /// Seconds of load played before `load` starts, so the scaler sees steady reports first.
    #[serde(default)]
    pub warmup_s: u64,
    /// Seconds the run continues after the last phase (watching scale-down, draining).
    #[serde(default)]
    pub cooldown_s: u64,
    /// The pods' model.
    #[serde(default)]
    pub pods: Pods,
    /// The SurgeScaler and the scaler's reachability.
    #[serde(default)]
    pub scaler: Scaler,
    /// Where the load enters (straight to the pods, or through a gateway or a caller's sidecar
    /// that can hold requests while the app is at zero).
    #[serde(default)]
    pub traffic: Traffic,
    /// The load, phase by phase (`- steady: {...}`: each phase a one-key map).
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub load: Vec<Phase>,
    /// Faults to inject.
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub faults: Vec<Fault>,
    /// The first node's size and the Karpenter pool that adds nodes (real control plane);
    /// absent: one node large enough for every pod, no Karpenter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Nodes>,
}

fn default_slo_ms() -> u64 {
    250
}

/// The default burst scenario (a 10x step), as shipped in `sandbox/scenarios/burst.yaml`.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/burst.yaml");

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_in(&text, base).map_err(|message| ScenarioError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and validates scenario YAML; the error names the field and the line. Trace files
    /// are read relative to the current directory.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_in(text, Path::new("."))
    }

    /// Like [`Scenario::parse`], reading trace files relative to `base`.
    pub fn parse_in(text: &str, base: &Path) -> Result<Self, String> {
        let mut scenario: Scenario = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (i, phase) in scenario.load.iter_mut().enumerate() {
            if let Phase::TraceFile { path } = phase {
                let full = base.join(&*path);
                let rps = read_trace(&full).map_err(|reason| {
                    format!(
                        "load[{i}].trace_file.path: {}: {reason}{}",
                        full.display(),
                        line_of(text, "path")
                    )
                })?;
                *phase = Phase::Trace { rps };
            }
        }
        scenario
            .check()
            .map_err(|(field, reason)| format!("{field}: {reason}{}", line_of(text, &field)))?;
        Ok(scenario)
    }

    /// Seconds of load after the warm-up.
    pub fn load_seconds(&self) -> f64 {
        self.load.iter().map(Phase::seconds).sum()
    }

    /// The offered rate `t` seconds after the warm-up began (the warm-up plays the first
    /// phase's starting rate).
    pub fn rate_at(&self, t: f64) -> f64 {
        let mut t = t - self.warmup_s as f64;
        if t < 0.0 {
            return self.load.first().map_or(0.0, |p| p.rate_at(0.0));
        }
        for phase in &self.load {
            if t < phase.seconds() {
                return phase.rate_at(t);
            }
            t -= phase.seconds();
        }
        0.0
    }

    /// Whole run length in seconds: warm-up, load, cool-down.
    pub fn total_seconds(&self) -> f64 {
        self.warmup_s as f64 + self.load_seconds() + self.cooldown_s as f64
    }

    /// Where the load comes back after an idle phase (a phase offering nothing throughout):
    /// seconds from the run's start, one per return, in order. Each is a cold start when the
    /// app reached zero meanwhile.
    pub fn returns_from_idle(&self) -> Vec<f64> {
        let mut out = Vec::new();
        let mut at = self.warmup_s as f64;
        let mut idle_before = false;
        for phase in &self.load {
            let length = phase.seconds();
            if length <= 0.0 {
                continue;
            }
            let idle = (0..=20).all(|i| phase.rate_at(length * f64::from(i) / 20.0) == 0.0);
            if idle_before && !idle {
                out.push(at);
            }
            idle_before = idle;
            at += length;
        }
        out
    }

    /// The load step the summary measures from: the first instant (seconds from the run's
    /// start, sampled every 10 ms) where the rate at least doubles against the rate 1 s before.
    pub fn step_at(&self) -> Option<f64> {
        let end = self.warmup_s as f64 + self.load_seconds();
        let mut t = 1.0;
        while t < end {
            let before = self.rate_at(t - 1.0);
            let now = self.rate_at(t);
            if now >= 2.0 * before.max(1.0) {
                // Walk back to where the rise began within the last second.
                let mut s = t;
                while s - 0.01 > t - 1.0 && self.rate_at(s - 0.01) >= 2.0 * before.max(1.0) {
                    s -= 0.01;
                }
                return Some((s * 100.0).round() / 100.0);
            }
            t += 0.01;
        }
        None
    }
}

/// Rates from a trace file; the error names the file's line.
fn read_trace(path: &Path) -> Result<Vec<Rps>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut rates = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for field in line
            .split([',', ' ', '\t'])
            .filter(|f| !f.trim().is_empty())
        {
            let value: f64 = field
                .trim()
                .parse()
                .map_err(|_| format!("line {}: {field:?} is not a number", n + 1))?;
            rates.push(Rps::try_from(value).map_err(|e| format!("line {}: {e}", n + 1))?);
        }
    }
    Ok(rates)
}

/// ` (line N)` for the first line that mentions the last key of `field`, to point at it.
fn line_of(text: &str, field: &str) -> String {
    let key = field
        .rsplit('.')
        .next()
        .unwrap_or(field)
        .split('[')
        .next()
        .unwrap_or(field);
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.starts_with(&format!("{key}:"))
                || l.contains(&format!(" {key}:"))
                || l.contains(&format!("{{{key}:"))
        })
        .map(|n| format!(" at line {}", n + 1))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                Scenario::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                loaded += 1;
            }
        }
        assert!(loaded >= 6, "only {loaded} scenarios in {}", dir.display());
    }

    #[test]
    fn default_scenario_is_valid_and_has_a_tenfold_step() {
        let s = Scenario::parse(DEFAULT_SCENARIO).unwrap();
        let step = s.step_at().unwrap();
        let before = s.rate_at(step - 0.5);
        let after = s.rate_at(step + 0.5);
        assert!((after / before - 10.0).abs() < 1e-9, "{before} -> {after}");
    }

    #[test]
    fn the_load_returns_after_each_idle_phase_and_only_then() {
        let s = Scenario::parse(
            "name: x\nwarmup_s: 2\nload:\n  - steady: {rps: 10, seconds: 3}\n  - steady: {rps: 0, seconds: 20}\n  - ramp: {from: 0, to: 30, seconds: 4}\n  - steady: {rps: 0, seconds: 20}\n  - steady: {rps: 5, seconds: 1}\n  - steady: {rps: 6, seconds: 1}\n",
        )
        .unwrap();
        // A ramp from 0 is load; a busy phase after a busy phase is not a return.
        assert_eq!(s.returns_from_idle(), vec![25.0, 49.0]);
        let busy = Scenario::parse(DEFAULT_SCENARIO).unwrap();
        assert!(busy.returns_from_idle().is_empty());
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let err = Scenario::parse("name: x\nload:\n  - steady: {rps: 10, seconds: 5}\n  - steady: {rpz: 10, seconds: 5}\n")
            .unwrap_err();
        assert!(err.contains("rpz") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn out_of_range_value_is_named_with_its_line() {
        let err = Scenario::parse("name: x\nload:\n  - steady:\n      rps: -3\n      seconds: 5\n")
            .unwrap_err();
        assert!(
            err.contains("load[0].steady") && err.contains("-3") && err.contains("line 4"),
            "{err}"
        );
    }

    #[test]
    fn cross_field_rule_names_the_field_and_line() {
        let text = "name: x\nscaler:\n  min_replicas: 5\n  max_replicas: 3\nload:\n  - steady: {rps: 10, seconds: 5}\n";
        let err = Scenario::parse(text).unwrap_err();
        assert!(
            err.contains("scaler.min_replicas") && err.contains("line 3"),
            "{err}"
        );
    }

    #[test]
    fn nodes_and_headroom_parse_and_their_rules_name_the_field() {
        let load = "load:\n  - steady: {rps: 10, seconds: 5}\n";
        let parsed = Scenario::parse(&format!(
            "name: x\npods: {{cpu: 900m}}\nscaler:\n  headroom: {{min_replicas: 2}}\n\
             nodes: {{first_node_cpu: '2', boot_s: 20}}\n{load}"
        ))
        .unwrap();
        let nodes = parsed.nodes.unwrap();
        assert_eq!((nodes.first_node_cpu.as_str(), nodes.boot_s), ("2", 20));
        assert_eq!(nodes.pool().boot_delay, std::time::Duration::from_secs(20));
        assert_eq!(nodes.pool().instance_types, ["c-4x-amd64-linux"]);
        let headroom = parsed.scaler.headroom.unwrap();
        assert_eq!((headroom.min_replicas, headroom.burst_window_s), (2, 3600));
        assert_eq!(parsed.pods.cpu, "900m");

        for (text, field) in [
            (
                "scaler:\n  headroom: {min_replicas: 1}\n",
                "scaler.headroom",
            ),
            ("pods: {cpu: lots}\n", "pods.cpu"),
            ("pods: {cpu: 0m}\n", "pods.cpu"),
            ("nodes: {boot_s: 900}\n", "nodes.boot_s"),
            ("nodes: {first_node_cpu: 2Gi}\n", "nodes.first_node_cpu"),
            (
                "nodes: {}\nscaler:\n  headroom: {burst_window_s: 5}\n",
                "scaler.headroom.burst_window_s",
            ),
        ] {
            let err = Scenario::parse(&format!("name: x\n{text}{load}")).unwrap_err();
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn a_fault_outside_the_load_or_of_negative_length_names_its_field() {
        let load = "load:\n  - steady: {rps: 10, seconds: 5}\n";
        let parsed = Scenario::parse(&format!(
            "name: x\n{load}faults:\n  - drop_reports: {{at_s: 1, for_s: 2}}\n"
        ))
        .unwrap();
        assert_eq!(
            parsed.faults,
            [Fault::DropReports {
                at_s: 1.0,
                for_s: 2.0
            }]
        );
        for (fault, field) in [
            (
                "drop_reports: {at_s: 9, for_s: 2}",
                "faults[0].drop_reports.at_s",
            ),
            (
                "drop_reports: {at_s: 1, for_s: -2}",
                "faults[0].drop_reports.for_s",
            ),
            (
                "kill_scaler: {at_s: 1, restart_after_s: -1}",
                "faults[0].kill_scaler.restart_after_s",
            ),
            (
                "kill_scaler_owner: {at_s: 7, restart_after_s: 5}",
                "faults[0].kill_scaler_owner.at_s",
            ),
        ] {
            let err =
                Scenario::parse(&format!("name: x\n{load}faults:\n  - {fault}\n")).unwrap_err();
            assert!(err.contains(field), "{fault}: {err}");
        }
    }

    #[test]
    fn replicas_are_checked_and_killing_the_owner_needs_a_second_one() {
        let load = "load:\n  - steady: {rps: 10, seconds: 5}\n";
        let kill = "faults:\n  - kill_scaler_owner: {at_s: 1, restart_after_s: 5}\n";
        let parsed =
            Scenario::parse(&format!("name: x\nscaler: {{replicas: 2}}\n{load}{kill}")).unwrap();
        assert_eq!(parsed.scaler.replicas, Some(2));
        assert_eq!(
            parsed.faults,
            [Fault::KillScalerOwner {
                at_s: 1.0,
                restart_after_s: 5.0
            }]
        );
        // Absent: the chart's default count.
        assert!(
            Scenario::parse(&format!("name: x\n{load}{kill}"))
                .unwrap()
                .scaler
                .replicas
                .is_none()
        );
        let err = Scenario::parse(&format!("name: x\nscaler: {{replicas: 1}}\n{load}{kill}"))
            .unwrap_err();
        assert!(
            err.contains("faults[0].kill_scaler_owner") && err.contains("replicas of 2"),
            "{err}"
        );
        for n in [0, 11] {
            let err = Scenario::parse(&format!("name: x\nscaler: {{replicas: {n}}}\n{load}"))
                .unwrap_err();
            assert!(
                err.contains("scaler.replicas") && err.contains("line 2"),
                "{err}"
            );
        }
    }

    #[test]
    fn trace_file_is_read_relative_to_the_scenario_and_checked() {
        let dir = std::env::temp_dir().join(format!("surge-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.csv"), "# rps per second\n10\n20, 30\n").unwrap();
        let text = "name: x\nload:\n  - trace_file: {path: t.csv}\n";
        let s = Scenario::parse_in(text, &dir).unwrap();
        assert_eq!(s.load_seconds(), 3.0);
        assert_eq!(s.rate_at(2.5), 30.0);
        std::fs::write(dir.join("t.csv"), "10\nlots\n").unwrap();
        let err = Scenario::parse_in(text, &dir).unwrap_err();
        assert!(
            err.contains("load[0].trace_file.path") && err.contains("line 2"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ramp_spike_and_trace_rates() {
        let text = "name: x\nload:\n  - ramp: {from: 0, to: 100, seconds: 10}\n  - spike: {base: 10, peak: 50, seconds: 10, peak_seconds: 2}\n  - trace: {rps: [1, 2, 3]}\n";
        let s = Scenario::parse(text).unwrap();
        assert!((s.rate_at(5.0) - 50.0).abs() < 1e-9);
        assert_eq!(s.rate_at(10.0 + 3.0), 10.0);
        assert_eq!(s.rate_at(10.0 + 4.5), 50.0);
        assert_eq!(s.rate_at(21.5), 2.0);
        assert_eq!(s.rate_at(30.0), 0.0);
    }
}

//! The `SurgeScaler` custom resource (`surge.dev/v1alpha1`), defined in Rust; the CRD YAML under
//! `deploy/crds/surgescaler.yaml` is generated from these types by `surge-scaler crd`.
//!
//! Field names follow the HPA (`scaleTargetRef`, `minReplicas`, `behavior.scaleUp.policies`, ...)
//! so that users of the HPA and KEDA read a SurgeScaler without a manual.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a SurgeScaler: which workload to scale, on which metric, within which bounds.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "surge.dev",
    version = "v1alpha1",
    kind = "SurgeScaler",
    plural = "surgescalers",
    shortname = "surge",
    namespaced,
    status = "SurgeScalerStatus",
    doc = "Scales a Deployment or StatefulSet on request rate or concurrency pushed by Istio proxies.",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.scaleTargetRef.name"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minReplicas"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxReplicas"}"#,
    printcolumn = r#"{"name":"Current","type":"integer","jsonPath":".status.currentReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Metric","type":"string","jsonPath":".status.observedMetric.summary"}"#,
    printcolumn = r#"{"name":"Panic","type":"boolean","jsonPath":".status.panic"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".status.owner"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
// Scale to zero is two fields that only make sense together: each rule names the other, so that
// `kubectl apply` says what is missing rather than the scaler ignoring half of it.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.minReplicas != 0 || has(self.scaleToZero)",
        "message": "minReplicas 0 needs spec.scaleToZero (the idle period, and the Service that \
                    names the destination the proxies hold requests for)"
    },
    {
        "rule": "!has(self.scaleToZero) || self.minReplicas == 0",
        "message": "spec.scaleToZero needs minReplicas: 0"
    }
]))]
pub struct SurgeScalerSpec {
    /// The workload whose `scale` subresource this SurgeScaler writes.
    pub scale_target_ref: ScaleTargetRef,
    /// Lowest replica count Surge sets (default 1). 0 allows scaling to zero, and then needs
    /// `scaleToZero`: the target goes to zero only after its sources reported no requests for
    /// the idle period, and comes back when a caller's proxy holds a request for it.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Highest replica count Surge sets.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// What is measured and how much of it one replica should carry.
    pub metric: MetricSpec,
    /// Route names (Envoy's `xds.route_name`, else the virtual host) to count; empty counts all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Which proxies' reports count for this target.
    #[serde(default)]
    pub sources: Sources,
    /// Lengths of the averaging windows.
    #[serde(default)]
    pub windows: Windows,
    /// Panic starts when the panic-window (or burst) estimate asks for this many times the ready
    /// replicas (default 2.0, as Knative's 200 %).
    #[serde(default = "default_panic_threshold")]
    #[schemars(range(min = 1.0))]
    pub panic_threshold: f64,
    /// HPA-style scale-up and scale-down rules.
    #[serde(default)]
    pub behavior: Behavior,
    /// Relative change of the metric-per-replica ratio below which the scale is kept
    /// (default 0.1, as the HPA).
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub tolerance: f64,
    /// Outside panic, a burst estimate scales the target at once only when it asks for more
    /// than `1 + burstTolerance` times the current replicas' worth of the target (default 0.2);
    /// a smaller rise is left to the stable window, which follows it if it lasts.
    #[serde(default = "default_burst_tolerance")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub burst_tolerance: f64,
    /// A proxy that has not reported for this long is dropped from the target's sources; when
    /// every source is gone the scale is held (condition MetricsStale) instead of read as zero.
    #[serde(default = "default_stale_after_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub stale_after_seconds: u32,
    /// Scale to zero (only with `minReplicas: 0`): when to go to zero, and the Service whose
    /// callers' proxies hold requests while the target is cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero: Option<ScaleToZero>,
    /// Spare node capacity for the target's next burst, kept provisioned through a
    /// CapacityBuffer (`autoscaling.x-k8s.io`, served by Karpenter 1.14+ with its
    /// `CapacityBuffer` feature gate, or the Cluster Autoscaler) named after the SurgeScaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<Headroom>,
}

/// Node headroom sized from the bursts Surge has seen: room for as many spare pods (of the
/// target's own shape) as the largest burst Surge scaled it for within `burstWindowSeconds`
/// (the most its replicas rose within one minute), at least `minReplicas` and at most
/// `maxReplicas`, and never more than the target may still grow (`spec.maxReplicas` minus the
/// current replicas). The cluster autoscaler keeps that room on
/// nodes that are up; a burst's new pods start there at once, and the autoscaler brings nodes
/// for the room behind them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Headroom {
    /// How far back the largest burst is remembered (default 3600, 60 to 604800).
    #[serde(default = "default_burst_window_seconds")]
    #[schemars(range(min = 60, max = 604_800))]
    pub burst_window_seconds: u32,
    /// Spare pods kept even before any burst was seen (default 1).
    #[serde(default = "default_headroom_min")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// The most spare pods kept (no limit but the target's own when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_replicas: Option<i32>,
    /// For clusters without the CapacityBuffer API: a Deployment of placeholder pods in the
    /// SurgeScaler's namespace (shaped like the target's pods, of a negative priority, so that
    /// any real pod preempts them) whose replicas Surge sets to the spare pods, through its
    /// scale subresource, instead of writing a CapacityBuffer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub placeholders: Option<String>,
}

/// Scale to zero and back. The target goes to zero once its sources have reported no requests
/// (none completed, in flight or arriving) for `idleSeconds`; missing or stale reports never
/// count as idle. While it is at zero, or scaled up without a ready endpoint yet, the scaler
/// lists the Service's destination (`outbound|<port>||<service>.<namespace>.svc.cluster.local`)
/// as cold to the proxies, whose filters (gateway, client sidecars) hold requests for it; the
/// first held request scales it up at once.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleToZero {
    /// Seconds of reported idleness before the target goes to zero (default 300, 10 to 86400).
    #[serde(default = "default_idle_seconds")]
    #[schemars(range(min = 10, max = 86400))]
    pub idle_seconds: u32,
    /// The Service in front of the target, in the SurgeScaler's namespace: it names the
    /// destination the proxies hold requests for, and its EndpointSlices say when the target
    /// has a ready endpoint.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// The Service port the callers use; every port of the Service when omitted (then the
    /// scaler reads the Service to learn them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

/// The workload to scale, as in the HPA's `scaleTargetRef`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// API version of the target (default `apps/v1`).
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Kind of the target.
    pub kind: TargetKind,
    /// Name of the target in the SurgeScaler's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The kinds of workload Surge scales (both through the `scale` subresource).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
pub enum TargetKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
}

impl TargetKind {
    /// The resource's plural, as in `/apis/apps/v1/namespaces/{ns}/{plural}/{name}/scale`.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Deployment => "deployments",
            Self::StatefulSet => "statefulsets",
        }
    }
}

/// The metric a SurgeScaler scales on.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    /// `rps` (completed requests per second) or `concurrency` (requests in flight).
    #[serde(rename = "type")]
    pub type_: MetricType,
    /// The value one replica should carry, e.g. 100 (rps) or 10 (concurrent requests).
    #[schemars(range(min = 0.001))]
    pub target: f64,
}

/// What is measured.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    /// Completed requests per second, summed over the target's sources.
    Rps,
    /// Average requests in flight (time-weighted, from the reported durations), summed.
    Concurrency,
}

/// Which reports feed a target.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sources {
    /// Count the reports of the target's own sidecars (default true): role `sidecar`, same
    /// namespace, and an owner (or workload name) naming the target.
    #[serde(default = "default_true")]
    pub sidecars: bool,
    /// Also count ingress-gateway reports for the target's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySource>,
    /// Also count the reports of the ambient-mode waypoint that serves the target's Service
    /// (the one its `istio.io/use-waypoint` label, or its namespace's, names; any other
    /// waypoint's routes for it are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointSource>,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            sidecars: true,
            gateway: None,
            waypoint: None,
        }
    }
}

/// Waypoint reports whose route cluster is
/// `inbound-vip|<port>|http|<service>.<namespace>.svc.cluster.local`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaypointSource {
    /// The Service in front of the target, in the SurgeScaler's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// The Service port; any port when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

/// Gateway reports whose route cluster is `outbound|<port>||<service>.<namespace>.svc.cluster.local`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySource {
    /// The Service in front of the target, in the SurgeScaler's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// The Service port; any port when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

/// Averaging windows, Knative-style.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Windows {
    /// Stable window in seconds (default 60): the average that drives normal scaling, and how
    /// long the load must stay below the panic threshold before panic ends.
    #[serde(default = "default_stable_seconds")]
    #[schemars(range(min = 6, max = 600))]
    pub stable_seconds: u32,
    /// Panic window in seconds (default 6).
    #[serde(default = "default_panic_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub panic_seconds: u32,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            stable_seconds: default_stable_seconds(),
            panic_seconds: default_panic_seconds(),
        }
    }
}

/// HPA-style behavior (`autoscaling/v2` `HorizontalPodAutoscalerBehavior`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    /// Rules for scaling up; default: no stabilization and no rate limit (a surge is acted on
    /// at once; the HPA's default of max(100 %, 4 pods) per 15 s would delay a 10x step).
    #[serde(default = "ScalingRules::default_up")]
    pub scale_up: ScalingRules,
    /// Rules for scaling down; default as the HPA: 300 s stabilization, 100 % per 15 s.
    #[serde(default = "ScalingRules::default_down")]
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            scale_up: ScalingRules::default_up(),
            scale_down: ScalingRules::default_down(),
        }
    }
}

/// Stabilization and rate limits for one direction.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Recommendations over this many past seconds are considered: the lowest for scale-up,
    /// the highest for scale-down.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: u32,
    /// How the policies combine: `Max` (the policy allowing the largest change, default),
    /// `Min`, or `Disabled` (never scale in this direction).
    #[serde(default)]
    pub select_policy: SelectPolicy,
    /// Rate limits; none means unlimited.
    #[serde(default)]
    pub policies: Vec<ScalingPolicy>,
}

impl ScalingRules {
    /// Surge's scale-up default: no stabilization, no rate limit.
    pub fn default_up() -> Self {
        Self {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: Vec::new(),
        }
    }

    /// The HPA's scale-down default: 300 s stabilization, 100 % per 15 s.
    pub fn default_down() -> Self {
        Self {
            stabilization_window_seconds: 300,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy {
                type_: PolicyType::Percent,
                value: 100,
                period_seconds: 15,
            }],
        }
    }
}

/// How several policies combine.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum SelectPolicy {
    /// The policy that allows the largest change.
    #[default]
    Max,
    /// The policy that allows the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One rate limit: at most `value` pods or percent per `periodSeconds`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// `Pods` or `Percent`.
    #[serde(rename = "type")]
    pub type_: PolicyType,
    /// Pods, or percent of the replicas at the start of the period.
    #[schemars(range(min = 1))]
    pub value: i32,
    /// Length of the period.
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: u32,
}

/// The unit of a policy's value.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum PolicyType {
    /// A number of pods.
    Pods,
    /// A percentage of the replicas at the start of the period.
    Percent,
}

/// Observed state, written by the scaler through the status subresource.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SurgeScalerStatus {
    /// Replicas of the target's scale when last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    /// Replicas Surge last decided on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// The metric as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_metric: Option<ObservedMetric>,
    /// True while in panic mode (no scale-down).
    #[serde(default)]
    pub panic: bool,
    /// When Surge last changed the target's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Ready, AbleToScale, Active, ScalingLimited, MetricsStale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Scale to zero: whether the target is cold, and when it last went to zero and back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero: Option<ScaleToZeroStatus>,
    /// The `metadata.generation` this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Headroom: the spare pods asked of the cluster autoscaler, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<HeadroomStatus>,
    /// The scaler replica (pod) that decides and writes for this target, when several share
    /// the targets; absent when one replica runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The scale-to-zero side of the status.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleToZeroStatus {
    /// True while the proxies are told the destination is cold (at zero replicas, or scaled up
    /// without a ready endpoint yet): they hold its requests.
    pub cold: bool,
    /// When Surge last scaled the target to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_to_zero_time: Option<Time>,
    /// When Surge last scaled the target up from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activation_time: Option<Time>,
}

/// The headroom side of the status.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadroomStatus {
    /// Spare pods last asked for.
    pub replicas: i32,
    /// The CapacityBuffer that asks for them (in the SurgeScaler's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_buffer: Option<String>,
    /// The placeholder Deployment scaled to them instead (`spec.headroom.placeholders`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholders: Option<String>,
    /// Why the last write of the CapacityBuffer failed (absent once one succeeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The metric values behind the last decision.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedMetric {
    /// Stable-window average, summed over the target's sources.
    pub stable: f64,
    /// Panic-window average, summed over the target's sources.
    pub panic: f64,
    /// Proxies currently reporting for the target.
    pub sources: u32,
    /// Short human form for `kubectl get`, e.g. `412.5rps/100`.
    pub summary: String,
}

/// Condition types written to `status.conditions`.
pub mod condition {
    /// The target exists and no other autoscaler drives it (reads and writes of its scale:
    /// `ABLE_TO_SCALE`).
    pub const READY: &str = "Ready";
    /// The target's scale can be read and written (False: `FailedGetScale`,
    /// `FailedUpdateScale`, with the API's message), as the HPA's condition of that name.
    pub const ABLE_TO_SCALE: &str = "AbleToScale";
    /// Surge is actively computing a scale from fresh metrics (False with `ScaledToZero` while
    /// the target is at zero).
    pub const ACTIVE: &str = "Active";
    /// The desired scale was clamped to `minReplicas`/`maxReplicas` or a rate policy.
    pub const SCALING_LIMITED: &str = "ScalingLimited";
    /// No fresh reports: the scale is held as it is.
    pub const METRICS_STALE: &str = "MetricsStale";
}

fn default_min_replicas() -> i32 {
    1
}
fn default_burst_window_seconds() -> u32 {
    3600
}
fn default_headroom_min() -> i32 {
    1
}
fn default_panic_threshold() -> f64 {
    2.0
}
fn default_tolerance() -> f64 {
    0.1
}
fn default_burst_tolerance() -> f64 {
    0.2
}
fn default_stale_after_seconds() -> u32 {
    10
}
fn default_api_version() -> String {
    "apps/v1".to_owned()
}
fn default_stable_seconds() -> u32 {
    60
}
fn default_panic_seconds() -> u32 {
    6
}
fn default_true() -> bool {
    true
}
fn default_idle_seconds() -> u32 {
    300
}

/// The CRD as YAML, as `surge-scaler crd` prints it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&SurgeScaler::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_spec_gets_the_documented_defaults() {
        let spec: SurgeScalerSpec = serde_json::from_value(serde_json::json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "maxReplicas": 10,
            "metric": {"type": "rps", "target": 100}
        }))
        .unwrap();
        assert_eq!(spec.min_replicas, 1);
        assert_eq!(spec.scale_target_ref.api_version, "apps/v1");
        assert_eq!(spec.windows.stable_seconds, 60);
        assert_eq!(spec.windows.panic_seconds, 6);
        assert_eq!(spec.panic_threshold, 2.0);
        assert_eq!(spec.tolerance, 0.1);
        assert_eq!(spec.burst_tolerance, 0.2);
        assert!(spec.sources.sidecars);
        assert_eq!(spec.behavior.scale_down.stabilization_window_seconds, 300);
        assert!(spec.behavior.scale_up.policies.is_empty());
    }

    #[test]
    fn scale_to_zero_gets_its_default_idle_period_and_needs_a_service() {
        let spec: SurgeScalerSpec = serde_json::from_value(serde_json::json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "minReplicas": 0, "maxReplicas": 10,
            "metric": {"type": "rps", "target": 100},
            "scaleToZero": {"service": "web"}
        }))
        .unwrap();
        let zero = spec.scale_to_zero.unwrap();
        assert_eq!((zero.idle_seconds, zero.port), (300, None));
        let without_service = serde_json::from_value::<ScaleToZero>(serde_json::json!({
            "idleSeconds": 60
        }));
        assert!(without_service.is_err());
    }

    #[test]
    fn the_crd_has_the_scale_to_zero_rules_and_bounds() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(SurgeScaler::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let rules: Vec<(&str, &str)> = spec["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["rule"].as_str().unwrap(), r["message"].as_str().unwrap()))
            .collect();
        assert_eq!(
            rules,
            [
                (
                    "self.minReplicas != 0 || has(self.scaleToZero)",
                    "minReplicas 0 needs spec.scaleToZero (the idle period, and the Service \
                     that names the destination the proxies hold requests for)"
                ),
                (
                    "!has(self.scaleToZero) || self.minReplicas == 0",
                    "spec.scaleToZero needs minReplicas: 0"
                ),
            ]
        );
        let idle = &spec["properties"]["scaleToZero"]["properties"]["idleSeconds"];
        assert_eq!(
            (&idle["default"], &idle["minimum"], &idle["maximum"]),
            (&300.into(), &10.0.into(), &86400.0.into())
        );
        assert_eq!(
            spec["properties"]["scaleToZero"]["required"],
            serde_json::json!(["service"])
        );
    }

    #[test]
    fn the_crd_names_match_the_team_contract() {
        use kube::CustomResourceExt;
        let crd = SurgeScaler::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("surgescalers.surge.dev"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["surge".to_owned()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Target", "Min", "Max", "Current", "Desired", "Metric", "Panic", "Owner", "Age"
            ]
        );
    }

    #[test]
    fn the_committed_crd_yaml_is_in_sync_with_the_rust_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crds/surgescaler.yaml"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = crd_yaml().unwrap();
        assert!(
            committed == generated,
            "deploy/crds/surgescaler.yaml is out of date: regenerate it with \
             `cargo run -p surge-scaler -- crd > deploy/crds/surgescaler.yaml`"
        );
    }

    #[test]
    fn the_basic_example_parses_as_a_surgescaler() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/surgescaler-basic.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let scaler: SurgeScaler = serde_yaml::from_str(&text).unwrap();
        assert_eq!(scaler.spec.min_replicas, 1);
        assert_eq!(scaler.spec.max_replicas, 10);
    }

    #[test]
    fn the_scale_to_zero_example_parses_with_both_halves() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/surgescaler-scale-to-zero.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let scaler: SurgeScaler = serde_yaml::from_str(&text).unwrap();
        assert_eq!(scaler.spec.min_replicas, 0);
        let zero = scaler.spec.scale_to_zero.unwrap();
        assert_eq!((zero.service.as_str(), zero.port), ("api", Some(8080)));
    }

    #[test]
    fn the_waypoint_example_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/surgescaler-waypoint.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let scaler: SurgeScaler = serde_yaml::from_str(&text).unwrap();
        assert!(!scaler.spec.sources.sidecars);
        assert_eq!(
            scaler.spec.sources.waypoint,
            Some(WaypointSource {
                service: "api".into(),
                port: Some(8080)
            })
        );
    }

    #[test]
    fn the_headroom_example_parses_and_headroom_has_its_defaults() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/surgescaler-headroom.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let scaler: SurgeScaler = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            scaler.spec.headroom,
            Some(Headroom {
                burst_window_seconds: 3600,
                min_replicas: 1,
                max_replicas: Some(10),
                placeholders: None,
            })
        );
        let defaults: Headroom = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(
            (defaults.burst_window_seconds, defaults.min_replicas),
            (3600, 1)
        );
        assert_eq!(defaults.max_replicas, None);
    }
}

//! The scaler's own metrics, served as OpenMetrics text on the admin listener. Label values are
//! bounded: outcomes and operations are enums, targets are the SurgeScalers that exist (their
//! series are removed when the resource goes away).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::hub::TargetKey;

/// The outcome of one `POST /v1/reports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Counted for at least one target.
    accepted,
    /// Valid, but no SurgeScaler selects it.
    unmatched,
    /// A waypoint report whose traffic went only to Services that are not bound to that
    /// waypoint: nothing counted (answered 200 with the cold list all the same).
    refused,
    /// First report of an instance or a counter reset.
    baseline,
    /// `seq` not above the last one.
    duplicate,
    /// Not JSON or not a report (400).
    malformed,
    /// Missing or wrong token, or a required identity missing (401).
    unauthorized,
    /// SPIFFE namespace differs from the report's namespace, or the instance id belongs to
    /// another namespace (403).
    forbidden,
    /// Body over the limit (413).
    too_large,
    /// Values outside the limits (422).
    invalid,
    /// The instance reports faster than its per-source limit (429).
    throttled,
    /// A tracking limit (instances, instance routes, sources per target) is reached (503).
    over_capacity,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

/// Labels of per-target series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TargetLabels {
    /// SurgeScaler namespace.
    pub namespace: String,
    /// SurgeScaler name.
    pub name: String,
}

impl From<&TargetKey> for TargetLabels {
    fn from(key: &TargetKey) -> Self {
        Self {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ObservedLabels {
    namespace: String,
    name: String,
    metric: &'static str,
    window: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PatchLabels {
    namespace: String,
    name: String,
    direction: &'static str,
}

/// A Kubernetes API call the scaler makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Operation {
    /// GET of a scale subresource.
    get_scale,
    /// PATCH of a scale subresource.
    patch_scale,
    /// PATCH of a SurgeScaler's status.
    patch_status,
    /// Creating an Event.
    create_event,
    /// Listing HPAs / ScaledObjects to detect conflicts.
    list_conflicts,
    /// The SurgeScaler watch.
    watch,
    /// Reading a target's Service (scale to zero: its ports; a waypoint source: its labels).
    get_service,
    /// Reading a waypoint-fed target's namespace (its `istio.io/use-waypoint` label).
    get_namespace,
    /// The watch of a scale-to-zero target's EndpointSlices.
    watch_endpoints,
    /// Server-side apply of a headroom CapacityBuffer.
    apply_capacity_buffer,
}

/// What became of requests the proxies held, as their `hold_totals` count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HoldOutcome {
    /// Held (paused at their headers: the destination was cold).
    held,
    /// Resumed when the destination turned warm.
    resumed,
    /// Answered 503 at the hold timeout.
    timed_out,
    /// Ended while held without an answer from the filter.
    cancelled,
    /// Answered 503 at once, never held: the destination's hold was full.
    rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HoldLabels {
    outcome: HoldOutcome,
}

/// What became of reports mirrored between replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum MirrorOutcome {
    /// Sent to a peer, which took them.
    sent,
    /// Sent to a peer, which did not answer or refused them (their traffic reaches it with the
    /// instance's next report: counters are cumulative).
    failed,
    /// Not queued: the peer's queue was full.
    dropped,
    /// Received from a peer and counted here.
    received,
    /// Received from a peer but not a valid report.
    refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MirrorLabels {
    outcome: MirrorOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiErrorLabels {
    operation: Operation,
    code: String,
}

/// All metrics of the scaler.
pub struct Metrics {
    registry: Registry,
    ingest: Family<OutcomeLabels, Counter>,
    observed: Family<ObservedLabels, Gauge<f64, AtomicU64>>,
    desired: Family<TargetLabels, Gauge>,
    current: Family<TargetLabels, Gauge>,
    panic: Family<TargetLabels, Gauge>,
    sources: Family<TargetLabels, Gauge>,
    patches: Family<PatchLabels, Counter>,
    decision_latency: Histogram,
    api_errors: Family<ApiErrorLabels, Counter>,
    held: Family<TargetLabels, Gauge>,
    activations: Family<TargetLabels, Counter>,
    to_zero: Family<TargetLabels, Counter>,
    cold_targets: Gauge,
    proxy_holds: Family<HoldLabels, Counter>,
    mirrored: Family<MirrorLabels, Counter>,
    owned: Family<TargetLabels, Gauge>,
    shards_held: Gauge,
    waypoint_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let ingest = Family::default();
        registry.register(
            "surge_ingest_reports",
            "Reports received, by outcome",
            ingest.clone(),
        );
        let observed = Family::default();
        registry.register(
            "surge_observed_metric",
            "Observed metric of a target (rps or concurrency), summed over its sources, per window",
            observed.clone(),
        );
        let desired = Family::default();
        registry.register(
            "surge_desired_replicas",
            "Replicas the last decision asked for",
            desired.clone(),
        );
        let current = Family::default();
        registry.register(
            "surge_current_replicas",
            "Replicas of the target's scale when last read",
            current.clone(),
        );
        let panic = Family::default();
        registry.register(
            "surge_panic_mode",
            "1 while a target is in panic mode (no scale-down)",
            panic.clone(),
        );
        let sources = Family::default();
        registry.register(
            "surge_tracked_sources",
            "Proxies currently reporting for a target",
            sources.clone(),
        );
        let patches = Family::default();
        registry.register(
            "surge_scale_patches",
            "Scale subresource patches written, by direction",
            patches.clone(),
        );
        // 10 us .. ~80 ms.
        let decision_latency = Histogram::new(exponential_buckets(0.000_01, 2.0, 14));
        registry.register(
            "surge_decision_latency_seconds",
            "Time from a wake-up to the decision (window read + decide), excluding API calls",
            decision_latency.clone(),
        );
        let api_errors = Family::default();
        registry.register(
            "surge_kube_api_errors",
            "Failed Kubernetes API calls, by operation and status code",
            api_errors.clone(),
        );
        let held = Family::default();
        registry.register(
            "surge_held_requests",
            "Requests the proxies hold for a scale-to-zero target now (latest count per proxy, summed)",
            held.clone(),
        );
        let waypoint_refused = Counter::default();
        registry.register(
            "surge_waypoint_routes_refused",
            "Routes of waypoint reports that carried traffic to a Service not bound to that \
             waypoint, not counted",
            waypoint_refused.clone(),
        );
        let activations = Family::default();
        registry.register(
            "surge_activations",
            "Scale writes taking a target up from zero",
            activations.clone(),
        );
        let to_zero = Family::default();
        registry.register(
            "surge_scale_to_zero",
            "Scale writes taking a target to zero after its idle period",
            to_zero.clone(),
        );
        let cold_targets = Gauge::default();
        registry.register(
            "surge_cold_targets",
            "Scale-to-zero targets the answers list as cold (at zero, or without a ready endpoint)",
            cold_targets.clone(),
        );
        let proxy_holds = Family::default();
        registry.register(
            "surge_proxy_held_requests",
            "Requests the proxies held for cold destinations, by what became of them (their hold_totals, summed over all proxies)",
            proxy_holds.clone(),
        );
        let mirrored = Family::default();
        registry.register(
            "surge_mirrored_reports",
            "Reports mirrored between scaler replicas, by outcome",
            mirrored.clone(),
        );
        let owned = Family::default();
        registry.register(
            "surge_target_owned",
            "1 while this replica decides and writes for the target (its shard Lease is held)",
            owned.clone(),
        );
        let shards_held = Gauge::default();
        registry.register(
            "surge_shards_held",
            "Shard Leases this replica holds (0 when it runs alone, without Leases)",
            shards_held.clone(),
        );
        Self {
            registry,
            ingest,
            observed,
            desired,
            current,
            panic,
            sources,
            patches,
            decision_latency,
            api_errors,
            held,
            activations,
            to_zero,
            cold_targets,
            proxy_holds,
            mirrored,
            owned,
            shards_held,
            waypoint_refused,
        }
    }
}

impl Metrics {
    /// Counts one report outcome.
    pub fn ingest(&self, outcome: Outcome) {
        self.ingest.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts routes of waypoint reports refused for a Service the waypoint does not serve.
    pub fn waypoint_routes_refused(&self, routes: usize) {
        self.waypoint_refused.inc_by(routes as u64);
    }

    /// Records a target's state after a decision.
    #[allow(clippy::too_many_arguments)]
    pub fn target(
        &self,
        key: &TargetKey,
        metric: &'static str,
        stable: f64,
        panic_value: f64,
        current: i32,
        desired: i32,
        panicking: bool,
        sources: usize,
    ) {
        let labels = TargetLabels::from(key);
        for (window, value) in [("stable", stable), ("panic", panic_value)] {
            self.observed
                .get_or_create(&ObservedLabels {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    metric,
                    window,
                })
                .set(value);
        }
        self.current.get_or_create(&labels).set(i64::from(current));
        self.desired.get_or_create(&labels).set(i64::from(desired));
        self.panic.get_or_create(&labels).set(i64::from(panicking));
        self.sources
            .get_or_create(&labels)
            .set(i64::try_from(sources).unwrap_or(i64::MAX));
    }

    /// Counts `count` reports mirrored with `outcome`.
    pub fn mirrored(&self, outcome: MirrorOutcome, count: u64) {
        if count > 0 {
            self.mirrored
                .get_or_create(&MirrorLabels { outcome })
                .inc_by(count);
        }
    }

    /// Whether this replica owns the target now.
    pub fn owned(&self, key: &TargetKey, owned: bool) {
        self.owned
            .get_or_create(&TargetLabels::from(key))
            .set(i64::from(owned));
    }

    /// How many shard Leases this replica holds.
    pub fn shards_held(&self, held: usize) {
        self.shards_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Removes a deleted target's series.
    pub fn forget(&self, key: &TargetKey) {
        let labels = TargetLabels::from(key);
        for metric in ["rps", "concurrency"] {
            for window in ["stable", "panic"] {
                self.observed.remove(&ObservedLabels {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    metric,
                    window,
                });
            }
        }
        for family in [
            &self.current,
            &self.desired,
            &self.panic,
            &self.sources,
            &self.held,
            &self.owned,
        ] {
            family.remove(&labels);
        }
        self.activations.remove(&labels);
        self.to_zero.remove(&labels);
        for direction in ["up", "down"] {
            self.patches.remove(&PatchLabels {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                direction,
            });
        }
    }

    /// Counts a scale patch.
    pub fn patched(&self, key: &TargetKey, up: bool) {
        self.patches
            .get_or_create(&PatchLabels {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                direction: if up { "up" } else { "down" },
            })
            .inc();
    }

    /// Records the requests held for a scale-to-zero target now.
    pub fn held(&self, key: &TargetKey, requests: u64) {
        self.held
            .get_or_create(&TargetLabels::from(key))
            .set(i64::try_from(requests).unwrap_or(i64::MAX));
    }

    /// Counts a scale write from zero (`up`) or to zero.
    pub fn zero_transition(&self, key: &TargetKey, up: bool) {
        let family = if up { &self.activations } else { &self.to_zero };
        family.get_or_create(&TargetLabels::from(key)).inc();
    }

    /// Records how many targets are listed cold.
    pub fn cold_targets(&self, targets: usize) {
        self.cold_targets
            .set(i64::try_from(targets).unwrap_or(i64::MAX));
    }

    /// Adds what one proxy's `hold_totals` grew by since its previous report.
    pub fn proxy_holds(&self, added: &surge_wire::HoldTotals) {
        for (outcome, value) in [
            (HoldOutcome::held, added.held_total),
            (HoldOutcome::resumed, added.resumed_total),
            (HoldOutcome::timed_out, added.timed_out_total),
            (HoldOutcome::cancelled, added.cancelled_total),
            (HoldOutcome::rejected, added.rejected_total),
        ] {
            if value > 0 {
                self.proxy_holds
                    .get_or_create(&HoldLabels { outcome })
                    .inc_by(value);
            }
        }
    }

    /// Records how long a decision took.
    pub fn decision_seconds(&self, seconds: f64) {
        self.decision_latency.observe(seconds);
    }

    /// Counts a failed API call; `code` is the HTTP status or a short cause (`timeout`).
    pub fn api_error(&self, operation: Operation, code: &str) {
        self.api_errors
            .get_or_create(&ApiErrorLabels {
                operation,
                code: code.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::encode`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_the_documented_names_and_bounded_labels() {
        let metrics = Metrics::default();
        let key = TargetKey {
            namespace: "web".into(),
            name: "api".into(),
        };
        metrics.ingest(Outcome::accepted);
        metrics.ingest(Outcome::too_large);
        metrics.target(&key, "rps", 120.0, 300.0, 2, 3, true, 4);
        metrics.patched(&key, true);
        metrics.decision_seconds(0.0001);
        metrics.api_error(Operation::patch_scale, "409");
        metrics.held(&key, 3);
        metrics.zero_transition(&key, true);
        metrics.zero_transition(&key, false);
        metrics.cold_targets(1);
        metrics.proxy_holds(&surge_wire::HoldTotals {
            held_total: 9,
            resumed_total: 4,
            timed_out_total: 1,
            cancelled_total: 0,
            rejected_total: 2,
        });
        let text = metrics.encode();
        for expected in [
            "surge_ingest_reports_total{outcome=\"accepted\"} 1",
            "surge_ingest_reports_total{outcome=\"too_large\"} 1",
            "surge_observed_metric{namespace=\"web\",name=\"api\",metric=\"rps\",window=\"panic\"} 300.0",
            "surge_desired_replicas{namespace=\"web\",name=\"api\"} 3",
            "surge_current_replicas{namespace=\"web\",name=\"api\"} 2",
            "surge_panic_mode{namespace=\"web\",name=\"api\"} 1",
            "surge_tracked_sources{namespace=\"web\",name=\"api\"} 4",
            "surge_scale_patches_total{namespace=\"web\",name=\"api\",direction=\"up\"} 1",
            "surge_decision_latency_seconds_count 1",
            "surge_kube_api_errors_total{operation=\"patch_scale\",code=\"409\"} 1",
            "surge_held_requests{namespace=\"web\",name=\"api\"} 3",
            "surge_activations_total{namespace=\"web\",name=\"api\"} 1",
            "surge_scale_to_zero_total{namespace=\"web\",name=\"api\"} 1",
            "surge_cold_targets 1",
            "surge_proxy_held_requests_total{outcome=\"held\"} 9",
            "surge_proxy_held_requests_total{outcome=\"rejected\"} 2",
            "# EOF",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        metrics.forget(&key);
        assert!(!metrics.encode().contains("name=\"api\""));
        // Nothing cancelled: no series for it (counters appear with their first request).
        assert!(!metrics.encode().contains("outcome=\"cancelled\""));
    }
}

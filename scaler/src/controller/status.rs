//! What a loop tells people: the SurgeScaler's status (conditions included) and its Events,
//! written off the decision path by a writer task per target.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;

use super::{ApiError, Context, FIELD_MANAGER, STATUS_REFRESH, TargetLoop};
use crate::crd::{MetricType, ObservedMetric, SurgeScaler, SurgeScalerStatus, condition};
use crate::decision::{self, Decision, Limit, Policy, Reason};
use crate::hub::TargetKey;
use crate::metrics::Operation;

/// What the last read or write of the target's scale showed: the `AbleToScale` condition, named
/// and worded as the HPA's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Able {
    /// The scale was read, and neither written by this loop since nor refused.
    Read,
    /// The scale was written, to this many replicas.
    Rescaled(i32),
    /// Reading the scale failed: what the API (or the way to it) said.
    FailedGet(String),
    /// Writing the scale failed: what the API (or the way to it) said.
    FailedUpdate(String),
    /// Writing the scale was refused because it changed between each read and write, too
    /// often in a row: the same condition as `FailedUpdate`, but a fresh read that needs no
    /// write ends it (the contention is over), where a refusal needs a write that lands.
    Contended(String),
}

impl TargetLoop {
    /// A read of the scale succeeded: clears a read failure, not a write failure (the next
    /// write has yet to show that the API accepts it).
    pub(super) fn scale_read_succeeded(&mut self) {
        if matches!(self.able, None | Some(Able::FailedGet(_))) {
            self.able = Some(Able::Read);
        }
    }

    /// A read of the scale failed: `AbleToScale` False, and a `FailedGetScale` Warning unless
    /// the previous read failed the same way (the loop retries at every wake-up).
    pub(super) async fn scale_read_failed(&mut self, error: &ApiError) {
        let message = error.message();
        let failure = Able::FailedGet(message.clone());
        if self.able.as_ref() != Some(&failure) {
            self.publish(EventType::Warning, "FailedGetScale", "GetScale", message)
                .await;
        }
        self.able = Some(failure);
    }

    /// The decision matched the scale (no write needed): ends a contention, whose write the
    /// other writer's change made unnecessary, but not a refusal, which still stands.
    pub(super) fn scale_needs_no_write(&mut self) {
        if matches!(self.able, Some(Able::Contended(_))) {
            self.able = Some(Able::Read);
        }
    }

    /// A write of the scale succeeded: `AbleToScale` True again.
    pub(super) fn scale_write_succeeded(&mut self, replicas: i32) {
        self.able = Some(Able::Rescaled(replicas));
    }

    /// A write of the scale failed (`conflicts`: how many 409s in a row ended it, 0 for other
    /// failures): `AbleToScale` False, and a `FailedRescale` Warning unless the previous write
    /// failed the same way.
    pub(super) async fn scale_write_failed(
        &mut self,
        decision: &Decision,
        observation: &decision::Observation,
        error: &ApiError,
        conflicts: u32,
    ) {
        let message = if conflicts > 0 {
            format!(
                "the scale changed between each read and write, {conflicts} times in a row \
                 (another writer keeps changing it); retrying at the next wake-up: {}",
                error.message()
            )
        } else {
            error.message()
        };
        let failure = if conflicts > 0 {
            Able::Contended(message.clone())
        } else {
            Able::FailedUpdate(message.clone())
        };
        if self.able.as_ref() != Some(&failure) {
            let why = rescale_reason(
                decision,
                observation,
                &self.policy,
                self.scaler.spec.metric.type_,
            );
            self.publish(
                EventType::Warning,
                "FailedRescale",
                "Scale",
                format!(
                    "New size: {}; reason: {why}; error: {message}",
                    decision.desired
                ),
            )
            .await;
        }
        self.able = Some(failure);
    }

    /// Queues an Event for the target's writer; never waits for the API.
    pub(super) async fn publish(&self, type_: EventType, reason: &str, action: &str, note: String) {
        if !self.ctx.ownership.owns(&self.key) {
            // Another replica speaks for the target.
            return;
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if self.writes.try_send(Write::Event(event)).is_err() {
            tracing::warn!(target = %self.key, "event queue full; dropping an event");
        }
    }

    pub(super) fn conditions(&self, previous: &[Condition]) -> Vec<Condition> {
        let generation = self.scaler.metadata.generation;
        let mut wanted: Vec<(&str, bool, String, String)> = Vec::new();
        if let Some(conflict) = &self.conflict {
            wanted.push((
                condition::READY,
                false,
                "ConflictingAutoscaler".into(),
                conflict.clone(),
            ));
        } else if let Some(missing) = &self.target_missing {
            wanted.push((
                condition::READY,
                false,
                "TargetNotFound".into(),
                missing.clone(),
            ));
        } else {
            wanted.push((
                condition::READY,
                true,
                "ScaleTargetFound".into(),
                "the target exists and no other autoscaler drives it".into(),
            ));
        }
        if let Some(able) = &self.able {
            let (status, reason, message) = match able {
                Able::Read => (
                    true,
                    "SucceededGetScale",
                    "the target's current scale was read".to_owned(),
                ),
                Able::Rescaled(replicas) => (
                    true,
                    "SucceededRescale",
                    format!("the target's scale was updated to {replicas}"),
                ),
                Able::FailedGet(message) => (
                    false,
                    "FailedGetScale",
                    format!("unable to get the target's current scale: {message}"),
                ),
                Able::FailedUpdate(message) | Able::Contended(message) => (
                    false,
                    "FailedUpdateScale",
                    format!("unable to update the target's scale: {message}"),
                ),
            };
            wanted.push((condition::ABLE_TO_SCALE, status, reason.into(), message));
        }
        if let Some(decision) = &self.last_decision {
            let stale = decision.reason == Reason::MetricsStale;
            wanted.push((
                condition::ACTIVE,
                !stale,
                if stale {
                    "NoFreshMetrics"
                } else {
                    "ValidMetricFound"
                }
                .into(),
                if stale {
                    "no fresh reports: holding the scale".into()
                } else {
                    "computing the scale from fresh reports".into()
                },
            ));
            wanted.push((
                condition::METRICS_STALE,
                stale,
                if stale {
                    "NoFreshReports"
                } else {
                    "FreshReports"
                }
                .into(),
                if stale {
                    format!(
                        "no source reported within {} s; the scale is held",
                        self.scaler.spec.stale_after_seconds
                    )
                } else {
                    "reports are fresh".into()
                },
            ));
            // At zero (or coming back from it), no source reporting is what is expected.
            if let Some(overrides) = self.zero_conditions() {
                for (type_, (status, reason, message)) in
                    [condition::ACTIVE, condition::METRICS_STALE]
                        .into_iter()
                        .zip(overrides)
                {
                    if let Some(c) = wanted.iter_mut().find(|c| c.0 == type_) {
                        *c = (type_, status, reason.into(), message);
                    }
                }
            }
            let (limited, reason, message) = match decision.limit {
                Some(Limit::TooManyReplicas) => (
                    true,
                    "TooManyReplicas",
                    "the desired count is more than maxReplicas",
                ),
                Some(Limit::TooFewReplicas) => (
                    true,
                    "TooFewReplicas",
                    "the desired count is less than minReplicas",
                ),
                Some(Limit::ScaleUpLimit) => {
                    (true, "ScaleUpLimit", "a scale-up policy limits the change")
                }
                Some(Limit::ScaleDownLimit) => (
                    true,
                    "ScaleDownLimit",
                    "a scale-down policy limits the change",
                ),
                None => (
                    false,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range",
                ),
            };
            wanted.push((
                condition::SCALING_LIMITED,
                limited,
                reason.into(),
                message.into(),
            ));
        }
        wanted
            .into_iter()
            .map(|(type_, status, reason, message)| {
                let status = if status { "True" } else { "False" }.to_owned();
                let last_transition_time = previous
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
                    .map_or_else(
                        || Time(Timestamp::now()),
                        |c| c.last_transition_time.clone(),
                    );
                Condition {
                    type_: type_.to_owned(),
                    status,
                    reason,
                    message,
                    observed_generation: generation,
                    last_transition_time,
                }
            })
            .collect()
    }

    pub(super) async fn write_status(&mut self, observed: Option<(decision::Observation, usize)>) {
        if !self.ctx.ownership.owns(&self.key) {
            return;
        }
        let previous = self
            .last_status
            .clone()
            .or_else(|| self.scaler.status.clone())
            .unwrap_or_default();
        let metric = self.scaler.spec.metric.type_;
        let status = SurgeScalerStatus {
            scale_to_zero: self.zero_status().or(previous.scale_to_zero.clone()),
            current_replicas: self
                .scale
                .as_ref()
                .map(|s| s.replicas)
                .or(previous.current_replicas),
            desired_replicas: self
                .last_decision
                .map(|d| d.desired)
                .or(previous.desired_replicas),
            observed_metric: observed
                .map(|(o, sources)| ObservedMetric {
                    stable: round2(o.stable),
                    panic: round2(o.panic),
                    sources: u32::try_from(sources).unwrap_or(u32::MAX),
                    summary: format!(
                        "{:.1}{}/{}",
                        o.stable,
                        metric_name(metric),
                        self.scaler.spec.metric.target
                    ),
                })
                .or(previous.observed_metric.clone()),
            panic: self.last_decision.is_some_and(|d| d.panic),
            last_scale_time: self.last_scale_time.clone(),
            conditions: self.conditions(&previous.conditions),
            observed_generation: self.scaler.metadata.generation,
            headroom: self.headroom_status().or(previous.headroom.clone()),
            owner: self.ctx.ownership.replica_id().map(str::to_owned),
        };
        let same_shape = self.last_status.as_ref().is_some_and(|last| {
            last.scale_to_zero == status.scale_to_zero
                && last.current_replicas == status.current_replicas
                && last.desired_replicas == status.desired_replicas
                && last.panic == status.panic
                && last.last_scale_time == status.last_scale_time
                && last.conditions == status.conditions
                && last.observed_generation == status.observed_generation
                && last.owner == status.owner
                && last.headroom == status.headroom
        });
        let fresh_enough = self
            .status_written_at
            .is_some_and(|t| t.elapsed() < STATUS_REFRESH);
        if same_shape && (fresh_enough || self.last_status.as_ref() == Some(&status)) {
            return;
        }
        if self.writes.try_send(Write::Status(status.clone())).is_err() {
            tracing::warn!(target = %self.key, "status queue full; the next change rewrites it");
            return;
        }
        self.last_status = Some(status);
        self.status_written_at = Some(Instant::now());
    }
}

/// A write that does not decide anything: done off the decision path, so a slow status or
/// Event write never delays the next scale PATCH.
pub(super) enum Write {
    Event(Event),
    Status(SurgeScalerStatus),
}

/// Writes a target's Events and status in order until the loop drops its sender, then
/// finishes what is queued (shutdown waits for it).
pub(super) async fn writer(
    ctx: Arc<Context>,
    key: TargetKey,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    mut queue: tokio::sync::mpsc::Receiver<Write>,
) {
    let api: Api<SurgeScaler> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    while let Some(write) = queue.recv().await {
        match write {
            Write::Event(event) => {
                let _ = ctx
                    .call(
                        Operation::create_event,
                        ctx.recorder.publish(&event, &reference),
                    )
                    .await;
            }
            Write::Status(mut status) => {
                // Only the newest status matters: skip to the last one queued.
                let mut events = Vec::new();
                while let Ok(next) = queue.try_recv() {
                    match next {
                        Write::Status(newer) => status = newer,
                        Write::Event(event) => events.push(event),
                    }
                }
                let patch = Patch::Merge(json!({ "status": status }));
                if let Err(error) = ctx
                    .call(
                        Operation::patch_status,
                        api.patch_status(&key.name, &params, &patch),
                    )
                    .await
                {
                    tracing::debug!(target = %key, %error, "status write failed");
                }
                for event in events {
                    let _ = ctx
                        .call(
                            Operation::create_event,
                            ctx.recorder.publish(&event, &reference),
                        )
                        .await;
                }
            }
        }
    }
}

pub(super) fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

pub(super) fn metric_name(metric: MetricType) -> &'static str {
    match metric {
        MetricType::Rps => "rps",
        MetricType::Concurrency => "concurrency",
    }
}

/// The reason part of a SuccessfulRescale message, in the HPA's words where they fit.
pub(super) fn rescale_reason(
    decision: &Decision,
    observation: &decision::Observation,
    policy: &Policy,
    metric: MetricType,
) -> String {
    let name = metric_name(metric);
    // Outside panic a scale-up the stable average cannot ask for (it is within the tolerance of
    // one replica fewer) is the burst estimate's: name it, not the stable value.
    let stable_below = observation.stable / policy.target
        <= f64::from(decision.desired - 1) * (1.0 + policy.tolerance);
    let (value, window) = match (decision.panic, observation.burst) {
        (true, Some(burst)) if burst >= observation.panic => (burst, "surge burst estimate"),
        (true, _) => (observation.panic, "panic window"),
        (false, Some(burst)) if decision.reason == Reason::ScaleUp && stable_below => {
            (burst, "surge burst estimate")
        }
        (false, _) => (observation.stable, "stable window"),
    };
    let direction = if decision.reason == Reason::ScaleDown {
        "below"
    } else {
        "above"
    };
    let mut reason = format!(
        "{name} {value:.1} ({window}) {direction} target {} per replica",
        policy.target
    );
    match decision.limit {
        Some(Limit::TooManyReplicas) => reason.push_str("; capped at maxReplicas"),
        Some(Limit::TooFewReplicas) => reason.push_str("; raised to minReplicas"),
        Some(Limit::ScaleUpLimit) => reason.push_str("; limited by a scale-up policy"),
        Some(Limit::ScaleDownLimit) => reason.push_str("; limited by a scale-down policy"),
        None => {}
    }
    reason
}

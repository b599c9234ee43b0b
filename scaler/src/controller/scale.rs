//! The target's side of a loop: reading and writing its `scale` subresource (each write valid
//! only at the resourceVersion it was decided on), and looking for another autoscaler (an HPA,
//! a KEDA ScaledObject) that already drives it.

use std::time::Instant;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::events::EventType;
use serde_json::{Value, json};

use super::status::rescale_reason;
use super::{ApiError, CONFLICT_RECHECK, FIELD_MANAGER, TargetLoop};
use crate::crd::TargetKind;
use crate::decision::{Decision, Millis, Observation};
use crate::metrics::Operation;

/// The target's scale as last read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleView {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.replicas`.
    pub ready: i32,
    /// `metadata.resourceVersion`. Every write carries it as a precondition, so a write decided
    /// on replicas that someone has changed since is refused (409) instead of undoing their
    /// change; `None` (no API server leaves it out) writes without one.
    pub resource_version: Option<String>,
}

impl ScaleView {
    pub(super) fn from_scale(scale: &Scale) -> Self {
        let replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let ready = scale.status.as_ref().map_or(replicas, |s| s.replicas);
        Self {
            replicas,
            ready,
            resource_version: scale.metadata.resource_version.clone(),
        }
    }
}

/// The merge patch that sets `replicas` only if the scale is still at `resource_version`: the
/// API server answers 409 Conflict when the object changed since (as the HPA's Update does).
pub(super) fn scale_patch(replicas: i32, resource_version: Option<&str>) -> Value {
    match resource_version {
        Some(rv) => json!({"metadata": {"resourceVersion": rv}, "spec": {"replicas": replicas}}),
        None => json!({"spec": {"replicas": replicas}}),
    }
}

impl TargetLoop {
    /// Checks for another autoscaler on the target when due. False when the step must stop
    /// here: the target is refused (its status says why), or no check has succeeded yet.
    pub(super) async fn check_conflicts(&mut self) -> bool {
        if self
            .conflict_checked_at
            .is_none_or(|t| t.elapsed() >= CONFLICT_RECHECK)
        {
            match self.find_conflict().await {
                Ok(found) => {
                    self.conflict_checked_at = Some(Instant::now());
                    if found.is_some() && found != self.conflict {
                        let note = found.clone().unwrap_or_default();
                        tracing::warn!(target = %self.key, %note, "refusing a target another autoscaler drives");
                        self.publish(EventType::Warning, "ConflictingAutoscaler", "Refuse", note)
                            .await;
                    }
                    self.conflict = found;
                }
                Err(error) => {
                    tracing::warn!(target = %self.key, %error, "could not check for conflicting autoscalers");
                    if self.conflict_checked_at.is_none() {
                        // Never written before a check succeeded once.
                        return false;
                    }
                }
            }
        }
        if self.conflict.is_some() {
            self.write_status(None).await;
            return false;
        }
        true
    }

    /// GETs the target's scale. True when there is a scale to decide on afterwards: the one
    /// just read or, when a periodic re-read failed, the one known before. A failure sets
    /// `AbleToScale` to False (`FailedGetScale`) with one Warning Event per distinct failure.
    pub(super) async fn read_scale(&mut self) -> bool {
        match self.get_scale().await {
            Ok(scale) => {
                self.scale = Some(ScaleView::from_scale(&scale));
                self.scale_read_at = Some(Instant::now());
                self.target_missing = None;
                self.scale_read_succeeded();
                true
            }
            Err(error) => {
                tracing::warn!(target = %self.key, %error, "could not read the target's scale");
                if error.code() == Some(404) {
                    let (kind, name) = self.scale_api_path();
                    self.target_missing = Some(format!("{kind:?} {name} not found"));
                    self.scale = None;
                }
                self.scale_read_failed(&error).await;
                self.scale.is_some()
            }
        }
    }

    /// PATCHes `decision.desired` with the resourceVersion of `scale`, the scale it was decided
    /// on. On success the reply (with the new resourceVersion) becomes the known scale and the
    /// change is recorded and announced; on failure the known scale is dropped, so that the
    /// next decision is made on a fresh read.
    pub(super) async fn write_scale(
        &mut self,
        scale: &ScaleView,
        decision: &Decision,
        observation: &Observation,
        now: Millis,
    ) -> Result<(), ApiError> {
        let reply = self
            .patch_scale(decision.desired, scale.resource_version.as_deref())
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                self.scale = None;
                return Err(error);
            }
        };
        let after = ScaleView::from_scale(&reply);
        if after.resource_version.is_none() {
            // Without it the next write would have no precondition: read the scale first.
            self.scale_read_at = None;
        }
        self.scale = Some(ScaleView {
            replicas: decision.desired,
            ..after
        });
        self.state
            .record_scale(now, scale.replicas, decision.desired);
        self.note_scale(now, scale.replicas, decision.desired);
        self.last_scale_time = Some(Time(Timestamp::now()));
        self.scale_write_succeeded(decision.desired);
        self.ctx
            .metrics
            .patched(&self.key, decision.desired > scale.replicas);
        // A move to or from zero is its own Event (ScaledToZero, ScaledFromZero), with why.
        let event = self.zero_written(scale.replicas, decision.desired);
        let why = self.zero_why(decision).unwrap_or_else(|| {
            rescale_reason(
                decision,
                observation,
                &self.policy,
                self.scaler.spec.metric.type_,
            )
        });
        tracing::info!(target = %self.key, from = scale.replicas, to = decision.desired, %why, "rescaled");
        self.publish(
            EventType::Normal,
            event,
            "Scale",
            format!("New size: {}; reason: {why}", decision.desired),
        )
        .await;
        Ok(())
    }

    pub(super) fn scale_api_path(&self) -> (TargetKind, &str) {
        let target = &self.scaler.spec.scale_target_ref;
        (target.kind, target.name.as_str())
    }

    pub(super) async fn get_scale(&self) -> Result<Scale, ApiError> {
        let (kind, name) = self.scale_api_path();
        let client = self.ctx.client.clone();
        let ns = &self.key.namespace;
        match kind {
            TargetKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(client, ns);
                self.ctx
                    .call(Operation::get_scale, api.get_scale(name))
                    .await
            }
            TargetKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(client, ns);
                self.ctx
                    .call(Operation::get_scale, api.get_scale(name))
                    .await
            }
        }
    }

    pub(super) async fn patch_scale(
        &self,
        replicas: i32,
        resource_version: Option<&str>,
    ) -> Result<Scale, ApiError> {
        let (kind, name) = self.scale_api_path();
        let client = self.ctx.client.clone();
        let ns = &self.key.namespace;
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(scale_patch(replicas, resource_version));
        match kind {
            TargetKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(client, ns);
                self.ctx
                    .call(
                        Operation::patch_scale,
                        api.patch_scale(name, &params, &patch),
                    )
                    .await
            }
            TargetKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(client, ns);
                self.ctx
                    .call(
                        Operation::patch_scale,
                        api.patch_scale(name, &params, &patch),
                    )
                    .await
            }
        }
    }

    /// Looks for an HPA or a KEDA ScaledObject driving the same target.
    pub(super) async fn find_conflict(&self) -> Result<Option<String>, ApiError> {
        let target = &self.scaler.spec.scale_target_ref;
        let kind = match target.kind {
            TargetKind::Deployment => "Deployment",
            TargetKind::StatefulSet => "StatefulSet",
        };
        let hpas: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        let list = self
            .ctx
            .call(Operation::list_conflicts, hpas.list(&ListParams::default()))
            .await?;
        for hpa in list {
            let driven = hpa.spec.as_ref().is_some_and(|s| {
                s.scale_target_ref.kind == kind && s.scale_target_ref.name == target.name
            });
            if driven {
                return Ok(Some(format!(
                    "HorizontalPodAutoscaler {} already scales {kind} {}",
                    hpa.name_any(),
                    target.name
                )));
            }
        }
        let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "scaledobjects");
        let scaled: Api<DynamicObject> =
            Api::namespaced_with(self.ctx.client.clone(), &self.key.namespace, &resource);
        match self
            .ctx
            .call(
                Operation::list_conflicts,
                scaled.list(&ListParams::default()),
            )
            .await
        {
            Ok(list) => {
                for object in list {
                    let reference = &object.data["spec"]["scaleTargetRef"];
                    let object_kind = reference["kind"].as_str().unwrap_or("Deployment");
                    if object_kind == kind && reference["name"].as_str() == Some(&target.name) {
                        return Ok(Some(format!(
                            "KEDA ScaledObject {} already scales {kind} {}",
                            object.name_any(),
                            target.name
                        )));
                    }
                }
            }
            // KEDA not installed: nothing can conflict from there.
            Err(error) if error.code() == Some(404) => {}
            Err(error) => return Err(error),
        }
        Ok(None)
    }
}

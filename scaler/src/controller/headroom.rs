//! Headroom's side of a loop: keeps the spare pods [`crate::headroom::spare_replicas`] sizes
//! asked for, in one of two places (a [`Sink`]):
//!
//! - the CapacityBuffer `<surgescaler>-headroom` (in the SurgeScaler's namespace, owned by it,
//!   so it goes when the SurgeScaler goes), by server-side apply; its `scalableRef` is the
//!   target, so the cluster autoscaler gives each spare pod the target's own pod template;
//! - or, with `headroom.placeholders`, the replicas of the user's placeholder Deployment,
//!   through its scale subresource (pods of negative priority that real pods preempt).
//!
//! Written only when the size or the place changes (or again after a failure, at most every
//! [`RETRY`]), after the step's scale write: it never delays a scale PATCH.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use super::ApiError;
use super::{FIELD_MANAGER, TargetLoop};
use crate::crd::{HeadroomStatus, SurgeScaler, TargetKind};
use crate::decision::Millis;
use crate::headroom::{BurstMemory, spare_replicas};
use crate::metrics::Operation;

/// How long after a failed write the buffer is written again.
const RETRY: Duration = Duration::from_secs(30);

/// Where the spare pods are asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sink {
    /// The CapacityBuffer of this name.
    Buffer(String),
    /// The scale of the placeholder Deployment of this name.
    Placeholders(String),
}

impl Sink {
    /// Where `scaler`'s headroom goes.
    fn of(scaler: &SurgeScaler) -> Self {
        match scaler
            .spec
            .headroom
            .as_ref()
            .and_then(|h| h.placeholders.clone())
        {
            Some(name) => Self::Placeholders(name),
            None => Self::Buffer(buffer_name(
                &scaler.metadata.name.clone().unwrap_or_default(),
            )),
        }
    }
}

/// What a loop keeps for its target's headroom.
#[derive(Debug, Default)]
pub(super) struct HeadroomLoop {
    memory: BurstMemory,
    /// Where and what was last written, once a write succeeded.
    written_to: Option<Sink>,
    /// The size last written, once a write succeeded.
    written: Option<i32>,
    /// The size last asked for (written or not).
    wanted: Option<i32>,
    /// No write before this, after a failure.
    retry_at: Option<Instant>,
    /// Why the last write failed.
    message: Option<String>,
}

/// The CapacityBuffer's name for SurgeScaler `name`.
pub(super) fn buffer_name(name: &str) -> String {
    format!("{name}-headroom")
}

/// The CapacityBuffer that asks for `replicas` spare pods shaped like `scaler`'s target.
pub(super) fn capacity_buffer(scaler: &SurgeScaler, replicas: i32) -> Value {
    let name = scaler.metadata.name.clone().unwrap_or_default();
    let target = &scaler.spec.scale_target_ref;
    let kind = match target.kind {
        TargetKind::Deployment => "Deployment",
        TargetKind::StatefulSet => "StatefulSet",
    };
    let mut metadata = json!({
        "name": buffer_name(&name),
        "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
    });
    // An owner reference needs the owner's uid, which every SurgeScaler read from the API has.
    if let Some(uid) = &scaler.metadata.uid {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "surge.dev/v1alpha1",
            "kind": "SurgeScaler",
            "name": name,
            "uid": uid,
        }]);
    }
    json!({
        "apiVersion": "autoscaling.x-k8s.io/v1beta1",
        "kind": "CapacityBuffer",
        "metadata": metadata,
        "spec": {
            "scalableRef": {"apiGroup": "apps", "kind": kind, "name": target.name},
            "replicas": replicas,
        },
    })
}

impl TargetLoop {
    /// Notes a scale write of this loop, for the headroom's size.
    pub(super) fn note_scale(&mut self, now: Millis, from: i32, to: i32) {
        if self.scaler.spec.headroom.is_some() {
            self.headroom
                .get_or_insert_with(HeadroomLoop::default)
                .memory
                .record(now, from, to);
        }
    }

    /// Writes the CapacityBuffer when the spare pods wanted changed (or a failed write is due
    /// again). Only the owner of the target calls it.
    pub(super) async fn sync_headroom(&mut self, now: Millis) {
        let Some(scale) = self.scale.clone() else {
            return;
        };
        let (sink, wanted) = match self.scaler.spec.headroom.clone() {
            Some(spec) => {
                let max_replicas = self.scaler.spec.max_replicas;
                let headroom = self.headroom.get_or_insert_with(HeadroomLoop::default);
                let wanted = spare_replicas(
                    &spec,
                    &mut headroom.memory,
                    now,
                    scale.replicas,
                    max_replicas,
                );
                (Sink::of(&self.scaler), wanted)
            }
            // Turned off: what this loop wrote asks for nothing any more (a buffer stays,
            // empty, until the SurgeScaler is deleted and takes it along).
            None => match &self.headroom {
                Some(HeadroomLoop {
                    written_to: Some(sink),
                    written: Some(n),
                    ..
                }) if *n > 0 => (sink.clone(), 0),
                _ => {
                    self.headroom = None;
                    return;
                }
            },
        };
        let headroom = self.headroom.get_or_insert_with(HeadroomLoop::default);
        headroom.wanted = Some(wanted);
        let due = headroom.retry_at.is_none_or(|t| Instant::now() >= t);
        let moved = headroom.written_to.as_ref().is_some_and(|to| *to != sink);
        if (headroom.written == Some(wanted) && !moved) || !due {
            return;
        }
        // Moved (a buffer replaced by placeholders, or the other way): the old place first asks
        // for nothing, so that the cluster does not keep room twice.
        let old = headroom
            .written_to
            .clone()
            .filter(|_| moved && headroom.written.is_some_and(|n| n > 0));
        if let Some(old) = old
            && self.write_headroom(&old, 0).await.is_ok()
        {
            let headroom = self.headroom.get_or_insert_with(HeadroomLoop::default);
            headroom.written = Some(0);
        }
        let result = self.write_headroom(&sink, wanted).await;
        let headroom = self.headroom.get_or_insert_with(HeadroomLoop::default);
        match result {
            Ok(()) => {
                tracing::info!(target = %self.key, to = ?sink, replicas = wanted, "headroom resized");
                headroom.written = Some(wanted);
                headroom.written_to = Some(sink);
                headroom.retry_at = None;
                headroom.message = None;
            }
            Err(error) => {
                let message = match (&sink, error.code()) {
                    // The cluster has no CapacityBuffer API (no Karpenter 1.14+ with its
                    // CapacityBuffer gate, no Cluster Autoscaler that serves it).
                    (Sink::Buffer(_), Some(404)) => format!(
                        "no CapacityBuffer API (autoscaling.x-k8s.io/v1beta1) in this cluster \
                         (set headroom.placeholders to scale placeholder pods instead): {}",
                        error.message()
                    ),
                    (Sink::Placeholders(name), Some(404)) => format!(
                        "headroom.placeholders: no Deployment {name} in this namespace: {}",
                        error.message()
                    ),
                    _ => error.message(),
                };
                tracing::warn!(target = %self.key, to = ?sink, %message, "headroom not written");
                headroom.retry_at = Some(Instant::now() + RETRY);
                headroom.message = Some(message);
            }
        }
    }

    /// Asks `sink` for `replicas` spare pods.
    async fn write_headroom(&self, sink: &Sink, replicas: i32) -> Result<(), ApiError> {
        let namespace = self.scaler.metadata.namespace.clone().unwrap_or_default();
        match sink {
            Sink::Buffer(name) => {
                let resource = ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk("autoscaling.x-k8s.io", "v1beta1", "CapacityBuffer"),
                    "capacitybuffers",
                );
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.ctx.client.clone(), &namespace, &resource);
                let body = capacity_buffer(&self.scaler, replicas);
                let params = PatchParams::apply(FIELD_MANAGER).force();
                self.ctx
                    .call(
                        Operation::apply_capacity_buffer,
                        api.patch(name, &params, &Patch::Apply(&body)),
                    )
                    .await
                    .map(|_| ())
            }
            Sink::Placeholders(name) => {
                let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &namespace);
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
                self.ctx
                    .call(
                        Operation::patch_scale,
                        api.patch_scale(name, &params, &patch),
                    )
                    .await
                    .map(|_| ())
            }
        }
    }

    /// The headroom side of the status, once sized.
    pub(super) fn headroom_status(&self) -> Option<HeadroomStatus> {
        self.scaler.spec.headroom.as_ref()?;
        let headroom = self.headroom.as_ref()?;
        let (capacity_buffer, placeholders) = match Sink::of(&self.scaler) {
            Sink::Buffer(name) => (Some(name), None),
            Sink::Placeholders(name) => (None, Some(name)),
        };
        Some(HeadroomStatus {
            replicas: headroom.written.or(headroom.wanted)?,
            capacity_buffer,
            placeholders,
            message: headroom.message.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_points_at_the_target_and_is_owned_by_the_surgescaler() {
        let mut scaler: SurgeScaler = serde_json::from_value(json!({
            "apiVersion": "surge.dev/v1alpha1", "kind": "SurgeScaler",
            "metadata": {"name": "api", "namespace": "web", "uid": "u-1"},
            "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": "db"}, "maxReplicas": 9,
                     "metric": {"type": "rps", "target": 50},
                     "headroom": {"minReplicas": 2}}
        }))
        .unwrap();
        assert_eq!(Sink::of(&scaler), Sink::Buffer("api-headroom".into()));
        let buffer = capacity_buffer(&scaler, 3);
        assert_eq!(buffer["metadata"]["name"], "api-headroom");
        assert_eq!(buffer["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            buffer["spec"],
            json!({"scalableRef": {"apiGroup": "apps", "kind": "StatefulSet", "name": "db"},
                   "replicas": 3})
        );
        scaler.metadata.uid = None;
        assert!(
            capacity_buffer(&scaler, 0)["metadata"]
                .get("ownerReferences")
                .is_none()
        );
    }
}

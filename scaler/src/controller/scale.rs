//! The target's side of a loop: reading and writing its `scale` subresource, and looking for
//! another autoscaler (an HPA, a KEDA ScaledObject) that already drives it.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::json;

use super::{ApiError, FIELD_MANAGER, TargetLoop};
use crate::crd::TargetKind;
use crate::metrics::Operation;

/// The target's scale as last read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleView {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.replicas`.
    pub ready: i32,
}

impl ScaleView {
    pub(super) fn from_scale(scale: &Scale) -> Self {
        let replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let ready = scale.status.as_ref().map_or(replicas, |s| s.replicas);
        Self { replicas, ready }
    }
}

impl TargetLoop {
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

    pub(super) async fn patch_scale(&self, replicas: i32) -> Result<Scale, ApiError> {
        let (kind, name) = self.scale_api_path();
        let client = self.ctx.client.clone();
        let ns = &self.key.namespace;
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
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

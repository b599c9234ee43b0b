//! What the node writes before a scaler container starts: its volumes (Secret, ConfigMap,
//! emptyDir, the projected ServiceAccount volume) and its ServiceAccount's kubeconfig, with a
//! token bound to the pod from the TokenRequest API, as a kubelet mounts them.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::BoundObjectReference;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;

use super::containers::{self, Mount};
use super::pod::{LocalPod, Runtime};
use super::scaler_container;
use super::{NodeOptions, TOKEN_LIFETIME};

/// Writes the scaler pod's volumes and its ServiceAccount's kubeconfig, and its command line.
pub(super) async fn prepare_scaler(
    client: &Client,
    options: &NodeOptions,
    pod: &LocalPod,
) -> Result<scaler_container::Prepared, String> {
    let Runtime::Scaler(scaler) = &pod.runtime else {
        return Err("not a scaler pod".into());
    };
    let spec = pod.source.spec.clone().unwrap_or_default();
    std::fs::create_dir_all(&pod.dir).map_err(|e| format!("{}: {e}", pod.dir.display()))?;
    let account = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let bound = BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.name.clone()),
        uid: Some(pod.uid.clone()),
    };
    let token = surge_cluster::tokens::request_token(
        client,
        &pod.namespace,
        &account,
        Some(bound),
        TOKEN_LIFETIME,
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut mounts = Vec::new();
    for mount in scaler.container.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| format!("volumeMount {}: no such volume", mount.name))?;
        let dir = containers::volume_dir(&pod.dir, &volume.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &pod.namespace);
            let data = secrets
                .get(&name)
                .await
                .map_err(|e| format!("volume {}: Secret {name}: {e}", volume.name))?
                .data
                .unwrap_or_default();
            files = select(
                data.into_iter().map(|(k, v)| (k, v.0)).collect(),
                secret.items.as_deref(),
            );
        } else if let Some(map) = &volume.config_map {
            let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &pod.namespace);
            let data = maps
                .get(&map.name)
                .await
                .map_err(|e| format!("volume {}: ConfigMap {}: {e}", volume.name, map.name))?
                .data
                .unwrap_or_default();
            files = select(
                data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
                map.items.as_deref(),
            );
        } else if volume.projected.is_some() {
            // The ServiceAccount admission's kube-api-access volume.
            files = vec![
                ("token".into(), token.clone().into_bytes()),
                ("ca.crt".into(), options.ca_pem.clone().into_bytes()),
                ("namespace".into(), pod.namespace.clone().into_bytes()),
            ];
        } else if volume.empty_dir.is_none() {
            return Err(format!(
                "volume {}: only secret, configMap, emptyDir and the projected ServiceAccount \
                 volume are supported on this node",
                volume.name
            ));
        }
        for (path, bytes) in files {
            let file = dir.join(&path);
            std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        mounts.push(Mount {
            mount_path: mount.mount_path.clone(),
            host_dir: dir,
        });
    }
    let kubeconfig = pod.dir.join("kubeconfig");
    surge_cluster::tokens::write_token_kubeconfig(
        &kubeconfig,
        &options.server,
        &options.ca_pem,
        &pod.namespace,
        &account,
        &token,
    )
    .map_err(|e| e.to_string())?;
    scaler_container::prepare(
        &scaler.container,
        pod.local_ip(),
        &mounts,
        &kubeconfig,
        pod.dir.join(format!("{}.log", scaler.container.name)),
    )
}

/// A volume's files: every key, or the listed `items` at their paths.
fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Vec<(String, Vec<u8>)> {
    match items {
        None => data.into_iter().collect(),
        Some(items) => items
            .iter()
            .filter_map(|item| Some((item.path.clone(), data.get(&item.key)?.clone())))
            .collect(),
    }
}

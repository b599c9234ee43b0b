//! What the node writes before a scaler container starts, as a kubelet mounts it: its volumes
//! (Secret, ConfigMap, emptyDir, the projected ServiceAccount volume) and its ServiceAccount
//! token, bound to the pod, from the TokenRequest API; renewed at 80 % of its lifetime.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use k8s_openapi::api::authentication::v1::BoundObjectReference;
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret};
use kube::Client;
use kube::api::Api;

use super::containers::{self, Mount};
use super::pod::{LocalPod, Runtime};
use super::scaler_container::{self, Prepared, Token};
use super::{NodeOptions, TOKEN_LIFETIME};
use crate::pods::{Endpoint, Endpoints};
use crate::service_proxy::ServiceProxy;

/// Prepares a scaler pod's container when it is due (retried after a back-off on failure), or
/// renews its token when that is due. Nothing for other pods.
pub(super) async fn prepare_or_refresh(
    client: &Client,
    options: &NodeOptions,
    pod: &mut LocalPod,
    now: Instant,
) {
    let Runtime::Scaler(scaler) = &pod.runtime else {
        return;
    };
    if scaler.needs_preparing(now) {
        let prepared = prepare(client, options, pod, now).await;
        if let Runtime::Scaler(scaler) = &mut pod.runtime {
            match prepared {
                Ok(prepared) => scaler.prepared(prepared),
                Err(message) => {
                    tracing::warn!(pod = %pod.name, %message, "node: cannot run the container yet");
                    scaler.preparing_failed(now, message);
                }
            }
        }
        return;
    }
    let Some(token) = scaler.prepared.as_ref().map(|p| p.token.clone()) else {
        return;
    };
    if now < token.refresh_at {
        return;
    }
    match pod_token(client, pod).await {
        Ok(fresh) => {
            let written = token
                .files
                .iter()
                .try_for_each(|file| std::fs::write(file, &fresh));
            if let (Ok(()), Runtime::Scaler(scaler)) = (written, &mut pod.runtime)
                && let Some(prepared) = &mut scaler.prepared
            {
                prepared.token.refresh_at = now + TOKEN_LIFETIME * 4 / 5;
            }
        }
        Err(message) => tracing::warn!(pod = %pod.name, %message, "node: renewing the token"),
    }
}

/// A token of the pod's ServiceAccount, bound to the pod (it dies with it).
async fn pod_token(client: &Client, pod: &LocalPod) -> Result<String, String> {
    let account = pod
        .source
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let bound = BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.name.clone()),
        uid: Some(pod.uid.clone()),
    };
    surge_cluster::tokens::request_token(
        client,
        &pod.namespace,
        &account,
        Some(bound),
        TOKEN_LIFETIME,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Writes the volumes and the token, and the command line that reads them.
async fn prepare(
    client: &Client,
    options: &NodeOptions,
    pod: &LocalPod,
    now: Instant,
) -> Result<Prepared, String> {
    let Runtime::Scaler(scaler) = &pod.runtime else {
        return Err("not a scaler pod".into());
    };
    let spec = pod.source.spec.clone().unwrap_or_default();
    std::fs::create_dir_all(&pod.dir).map_err(|e| format!("{}: {e}", pod.dir.display()))?;
    let token = pod_token(client, pod).await?;
    let token_file = pod.dir.join("token");
    write(&token_file, token.as_bytes())?;
    let mut token_files = vec![token_file.clone()];
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
        let files: Vec<(String, Vec<u8>)> = if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &pod.namespace);
            let data = secrets
                .get(&name)
                .await
                .map_err(|e| format!("volume {}: Secret {name}: {e}", volume.name))?
                .data
                .unwrap_or_default();
            let data = data.into_iter().map(|(k, v)| (k, v.0)).collect();
            select(&volume.name, data, secret.items.as_deref())?
        } else if let Some(map) = &volume.config_map {
            let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &pod.namespace);
            let data = maps
                .get(&map.name)
                .await
                .map_err(|e| format!("volume {}: ConfigMap {}: {e}", volume.name, map.name))?
                .data
                .unwrap_or_default();
            let data = data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            select(&volume.name, data, map.items.as_deref())?
        } else if volume.projected.is_some() {
            // The ServiceAccount admission's kube-api-access volume.
            token_files.push(dir.join("token"));
            vec![
                ("token".into(), token.clone().into_bytes()),
                ("ca.crt".into(), options.ca_pem.clone().into_bytes()),
                ("namespace".into(), pod.namespace.clone().into_bytes()),
            ]
        } else if volume.empty_dir.is_some() {
            Vec::new()
        } else {
            return Err(format!(
                "volume {}: only secret, configMap, emptyDir and the projected ServiceAccount \
                 volume are supported on this node",
                volume.name
            ));
        };
        for (path, bytes) in files {
            write(&dir.join(&path), &bytes)?;
        }
        mounts.push(Mount {
            mount_path: mount.mount_path.clone(),
            host_dir: dir,
        });
    }
    let account = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let (api_route, server) = api_route(&options.server).await?;
    let kubeconfig = pod.dir.join("kubeconfig");
    surge_cluster::tokens::write_token_file_kubeconfig(
        &kubeconfig,
        &server,
        &options.ca_pem,
        &pod.namespace,
        &account,
        &token_file,
    )
    .map_err(|e| e.to_string())?;
    let fields = scaler_container::PodFields {
        name: &pod.name,
        namespace: &pod.namespace,
        local_ip: pod.local_ip(),
    };
    let (args, env) =
        scaler_container::command_line(&scaler.container, &fields, &mounts, &kubeconfig)?;
    Ok(Prepared {
        args,
        env,
        log: pod.dir.join(format!("{}.log", scaler.container.name)),
        token: Token {
            files: token_files,
            refresh_at: now + TOKEN_LIFETIME * 4 / 5,
        },
        api_route: Arc::new(api_route),
    })
}

/// A pod's own path to the API server at `server` (`https://<host>:<port>`, the host
/// `localhost` or an IP address) and the URL that reaches it through the path: a forwarded
/// loopback port, as kube-proxy forwards the `kubernetes` Service's ClusterIP. TLS passes
/// through untouched, and the URL keeps the host, which the serving certificate names.
async fn api_route(server: &str) -> Result<(ServiceProxy, String), String> {
    let invalid = || format!("the API server's URL {server} is not https://<host>:<port>");
    let (host, port) = server
        .strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/'))
        .and_then(|rest| rest.rsplit_once(':'))
        .ok_or_else(invalid)?;
    let ip: IpAddr = match host {
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        ip => ip.parse().map_err(|_| invalid())?,
    };
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let endpoints: Endpoints = Arc::new(RwLock::new(vec![Endpoint {
        pod: "kube-apiserver".into(),
        addr: SocketAddr::new(ip, port),
    }]));
    let route = ServiceProxy::start(endpoints)
        .await
        .map_err(|e| format!("the pod's route to the API server: {e}"))?;
    let url = format!("https://{host}:{}", route.addr().port());
    Ok((route, url))
}

fn write(path: &PathBuf, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// A volume's files: every key, or the listed `items` at their paths (a listed key that is
/// missing fails the mount, as on a kubelet).
fn select(
    volume: &str,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    match items {
        None => Ok(data.into_iter().collect()),
        Some(items) => items
            .iter()
            .map(|item| {
                data.get(&item.key)
                    .map(|bytes| (item.path.clone(), bytes.clone()))
                    .ok_or_else(|| format!("volume {volume}: no key {} to mount", item.key))
            })
            .collect(),
    }
}

//! What the sandbox's node runs for a pod, decided from its containers' images, as a container
//! runtime would pull and run them. There are no images here, so each known image maps to a
//! program of this machine:
//!
//! | image | what runs |
//! |---|---|
//! | [`APP_IMAGE`] + [`PROXY_IMAGE`] (an app pod with its Istio sidecar) | the sandbox's app (finite capacity, start-up delay from its env) and a real Envoy 1.40 with the surge filter ([`crate::app_pod`]) |
//! | `.../surge-scaler:<tag>` (the chart's scaler) | the `surge-scaler` binary with the container's `args` and `env` |
//! | [`PAUSE_IMAGE`] (in every container of the pod) | nothing: the containers are running and ready at once, as pause containers are (tests' pods that only need to exist) |
//! | anything else | nothing: the container waits in `ErrImagePull`, as on a node that cannot pull it |
//!
//! There are no mount or network namespaces either: a container's `0.0.0.0` listen address
//! becomes its pod's loopback address ([`super::network`]), and a volume's `mountPath` in its
//! args and env becomes the folder where the node wrote that volume.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::app::AppModel;

/// The port of Istio's sidecar that serves its Envoy's `/stats/prometheus` (`http-envoy-prom`),
/// which Prometheus scrapes.
pub const ISTIO_STATS_PORT: u16 = 15090;
/// The sandbox app's image (the `app` container).
pub const APP_IMAGE: &str = "surge.dev/sandbox-app:1";
/// The sidecar's image as Istio 1.30's injector writes it (the `istio-proxy` container); this
/// node runs upstream Envoy 1.40 with the surge filter for it (see the README: no Istio build
/// of Envoy can run here).
pub const PROXY_IMAGE: &str = "docker.io/istio/proxyv2:1.30.3";

/// Kubernetes' pause image: a container that only exists.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// The app's settings, read from its container's environment.
pub const ENV_CONCURRENCY: &str = "SANDBOX_CONCURRENCY";
/// Time per request (ms).
pub const ENV_SERVICE_TIME_MS: &str = "SANDBOX_SERVICE_TIME_MS";
/// Requests waiting beyond which the app answers 503.
pub const ENV_QUEUE: &str = "SANDBOX_QUEUE";
/// Time from the container's creation to its start (image pull and boot, ms).
pub const ENV_STARTUP_DELAY_MS: &str = "SANDBOX_STARTUP_DELAY_MS";

/// What a pod runs on this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Program {
    /// The sandbox app and its sidecar.
    App {
        /// Capacity.
        model: AppModel,
        /// Creation to start of the `app` container.
        startup_delay: Duration,
        /// The owning Deployment (the proxy's `WORKLOAD_NAME`).
        workload: String,
    },
    /// Pause containers: nothing runs, every container is running and ready at once.
    Pause,
    /// The surge-scaler binary, as the container asks.
    Scaler {
        /// The container.
        container: Box<Container>,
    },
    /// Nothing runs: why, as the container's waiting reason and message.
    Unrunnable {
        /// `ErrImagePull` or `CreateContainerConfigError`.
        reason: &'static str,
        /// Details.
        message: String,
    },
}

fn is_scaler_image(image: &str) -> bool {
    let name = image.split('@').next().unwrap_or(image);
    let repository = name.rsplit_once(':').map_or(name, |(repository, tag)| {
        // A registry port (`host:5000/x`) is not a tag.
        if tag.contains('/') { name } else { repository }
    });
    repository.rsplit('/').next() == Some("surge-scaler")
}

fn env_number(container: &Container, key: &str, default: u64) -> Result<u64, String> {
    let Some(var) = container.env.iter().flatten().find(|v| v.name == key) else {
        return Ok(default);
    };
    let value = var
        .value
        .as_deref()
        .ok_or_else(|| format!("env {key}: only a literal value is supported here"))?;
    value
        .parse()
        .map_err(|_| format!("env {key}: {value:?} is not a whole number"))
}

/// The Deployment a pod belongs to: its ReplicaSet owner's name without the
/// `pod-template-hash` suffix (what Istio's injector writes as `WORKLOAD_NAME`), else the
/// ReplicaSet's or the pod's own name.
pub fn workload_of(pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return name;
    };
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match hash {
        Some(hash) if owner.kind == "ReplicaSet" => owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
            .unwrap_or(&owner.name)
            .to_owned(),
        _ => owner.name.clone(),
    }
}

/// What `pod` runs here.
pub fn program(pod: &Pod) -> Program {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c.image.as_deref().unwrap_or_default())
        .collect();
    if let [one] = containers
        && is_scaler_image(images[0])
    {
        return Program::Scaler {
            container: Box::new(one.clone()),
        };
    }
    if !images.is_empty() && images.iter().all(|i| *i == PAUSE_IMAGE) {
        return Program::Pause;
    }
    if images.len() == 2 && images.contains(&APP_IMAGE) && images.contains(&PROXY_IMAGE) {
        let app = containers
            .iter()
            .find(|c| c.image.as_deref() == Some(APP_IMAGE));
        let settings = app.ok_or_else(String::new).and_then(|app| {
            let model = AppModel {
                concurrency: env_number(app, ENV_CONCURRENCY, 4)? as u32,
                service_time: Duration::from_millis(env_number(app, ENV_SERVICE_TIME_MS, 40)?),
                queue: env_number(app, ENV_QUEUE, 200)? as u32,
            };
            let delay = Duration::from_millis(env_number(app, ENV_STARTUP_DELAY_MS, 2000)?);
            Ok((model, delay))
        });
        return match settings {
            Ok((model, startup_delay)) if model.concurrency > 0 => Program::App {
                model,
                startup_delay,
                workload: workload_of(pod),
            },
            Ok(_) => Program::Unrunnable {
                reason: "CreateContainerConfigError",
                message: format!("env {ENV_CONCURRENCY}: must be at least 1"),
            },
            Err(message) => Program::Unrunnable {
                reason: "CreateContainerConfigError",
                message,
            },
        };
    }
    Program::Unrunnable {
        reason: "ErrImagePull",
        message: format!(
            "this sandbox node runs only {APP_IMAGE} with {PROXY_IMAGE}, or the surge-scaler \
             image; the pod asks for {images:?}"
        ),
    }
}

/// One volume mount, mapped to where the node wrote the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The path the container expects.
    pub mount_path: String,
    /// The folder on this machine.
    pub host_dir: PathBuf,
}

/// A container argument or env value as it must read without namespaces: a listen address on
/// all interfaces becomes the pod's own, a mounted path the volume's folder.
pub fn rewrite(value: &str, pod_local: IpAddr, mounts: &[Mount]) -> String {
    let mut out = value
        .replace("0.0.0.0:", &format!("{pod_local}:"))
        .replace("[::]:", &format!("{pod_local}:"));
    // The longest mount path first, so that /a/b wins over /a.
    let mut mounts: Vec<&Mount> = mounts.iter().collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_path.len()));
    for mount in mounts {
        let path = mount.mount_path.trim_end_matches('/');
        if path.is_empty() {
            continue;
        }
        out = out.replace(path, &mount.host_dir.display().to_string());
    }
    out
}

/// The folder of volume `name` in pod folder `pod_dir`.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn app_pod(env: serde_json::Value) -> Pod {
        pod(json!({
            "metadata": {
                "name": "app-5d8f7c9b4-x2x8q",
                "labels": {"pod-template-hash": "5d8f7c9b4"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-5d8f7c9b4", "uid": "u", "controller": true}],
            },
            "spec": {"containers": [
                {"name": "app", "image": APP_IMAGE, "env": env},
                {"name": "istio-proxy", "image": PROXY_IMAGE},
            ]},
        }))
    }

    #[test]
    fn an_app_pod_runs_the_app_with_its_env_and_knows_its_deployment() {
        let program = program(&app_pod(json!([
            {"name": ENV_CONCURRENCY, "value": "8"},
            {"name": ENV_STARTUP_DELAY_MS, "value": "500"},
        ])));
        let Program::App {
            model,
            startup_delay,
            workload,
        } = program
        else {
            panic!("{program:?}");
        };
        assert_eq!(model.concurrency, 8);
        assert_eq!(model.service_time, Duration::from_millis(40));
        assert_eq!(startup_delay, Duration::from_millis(500));
        assert_eq!(workload, "app");
    }

    #[test]
    fn a_bad_env_value_is_named() {
        let program = program(&app_pod(json!([{"name": ENV_QUEUE, "value": "lots"}])));
        assert_eq!(
            program,
            Program::Unrunnable {
                reason: "CreateContainerConfigError",
                message: "env SANDBOX_QUEUE: \"lots\" is not a whole number".into(),
            }
        );
    }

    #[test]
    fn the_scaler_image_runs_the_scaler_and_others_cannot_be_pulled() {
        for image in [
            "ghcr.io/surge-autoscaler/surge-scaler:0.1.0",
            "registry:5000/surge-scaler@sha256:0123",
            "surge-scaler",
        ] {
            let scaler = pod(json!({"spec": {"containers": [{"name": "scaler", "image": image}]}}));
            assert!(
                matches!(program(&scaler), Program::Scaler { .. }),
                "{image}"
            );
        }
        let pause = pod(json!({"spec": {"containers": [{"name": "p", "image": PAUSE_IMAGE}]}}));
        assert_eq!(program(&pause), Program::Pause);
        let nginx = pod(json!({"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}));
        assert!(matches!(
            program(&nginx),
            Program::Unrunnable {
                reason: "ErrImagePull",
                ..
            }
        ));
    }

    #[test]
    fn listen_addresses_and_mount_paths_are_rewritten_for_the_node() {
        let mounts = [
            Mount {
                mount_path: "/var/run/secrets/surge".into(),
                host_dir: "/tmp/pods/s/volumes/token".into(),
            },
            Mount {
                mount_path: "/var/run/secrets".into(),
                host_dir: "/tmp/other".into(),
            },
        ];
        let ip: IpAddr = "127.244.0.5".parse().unwrap();
        assert_eq!(
            rewrite("--ingest-addr=0.0.0.0:8080", ip, &mounts),
            "--ingest-addr=127.244.0.5:8080"
        );
        assert_eq!(
            rewrite("--token-file=/var/run/secrets/surge/token", ip, &mounts),
            "--token-file=/tmp/pods/s/volumes/token/token"
        );
        assert_eq!(
            rewrite("--log-format=json", ip, &mounts),
            "--log-format=json"
        );
    }
}

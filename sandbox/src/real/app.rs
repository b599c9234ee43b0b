//! The app as the sandbox deploys it on the real control plane: its Deployment and Service,
//! and the observer that notes its replicas as the controllers and the node see them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::APP_PORT;
use crate::node::RunningPods;
use crate::node::containers::{
    APP_IMAGE, ENV_CONCURRENCY, ENV_QUEUE, ENV_SERVICE_TIME_MS, ENV_STARTUP_DELAY_MS,
    ISTIO_STATS_PORT, PROXY_IMAGE,
};
use crate::pods::{Endpoints, PodCounts};
use crate::run::{NAMESPACE, RunError, WORKLOAD};
use crate::scenario::Scenario;

/// The app's Service: port 80 to the pods' `http` port.
pub(super) fn service() -> Result<Service, RunError> {
    serde_json::from_value(json!({
        "metadata": {"name": WORKLOAD, "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": WORKLOAD},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }))
    .map_err(|e| RunError::Setup(format!("the app's Service: {e}")))
}

/// The app's Deployment: its container and the sidecar's, with the scenario's pod model in
/// the app container's environment.
pub(super) fn deployment(scenario: &Scenario) -> Result<Deployment, RunError> {
    let pods = &scenario.pods;
    let value = json!({
        "metadata": {"name": WORKLOAD, "namespace": NAMESPACE, "labels": {"app": WORKLOAD}},
        "spec": {
            // At least one, so that a scale-to-zero scenario starts warm and goes to zero.
            "replicas": scenario.scaler.min_replicas.max(1),
            "selector": {"matchLabels": {"app": WORKLOAD}},
            "template": {
                "metadata": {"labels": {"app": WORKLOAD}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "app",
                            "image": APP_IMAGE,
                            "ports": [{"name": "http", "containerPort": APP_PORT}],
                            "env": [
                                {"name": ENV_CONCURRENCY, "value": pods.concurrency.to_string()},
                                {"name": ENV_SERVICE_TIME_MS, "value": pods.service_time_ms.to_string()},
                                {"name": ENV_QUEUE, "value": pods.queue.to_string()},
                                {"name": ENV_STARTUP_DELAY_MS, "value": pods.startup_delay_ms.to_string()},
                            ],
                            "resources": {"requests": {"cpu": scenario.pods.cpu, "memory": "64Mi"}},
                        },
                        {
                            "name": "istio-proxy",
                            "image": PROXY_IMAGE,
                            "ports": [{"name": "http-envoy-prom", "containerPort": ISTIO_STATS_PORT}],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                        },
                    ],
                },
            },
        },
    });
    serde_json::from_value(value).map_err(|e| RunError::Setup(format!("the app's Deployment: {e}")))
}

/// Follows desired replicas (the Deployment's spec), replicas (its pods not being deleted),
/// ready (the Service's ready endpoints) and running (pods with processes on any node), and
/// notes each change.
pub(super) async fn observe(
    client: Client,
    endpoints: Endpoints,
    mut endpoint_changes: tokio::sync::watch::Receiver<u64>,
    running: RunningPods,
    history: Arc<Mutex<Vec<PodCounts>>>,
) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let mut deployment_events = watcher(
        deployments,
        watcher::Config::default().fields(&format!("metadata.name={WORKLOAD}")),
    )
    .default_backoff()
    .applied_objects()
    .boxed();
    let mut pod_events = watcher(
        pods,
        watcher::Config::default().labels(&format!("app={WORKLOAD}")),
    )
    .default_backoff()
    .boxed();
    let mut desired = 0u32;
    let mut live: BTreeSet<String> = BTreeSet::new();
    // A relist in progress: counted once it is whole, so no false dip shows meanwhile.
    let mut relisted: Option<BTreeSet<String>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last = None;
    loop {
        tokio::select! {
            Some(event) = deployment_events.next() => {
                if let Ok(deployment) = event {
                    desired = deployment.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
                }
            }
            Some(event) = pod_events.next() => match event {
                Ok(watcher::Event::Apply(pod)) => {
                    if let Some(name) = pod.metadata.name {
                        if pod.metadata.deletion_timestamp.is_some() {
                            live.remove(&name);
                        } else {
                            live.insert(name);
                        }
                    }
                }
                Ok(watcher::Event::InitApply(pod)) => {
                    if let (Some(relisted), Some(name)) = (&mut relisted, pod.metadata.name)
                        && pod.metadata.deletion_timestamp.is_none()
                    {
                        relisted.insert(name);
                    }
                }
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(name) = pod.metadata.name {
                        live.remove(&name);
                    }
                }
                Ok(watcher::Event::Init) => relisted = Some(BTreeSet::new()),
                Ok(watcher::Event::InitDone) => live = relisted.take().unwrap_or_default(),
                Err(_) => {}
            },
            _ = endpoint_changes.changed() => {}
            _ = tick.tick() => {}
        }
        let ready = endpoints.read().unwrap_or_else(|e| e.into_inner()).len() as u32;
        let running = running.total();
        let counts = (desired, live.len() as u32, ready, running);
        if last != Some(counts) {
            last = Some(counts);
            history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(PodCounts {
                    at: Instant::now(),
                    desired,
                    replicas: counts.1,
                    ready,
                    running,
                });
        }
    }
}

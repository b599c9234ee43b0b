//! A Service's ready endpoints, followed through its EndpointSlices as a mesh proxy or
//! kube-proxy follows them, for the load generator (the app's Service) and the report tap (the
//! scaler's Service). Only endpoints with `conditions.ready` count: a pod that is starting,
//! failing its readiness probe or terminating gets no traffic.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::node::network::PodNetwork;
use crate::pods::{Endpoint, Endpoints};

/// The ready endpoints of one slice, on `port` (by name, else the slice's first port), at the
/// addresses `network` serves them on.
pub fn ready_endpoints(
    slice: &EndpointSlice,
    port: Option<&str>,
    network: PodNetwork,
) -> Vec<Endpoint> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let Some(number) = ports
        .iter()
        .find(|p| port.is_none_or(|name| p.name.as_deref() == Some(name)))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
    else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| {
            let ip: IpAddr = e.addresses.first()?.parse().ok()?;
            Some(Endpoint {
                pod: e.target_ref.as_ref()?.name.clone()?,
                addr: network.local_socket(SocketAddr::new(ip, number))?,
            })
        })
        .collect()
}

/// A Service followed; dropping it stops following (the endpoints stay as last seen).
pub struct ServiceEndpoints {
    endpoints: Endpoints,
    changes: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for ServiceEndpoints {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceEndpoints {
    /// Follows Service `namespace/service`'s ready endpoints on port `port` (its name), served
    /// by `network`.
    pub fn follow(
        client: Client,
        namespace: &str,
        service: &str,
        port: Option<&str>,
        network: PodNetwork,
    ) -> Self {
        let endpoints: Endpoints = Arc::default();
        let (notify, changes) = watch::channel(0u64);
        let slices: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let port = port.map(str::to_owned);
        let shared = Arc::clone(&endpoints);
        let task = tokio::spawn(async move {
            let mut by_slice: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
            let mut stream = watcher(slices, config).default_backoff().boxed();
            let mut pending: Option<BTreeMap<String, Vec<Endpoint>>> = None;
            while let Some(event) = stream.next().await {
                let changed = match event {
                    Ok(watcher::Event::Apply(slice)) => {
                        let name = slice.metadata.name.clone().unwrap_or_default();
                        by_slice.insert(name, ready_endpoints(&slice, port.as_deref(), network));
                        true
                    }
                    Ok(watcher::Event::Delete(slice)) => {
                        by_slice.remove(&slice.metadata.name.clone().unwrap_or_default());
                        true
                    }
                    Ok(watcher::Event::Init) => {
                        pending = Some(BTreeMap::new());
                        false
                    }
                    Ok(watcher::Event::InitApply(slice)) => {
                        if let Some(pending) = &mut pending {
                            let name = slice.metadata.name.clone().unwrap_or_default();
                            pending.insert(name, ready_endpoints(&slice, port.as_deref(), network));
                        }
                        false
                    }
                    Ok(watcher::Event::InitDone) => {
                        by_slice = pending.take().unwrap_or_default();
                        true
                    }
                    Err(error) => {
                        tracing::debug!(%error, "following endpoint slices");
                        false
                    }
                };
                if changed {
                    let mut all: Vec<Endpoint> = by_slice.values().flatten().cloned().collect();
                    all.sort_by(|a, b| a.pod.cmp(&b.pod));
                    *shared.write().unwrap_or_else(|e| e.into_inner()) = all;
                    notify.send_modify(|n| *n += 1);
                }
            }
        });
        Self {
            endpoints,
            changes,
            task,
        }
    }

    /// The ready endpoints, shared (updated in place).
    pub fn endpoints(&self) -> Endpoints {
        Arc::clone(&self.endpoints)
    }

    /// How many are ready now.
    pub fn ready(&self) -> u32 {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u32
    }

    /// Changes each time the endpoints do.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_ready_endpoints_count_and_pod_addresses_map_to_the_node() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "app-x"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "a"}},
                {"addresses": ["10.244.0.3"], "conditions": {"ready": false, "terminating": true}, "targetRef": {"kind": "Pod", "name": "b"}},
                {"addresses": ["10.244.0.4"], "targetRef": {"kind": "Pod", "name": "c"}},
            ],
        }))
        .unwrap();
        let network = PodNetwork::on(244);
        let ready = ready_endpoints(&slice, Some("http"), network);
        let pods: Vec<(&str, String)> = ready
            .iter()
            .map(|e| (e.pod.as_str(), e.addr.to_string()))
            .collect();
        assert_eq!(
            pods,
            [
                ("a", "127.244.0.2:8080".into()),
                ("c", "127.244.0.4:8080".into())
            ]
        );
        assert!(ready_endpoints(&slice, Some("admin"), network).is_empty());
    }
}

//! The node's own objects, as a kubelet keeps them: the Node (capacity, conditions, addresses)
//! registered once, and its Lease in `kube-node-lease` renewed as the heartbeat.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node as NodeObject, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{LEASE_SECONDS, NodeError, NodeOptions, api_error};

/// The Node object a kubelet registers: capacity, the conditions it reports, its addresses.
pub(super) fn node_object(options: &NodeOptions) -> NodeObject {
    let now = Time(Timestamp::now());
    let condition = |kind: &str, status: &str, reason: &str| NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
        message: None,
    };
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", options.cpu.clone()),
        ("memory", options.memory.clone()),
        ("pods", options.max_pods.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v)))
    .collect();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", options.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
        ("node.kubernetes.io/instance-type", "surge-sandbox"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    NodeObject {
        metadata: ObjectMeta {
            name: Some(options.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            conditions: Some(vec![
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True", "KubeletReady"),
            ]),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: options.ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: options.name.clone(),
                },
            ]),
            node_info: Some(NodeSystemInfo {
                os_image: "surge-sandbox".into(),
                container_runtime_version: "surge-sandbox://0".into(),
                kubelet_version: surge_cluster::components::kubernetes_version().into(),
                operating_system: "linux".into(),
                architecture: arch.into(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
    }
}

pub(super) async fn register(client: &Client, options: &NodeOptions) -> Result<(), NodeError> {
    let nodes: Api<NodeObject> = Api::all(client.clone());
    let node = node_object(options);
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => nodes
            .patch_status(
                &options.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": node.status })),
            )
            .await
            .map(|_| ())
            .map_err(api_error("update the Node's status")),
        Err(e) => Err(api_error("register the Node")(e)),
    }
}

pub(super) async fn renew_lease(client: &Client, node: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let spec = LeaseSpec {
        holder_identity: Some(node.into()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(MicroTime(Timestamp::now())),
        ..LeaseSpec::default()
    };
    match leases
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.into()),
                    namespace: Some("kube-node-lease".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

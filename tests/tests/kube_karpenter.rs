//! Node elasticity for real: Karpenter 1.14 with its kwok provider, built from its module, on
//! the real control plane. Pods that do not fit the first node stay Pending (the real
//! scheduler says Unschedulable); Karpenter batches them, creates a NodeClaim, and its kwok
//! provider creates the Node after the KWOKNodeClass's boot delay; the sandbox's kubelet
//! fleet reports it Ready; Karpenter lifts its `karpenter.sh/unregistered` taint; the scheduler
//! binds the pod there and the fleet's kubelet runs it.
//!
//! ```text
//!  Deployment 6 x 3 CPU --> first node (16 CPU): 5 fit, 1 Pending (Unschedulable)
//!        Karpenter: NodeClaim c-4x --boot delay--> Node --fleet--> Ready --> pod bound, Running
//! ```

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;
use surge_e2e::installed::{apply, eventually, install, kubectl_ok, wait_ready_replicas};
use surge_nodes::nodepool::{CAPACITY_LABEL, PoolSettings};

/// The boot delay of this test's node class (the default is 30 s; the test needs only to see
/// that it is honoured).
const BOOT: Duration = Duration::from_secs(5);

/// Six pause pods of 3 CPU each: five fit the first node's 16 CPU beside the scaler pod.
fn big_deployment() -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: big, namespace: shop}}
spec:
  replicas: 6
  selector: {{matchLabels: {{app: big}}}}
  template:
    metadata: {{labels: {{app: big}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: {image}
          resources: {{requests: {{cpu: '3', memory: 1Gi}}}}
",
        image = surge_sandbox::node::containers::PAUSE_IMAGE
    )
}

fn created(meta: &kube::api::ObjectMeta) -> SystemTime {
    SystemTime::from(meta.creation_timestamp.as_ref().expect("a creation time").0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_do_not_fit_make_karpenter_launch_a_node_and_run_there_once_it_is_ready() {
    let mut kube = install("karpenter", &[], &[]).await;
    kube.start_karpenter(&PoolSettings {
        boot_delay: BOOT,
        ..PoolSettings::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    apply(&kube, &big_deployment());

    // The real scheduler finds no room for the sixth pod.
    let pods: Api<Pod> = Api::namespaced(kube.client(), "shop");
    let pending = eventually(
        "a pod the scheduler calls Unschedulable",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default()).await.ok()?;
                list.items.into_iter().find(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| {
                                c.type_ == "PodScheduled"
                                    && c.status == "False"
                                    && c.reason.as_deref() == Some("Unschedulable")
                            })
                        })
                })
            }
        },
    )
    .await;
    let pending_name = pending.metadata.name.clone().unwrap();

    // Karpenter launches a node for it, which boots, joins and runs the pod.
    wait_ready_replicas(&kube, "shop", "big", 6, Duration::from_secs(90)).await;
    let bound = pods.get(&pending_name).await.unwrap();
    let node_name = bound
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap();
    let nodes: Api<Node> = Api::all(kube.client());
    let node = nodes.get(&node_name).await.unwrap();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kwok.x-k8s.io/node").map(String::as_str),
        Some("fake"),
        "{labels:?}"
    );
    assert_eq!(
        labels.get(CAPACITY_LABEL).map(String::as_str),
        Some("burst"),
        "{labels:?}"
    );
    assert_eq!(
        labels
            .get("node.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("c-4x-amd64-linux")
    );
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    assert!(
        taints.iter().all(|t| t.key != "karpenter.sh/unregistered"),
        "Karpenter registered the node: {taints:?}"
    );
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("True"));

    // One NodeClaim, for that node; the Node appeared no sooner than the boot delay after it
    // (creation times are whole seconds: one second of slack).
    let claims = kubectl_ok(&kube, &["get", "nodeclaims", "-o", "json"], None);
    let claims: Value = serde_json::from_str(&claims).unwrap();
    let items = claims["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{claims}");
    assert_eq!(
        items[0]["status"]["nodeName"],
        node_name.as_str(),
        "{claims}"
    );
    let claim_created: kube::api::ObjectMeta =
        serde_json::from_value(items[0]["metadata"].clone()).unwrap();
    let boot = created(&node.metadata)
        .duration_since(created(&claim_created))
        .unwrap_or_default();
    assert!(
        boot + Duration::from_secs(1) >= BOOT,
        "the node appeared {boot:?} after its claim"
    );
    // Karpenter sees the node initialized (Ready, its resources registered): it counts it as
    // capacity from now on.
    eventually(
        "the NodeClaim is Initialized",
        Duration::from_secs(30),
        || async {
            let claims = kubectl_ok(&kube, &["get", "nodeclaims", "-o", "json"], None);
            let claims: Value = serde_json::from_str(&claims).ok()?;
            claims["items"][0]["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Initialized" && c["status"] == "True")
                .then_some(())
        },
    )
    .await;
    let joined = kube.elasticity().unwrap().joined();
    assert_eq!(joined.len(), 1, "{joined:?}");
    assert_eq!(joined[0].name, node_name);
    let pod_created = created(&pending.metadata);
    println!(
        "pod created -> NodeClaim {:?}, -> Node {:?}, -> Ready {:?}",
        created(&claim_created)
            .duration_since(pod_created)
            .unwrap_or_default(),
        created(&node.metadata)
            .duration_since(pod_created)
            .unwrap_or_default(),
        joined[0]
            .ready
            .duration_since(pod_created)
            .unwrap_or_default(),
    );
}

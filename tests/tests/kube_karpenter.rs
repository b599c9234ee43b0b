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
//!
//! With headroom, the SurgeScaler's CapacityBuffer makes Karpenter keep a node of room ahead:
//! the scale-up's new pod starts there at once, and Karpenter launches the next room behind it.

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;
use surge_e2e::installed::{
    apply, eventually, install, kubectl_ok, scale_writes, wait_ready_replicas,
};
use surge_nodes::nodepool::{CAPACITY_LABEL, PoolSettings};

/// The boot delay of this test's node class (the default is 30 s; the test needs only to see
/// that it is honoured).
const BOOT: Duration = Duration::from_secs(5);

/// `replicas` pause pods of 3 CPU each in `namespace/name`: five fit the first node's 16 CPU
/// beside the scaler pod.
fn big_deployment(namespace: &str, name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
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

/// The NodeClaims, as `kubectl get nodeclaims -o json` lists them.
fn node_claims(kube: &surge_sandbox::real::RealKube) -> Vec<Value> {
    let listed = kubectl_ok(kube, &["get", "nodeclaims", "-o", "json"], None);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    listed["items"].as_array().cloned().unwrap_or_default()
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
    apply(&kube, &big_deployment("shop", "big", 6));

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_headroom_a_scale_up_starts_on_room_karpenter_made_ahead_and_the_room_is_replaced() {
    let mut kube = install("karpenter_headroom", &[], &[]).await;
    kube.start_karpenter(&PoolSettings {
        boot_delay: BOOT,
        ..PoolSettings::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Five pods fill the first node; the SurgeScaler holds them (no reports) and asks for one
    // spare pod of their shape before any burst.
    apply(&kube, &big_deployment("web", "api", 5));
    wait_ready_replicas(&kube, "web", "api", 5, Duration::from_secs(60)).await;
    let surgescaler = |min: u32| {
        format!(
            "apiVersion: surge.dev/v1alpha1
kind: SurgeScaler
metadata: {{name: api, namespace: web}}
spec:
  scaleTargetRef: {{kind: Deployment, name: api}}
  minReplicas: {min}
  maxReplicas: 10
  metric: {{type: rps, target: 100}}
  headroom: {{minReplicas: 1}}
"
        )
    };
    apply(&kube, &surgescaler(5));

    // Karpenter launches a node for the buffer's spare pod, with nothing pending.
    let buffer = eventually(
        "the CapacityBuffer web/api-headroom",
        Duration::from_secs(30),
        || async {
            let out = kubectl_ok(
                &kube,
                &["get", "capacitybuffers", "-n", "web", "-o", "json"],
                None,
            );
            let listed: Value = serde_json::from_str(&out).ok()?;
            listed["items"].as_array()?.first().cloned()
        },
    )
    .await;
    assert_eq!(buffer["metadata"]["name"], "api-headroom", "{buffer}");
    assert_eq!(buffer["spec"]["replicas"], 1, "{buffer}");
    assert_eq!(buffer["spec"]["scalableRef"]["name"], "api", "{buffer}");
    assert_eq!(
        buffer["metadata"]["ownerReferences"][0]["kind"], "SurgeScaler",
        "{buffer}"
    );
    let elasticity = kube.elasticity().unwrap();
    let room = eventually(
        "a node of headroom joined",
        Duration::from_secs(60),
        || async { elasticity.joined().first().cloned() },
    )
    .await;
    assert_eq!(node_claims(&kube).len(), 1);

    // A scale-up by Surge (its minimum raised: a write of its own, no report needed): the new
    // pod is bound to the room at once, long before another node could boot.
    apply(&kube, &surgescaler(6));
    let write = eventually(
        "Surge's scale write 5 -> 6",
        Duration::from_secs(10),
        || async { scale_writes(&kube, "web", "api").into_iter().next() },
    )
    .await;
    wait_ready_replicas(&kube, "web", "api", 6, Duration::from_secs(30)).await;
    let ready_seen = SystemTime::now();
    let pods: Api<Pod> = Api::namespaced(kube.client(), "web");
    let on_room: Vec<Pod> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(room.name.as_str())
        })
        .collect();
    assert_eq!(on_room.len(), 1, "the new pod runs on the room made ahead");
    // From the write (as the API server received it) until six ready replicas were seen (a
    // 50 ms poll: an upper bound); a node would take BOOT to boot.
    let written_at = SystemTime::UNIX_EPOCH + Duration::from_millis(write.unix_ms);
    let start = ready_seen.duration_since(written_at).unwrap_or_default();
    assert!(
        start < BOOT,
        "the new pod was ready {start:?} after the write"
    );

    // The room was used: Karpenter launches the next one behind it, and the status says what
    // Surge asks for.
    eventually(
        "a second NodeClaim for the buffer",
        Duration::from_secs(30),
        || async { (node_claims(&kube).len() == 2).then_some(()) },
    )
    .await;
    let status = kubectl_ok(
        &kube,
        &["get", "surge", "-n", "web", "api", "-o", "json"],
        None,
    );
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["status"]["headroom"],
        serde_json::json!({"replicas": 1, "capacityBuffer": "api-headroom"}),
        "{status}"
    );
    println!("scale write -> new pod Ready on the room: {start:?} (a node boots in {BOOT:?})");
}

/// A fixed-shape reserve the user keeps for clusters without the CapacityBuffer API: placeholder
/// pods of negative priority (as `deploy/karpenter/headroom.yaml`), shaped like `api`'s pods.
const PLACEHOLDERS: &str = "apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: surge-headroom}
value: -10
preemptionPolicy: Never
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reserve, namespace: web}
spec:
  replicas: 0
  selector: {matchLabels: {app: reserve}}
  template:
    metadata: {labels: {app: reserve}}
    spec:
      priorityClassName: surge-headroom
      terminationGracePeriodSeconds: 0
      containers:
        - name: main
          image: PAUSE
          resources: {requests: {cpu: '3', memory: 1Gi}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_placeholders_surge_sizes_the_reserve_and_a_scale_up_preempts_it() {
    let mut kube = install("karpenter_placeholders", &[], &[]).await;
    kube.start_karpenter(&PoolSettings {
        boot_delay: BOOT,
        ..PoolSettings::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    apply(&kube, &big_deployment("web", "api", 5));
    apply(
        &kube,
        &PLACEHOLDERS.replace("PAUSE", surge_sandbox::node::containers::PAUSE_IMAGE),
    );
    wait_ready_replicas(&kube, "web", "api", 5, Duration::from_secs(60)).await;
    let surgescaler = |min: u32| {
        format!(
            "apiVersion: surge.dev/v1alpha1
kind: SurgeScaler
metadata: {{name: api, namespace: web}}
spec:
  scaleTargetRef: {{kind: Deployment, name: api}}
  minReplicas: {min}
  maxReplicas: 10
  metric: {{type: rps, target: 100}}
  headroom: {{minReplicas: 1, placeholders: reserve}}
"
        )
    };
    apply(&kube, &surgescaler(5));

    // Surge scales the reserve to one placeholder; it does not fit, so Karpenter launches a
    // node, where it runs.
    wait_ready_replicas(&kube, "web", "reserve", 1, Duration::from_secs(60)).await;
    let elasticity = kube.elasticity().unwrap();
    let room = elasticity.joined().first().cloned().expect("a node joined");
    assert_eq!(node_claims(&kube).len(), 1);
    assert!(
        kubectl_ok(&kube, &["get", "capacitybuffers", "-A", "-o", "name"], None).is_empty(),
        "with placeholders no CapacityBuffer is written"
    );

    // Surge's scale-up: the new pod (priority 0) preempts the placeholder and starts on its
    // room; the placeholder, Pending again, makes Karpenter launch the next node.
    apply(&kube, &surgescaler(6));
    let write = eventually(
        "Surge's scale write 5 -> 6",
        Duration::from_secs(10),
        || async { scale_writes(&kube, "web", "api").into_iter().next() },
    )
    .await;
    wait_ready_replicas(&kube, "web", "api", 6, Duration::from_secs(30)).await;
    let ready_seen = SystemTime::now();
    let pods: Api<Pod> = Api::namespaced(kube.client(), "web");
    let on_room: Vec<Pod> = pods
        .list(&ListParams::default().labels("app=api"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(room.name.as_str())
        })
        .collect();
    assert_eq!(
        on_room.len(),
        1,
        "the new pod runs where the placeholder was"
    );
    // From the write (as the API server received it) until six ready replicas were seen (a
    // 50 ms poll: an upper bound); a node would take BOOT to boot.
    let written_at = SystemTime::UNIX_EPOCH + Duration::from_millis(write.unix_ms);
    let start = ready_seen.duration_since(written_at).unwrap_or_default();
    assert!(
        start < BOOT,
        "the new pod was ready {start:?} after the write"
    );
    eventually(
        "the placeholder runs again, on a new node",
        Duration::from_secs(60),
        || async {
            (node_claims(&kube).len() == 2 && elasticity.joined().len() == 2).then_some(())
        },
    )
    .await;
    wait_ready_replicas(&kube, "web", "reserve", 1, Duration::from_secs(30)).await;
    let status = kubectl_ok(
        &kube,
        &["get", "surge", "-n", "web", "api", "-o", "json"],
        None,
    );
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["status"]["headroom"],
        serde_json::json!({"replicas": 1, "placeholders": "reserve"}),
        "{status}"
    );
    println!(
        "scale write -> new pod Ready where the placeholder was: {start:?} (a node boots in {BOOT:?})"
    );
}

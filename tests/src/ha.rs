//! Two scaler replicas on the real control plane, as the chart installs them: setting them up
//! and looking at who owns what (the shard Leases, each replica's `/metrics` and `/readyz`).

// Test harness: fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use surge_sandbox::real::RealKube;
use surge_scaler::hub::TargetKey;
use surge_scaler::shard::{DEFAULT_SHARDS, shard_of};

use crate::installed::{
    apply, eventually, install, kubectl, replicas, scale_writes, wait_ready_replicas,
};
use crate::scaler::{HttpClient, http_client, request};

/// The replica (pod name) holding the shard Lease of `namespace/name`, if any holds it.
pub fn holder(kube: &RealKube, namespace: &str, name: &str) -> Option<String> {
    let key = TargetKey {
        namespace: namespace.into(),
        name: name.into(),
    };
    let lease = format!("surge-scaler-shard-{}", shard_of(&key, DEFAULT_SHARDS));
    let output = kubectl(
        kube,
        &[
            "get",
            "lease",
            "-n",
            "surge-system",
            &lease,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    let holder = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !holder.is_empty()).then_some(holder)
}

/// The ready scaler replicas: pod name and ingest address.
pub fn replicas_ready(kube: &RealKube) -> Vec<(String, SocketAddr)> {
    let endpoints = kube.scaler_endpoints();
    let endpoints = endpoints.read().unwrap_or_else(|e| e.into_inner());
    endpoints.iter().map(|e| (e.pod.clone(), e.addr)).collect()
}

/// Two scaler replicas installed by the chart, a target, and which replica owns it.
pub struct Pair {
    /// The control plane.
    pub kube: RealKube,
    /// The replica (pod) holding the target's shard Lease.
    pub owner: String,
    /// Its report ingest.
    pub owner_ingest: SocketAddr,
    /// The other replica.
    pub survivor: String,
    /// Its report ingest.
    pub survivor_ingest: SocketAddr,
}

/// Installs the chart with two replicas, applies `manifests` (the Deployment
/// `namespace/name` at one replica, its SurgeScaler, ...), and waits until the replicas have
/// split the shards 4/4 and one of them holds the target's.
pub async fn two_replicas(test: &str, namespace: &str, name: &str, manifests: &[String]) -> Pair {
    let kube = install(test, &[], &["replicaCount=2"]).await;
    for manifest in manifests {
        apply(&kube, manifest);
    }
    wait_ready_replicas(&kube, namespace, name, 1, Duration::from_secs(30)).await;
    let ready = eventually("two scaler replicas ready", Duration::from_secs(30), || {
        let ready = replicas_ready(&kube);
        async move { (ready.len() == 2).then_some(ready) }
    })
    .await;
    // The split settles once both are warm (a Lease duration after each joined): 4 shards
    // each. Before that the first replica up may hold them all and hand half over, and the
    // owner read here would not be the owner for long.
    let client = http_client();
    eventually(
        "the shards split 4/4 between the replicas",
        Duration::from_secs(20),
        || {
            let (kube, client, ready) = (&kube, &client, &ready);
            async move {
                for (pod, _) in ready {
                    if metric(kube, client, pod, "surge_shards_held", "").await != 4.0 {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let owner = holder(&kube, namespace, name).expect("a replica holds the target's shard");
    let owner_ingest = ready.iter().find(|(pod, _)| *pod == owner).unwrap().1;
    let (survivor, survivor_ingest) = ready.iter().find(|(pod, _)| *pod != owner).unwrap().clone();
    Pair {
        kube,
        owner,
        owner_ingest,
        survivor,
        survivor_ingest,
    }
}

/// The body of `path` on replica `pod`'s admin listener.
pub async fn admin_get(kube: &RealKube, client: &HttpClient, pod: &str, path: &str) -> String {
    let admin = {
        let endpoints = kube.scaler_admin_endpoints();
        let endpoints = endpoints.read().unwrap_or_else(|e| e.into_inner());
        endpoints.iter().find(|e| e.pod == pod).map(|e| e.addr)
    };
    let admin = admin.unwrap_or_else(|| panic!("no admin endpoint for {pod}"));
    request(client, "GET", &format!("http://{admin}{path}"), "", None)
        .await
        .body
}

/// The sum of a metric's series whose labels contain `labels`, in replica `pod`'s `/metrics`.
pub async fn metric(
    kube: &RealKube,
    client: &HttpClient,
    pod: &str,
    name: &str,
    labels: &str,
) -> f64 {
    let text = admin_get(kube, client, pod, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The replica counts of the successful scale writes of `namespace/name`, in order; panics
/// on a scale-down.
pub fn assert_no_scale_down(kube: &RealKube, namespace: &str, name: &str) -> Vec<i64> {
    let written: Vec<i64> = scale_writes(kube, namespace, name)
        .iter()
        .filter(|w| w.status == 200)
        .filter_map(replicas)
        .collect();
    assert!(
        written.windows(2).all(|w| w[1] >= w[0]),
        "a scale-down was written: {written:?}"
    );
    written
}

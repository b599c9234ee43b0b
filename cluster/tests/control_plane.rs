//! The control plane harness against the real components (built by `make tools`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use surge_cluster::{ControlPlane, Options};

fn dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("surge-cluster-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn a_deployment_gets_a_replicaset_and_pods_that_wait_for_a_node() {
    let plane = ControlPlane::start(Options::new(dir("deployment")))
        .await
        .unwrap();
    eprintln!("started: {:?}", plane.start_times());
    let client = plane.client().await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=app"))
            .await
            .unwrap();
        if list.items.len() == 2 {
            for pod in &list.items {
                let status = pod.status.as_ref().unwrap();
                assert_eq!(status.phase.as_deref(), Some("Pending"));
            }
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no pods: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let version = plane
        .kubectl()
        .unwrap()
        .args(["version", "-o", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.contains("\"gitVersion\": \"v1.35.4\""), "{text}");
    let dir = plane.dir().to_path_buf();
    drop(plane);
    let _ = std::fs::remove_dir_all(dir);
}

//! The embedded Kubernetes API against the real kube 5 client (and kube-runtime's watcher).

// Test helpers fail the test loudly, as the #[test] bodies do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::runtime::WatchStreamExt;
use serde_json::json;
use surge_sandbox::kubeapi::{KubeApi, Options, WatchCut};

async fn start() -> (KubeApi, kube::Client) {
    let api = KubeApi::start(Options {
        bookmark_interval: Duration::from_millis(200),
    })
    .await
    .unwrap();
    let mut config = kube::Config::new(api.url().parse().unwrap());
    config.default_namespace = "default".into();
    // Errors must come back at once, not after kube's retries.
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    (api, client)
}

fn surgescalers(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("surge.dev", "v1alpha1", "SurgeScaler");
    Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk))
}

fn surgescaler(name: &str, max: i64) -> DynamicObject {
    let gvk = GroupVersionKind::gvk("surge.dev", "v1alpha1", "SurgeScaler");
    let mut obj = DynamicObject::new(name, &ApiResource::from_gvk(&gvk));
    obj.data = json!({"spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
        "minReplicas": 1, "maxReplicas": max,
    }});
    obj
}

fn api_error(err: kube::Error) -> Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn scale_subresource_accepts_merge_json_and_apply_patches() {
    let (api, client) = start().await;
    api.create_deployment("default", "app", 1).unwrap();
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());

    let scale = deployments.get_scale("app").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=app"));

    let merge = Patch::Merge(json!({"spec": {"replicas": 3}}));
    let scale = deployments
        .patch_scale("app", &PatchParams::default(), &merge)
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));

    // kube's typed JSON patch needs its `jsonpatch` feature; the request is the same bytes.
    let request = http::Request::patch("/apis/apps/v1/namespaces/default/deployments/app/scale")
        .header("content-type", "application/json-patch+json")
        .body(
            serde_json::to_vec(&json!([{"op": "replace", "path": "/spec/replicas", "value": 5}]))
                .unwrap(),
        )
        .unwrap();
    let scale: k8s_openapi::api::autoscaling::v1::Scale = client.request(request).await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(5));

    let apply = Patch::Apply(json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 7}
    }));
    let scale = deployments
        .patch_scale("app", &PatchParams::apply("surge-scaler"), &apply)
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(7));

    let deployment = deployments.get("app").await.unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(7));
    // Three spec changes after creation.
    assert_eq!(deployment.metadata.generation, Some(4));

    let writes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.is_scale_write())
        .collect();
    let types: Vec<_> = writes
        .iter()
        .map(|r| r.content_type.clone().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/merge-patch+json",
            "application/json-patch+json",
            "application/apply-patch+yaml"
        ]
    );
    assert_eq!(writes[2].field_manager.as_deref(), Some("surge-scaler"));
}

#[tokio::test]
async fn apply_without_field_manager_and_negative_replicas_are_invalid() {
    let (api, client) = start().await;
    api.create_deployment("default", "app", 1).unwrap();
    let deployments: Api<Deployment> = Api::default_namespaced(client);

    let apply = Patch::Apply(json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 2}
    }));
    let err = api_error(
        deployments
            .patch_scale("app", &PatchParams::default(), &apply)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(err.message.contains("fieldManager"), "{}", err.message);

    let negative = Patch::Merge(json!({"spec": {"replicas": -1}}));
    let err = api_error(
        deployments
            .patch_scale("app", &PatchParams::default(), &negative)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(err.message.contains("spec.replicas"), "{}", err.message);

    let err = api_error(deployments.get_scale("missing").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "deployments.apps \"missing\" not found");
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let (api, client) = start().await;
    api.create_deployment("default", "app", 1).unwrap();
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let stale = deployments.get_scale("app").await.unwrap();
    deployments
        .patch_scale(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let err = api_error(
        deployments
            .replace_scale("app", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));

    // Leases, as leader election uses them: create, conflict on a second create, update with
    // the current resourceVersion, conflict with a stale one.
    let leases: Api<Lease> = Api::default_namespaced(client);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "surge-scaler"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let err = api_error(
        leases
            .create(&PostParams::default(), &lease)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    let mut renewed = created.clone();
    renewed.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let renewed = leases
        .replace("surge-scaler", &PostParams::default(), &renewed)
        .await
        .unwrap();
    assert_eq!(renewed.spec.unwrap().holder_identity.as_deref(), Some("b"));
    let err = api_error(
        leases
            .replace("surge-scaler", &PostParams::default(), &created)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_with_bookmarks() {
    let (_api, client) = start().await;
    let scalers = surgescalers(&client);
    scalers
        .create(&PostParams::default(), &surgescaler("a", 5))
        .await
        .unwrap();
    scalers
        .create(&PostParams::default(), &surgescaler("b", 5))
        .await
        .unwrap();
    let listed = scalers.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    let list_rv = listed.metadata.resource_version.clone().unwrap();

    // A change after the list: a watch from the list's version sees it and nothing before.
    let patched = scalers
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxReplicas": 8}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    let status = scalers
        .patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"desiredReplicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(
        status.metadata.generation,
        Some(2),
        "status writes keep the generation"
    );
    assert_eq!(status.data["status"]["desiredReplicas"], 3);

    let params = WatchParams::default().timeout(5);
    let mut stream = scalers.watch(&params, &list_rv).await.unwrap().boxed();
    let mut seen = Vec::new();
    let mut bookmark_rv = None;
    while bookmark_rv.is_none() {
        let event = tokio::time::timeout(Duration::from_secs(3), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event {
            WatchEvent::Modified(obj) => seen.push((
                obj.metadata.name.unwrap(),
                obj.metadata.resource_version.unwrap(),
            )),
            WatchEvent::Bookmark(b) => bookmark_rv = Some(b.metadata.resource_version),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|(name, _)| name == "b"));
    assert_eq!(bookmark_rv.as_deref(), Some(seen[1].1.as_str()));

    // Resuming from the bookmark replays nothing and delivers only what comes next.
    let mut resumed = scalers
        .watch(&params, &bookmark_rv.unwrap())
        .await
        .unwrap()
        .boxed();
    scalers.delete("a", &Default::default()).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(3), resumed.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Deleted(obj) => assert_eq!(obj.metadata.name.as_deref(), Some("a")),
        other => panic!("expected the deletion first, got {other:?}"),
    }
}

#[tokio::test]
async fn kube_runtime_watcher_sees_existing_and_new_objects() {
    let (_api, client) = start().await;
    let scalers = surgescalers(&client);
    scalers
        .create(&PostParams::default(), &surgescaler("a", 5))
        .await
        .unwrap();
    let mut stream = kube::runtime::watcher(scalers.clone(), Default::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("a"));
    scalers
        .create(&PostParams::default(), &surgescaler("b", 5))
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.metadata.name.as_deref(), Some("b"));
}

#[tokio::test]
async fn events_are_created_and_an_invalid_custom_resource_is_refused() {
    let (api, client) = start().await;
    let events: Api<Event> = Api::default_namespaced(client.clone());
    let event: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "app-"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reason": "SuccessfulRescale", "action": "Scale", "type": "Normal",
        "note": "New size: 3; reason: rps above target",
        "reportingController": "surge.dev/surge-scaler", "reportingInstance": "surge-scaler-0",
        "regarding": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app", "namespace": "default"}
    }))
    .unwrap();
    let created = events.create(&PostParams::default(), &event).await.unwrap();
    assert!(created.metadata.name.unwrap().starts_with("app-"));
    assert_eq!(
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(api.requests().iter().any(
        |r| r.method == "POST" && r.path == "/apis/events.k8s.io/v1/namespaces/default/events"
    ));

    let scalers = surgescalers(&client);
    let mut bad = surgescaler("bad", 5);
    bad.data["spec"]["minReplicas"] = json!(9);
    let err = api_error(
        scalers
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    let err = api_error(
        scalers
            .patch("bad", &PatchParams::default(), &Patch::Strategic(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err.code, 415,
        "strategic merge is refused for custom resources"
    );
}

/// Waits until `n` watches are open on the API (bounded).
async fn open_watches(api: &KubeApi, n: usize) -> Vec<surge_sandbox::kubeapi::OpenWatch> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let open = api.open_watches();
        if open.len() == n {
            return open;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} watches open, expected {n}",
            open.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a raw HTTP/1.1 watch of the SurgeScalers from `rv` on `api` (the server closes the
/// connection after the response), so a test sees the bytes exactly as sent.
async fn raw_watch(api: &KubeApi, rv: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(api.addr()).await.unwrap();
    let request = format!(
        "GET /apis/surge.dev/v1alpha1/namespaces/default/surgescalers\
         ?watch=true&resourceVersion={rv}&timeoutSeconds=30 HTTP/1.1\r\n\
         host: {}\r\nconnection: close\r\n\r\n",
        api.addr()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Everything the server sends until it closes the connection; panics after 3 s.
async fn read_to_close(mut stream: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut bytes))
        .await
        .expect("the server closes the connection within 3 s")
        .unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn the_fault_hook_closes_or_breaks_open_watches_and_the_next_ones() {
    let (api, client) = start().await;
    let scalers = surgescalers(&client);
    scalers
        .create(&PostParams::default(), &surgescaler("a", 5))
        .await
        .unwrap();
    let rv = api.store().resource_version().to_string();

    // Close: the chunked response ends with its last chunk, as a server-side timeout does.
    let closed = raw_watch(&api, &rv).await;
    let open = open_watches(&api, 1).await;
    assert_eq!(
        open[0].path,
        "/apis/surge.dev/v1alpha1/namespaces/default/surgescalers"
    );
    assert!(
        open[0].query.contains(&format!("resourceVersion={rv}")),
        "{}",
        open[0].query
    );
    assert_eq!(api.cut_watches(WatchCut::Close), 1);
    let text = read_to_close(closed).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("\r\n0\r\n\r\n"), "no last chunk: {text:?}");
    open_watches(&api, 0).await;

    // Abort: the connection closes mid-response, without the last chunk.
    let broken = raw_watch(&api, &rv).await;
    open_watches(&api, 1).await;
    assert_eq!(api.cut_watches(WatchCut::Abort), 1);
    let text = read_to_close(broken).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a last chunk was sent: {text:?}"
    );
    open_watches(&api, 0).await;
    assert_eq!(api.cut_watches(WatchCut::Abort), 0, "nothing left to cut");

    // The next one is cut as soon as it has started; the one after it is served.
    api.cut_next_watches(1, WatchCut::Abort);
    let doomed = raw_watch(&api, &rv).await;
    let text = read_to_close(doomed).await;
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a last chunk was sent: {text:?}"
    );
    let params = WatchParams::default().timeout(30);
    let mut served = scalers.watch(&params, &rv).await.unwrap().boxed();
    open_watches(&api, 1).await;
    scalers
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxReplicas": 7}})),
        )
        .await
        .unwrap();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(2), served.try_next())
            .await
            .expect("the served watch delivers the change within 2 s")
            .unwrap();
        match event {
            Some(WatchEvent::Bookmark(_)) => {}
            Some(WatchEvent::Modified(obj)) => {
                assert_eq!(obj.data["spec"]["maxReplicas"], 7);
                break;
            }
            other => panic!("expected the change, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn kube_runtime_watcher_resumes_after_its_watch_is_cut() {
    let (api, client) = start().await;
    let scalers = surgescalers(&client);
    scalers
        .create(&PostParams::default(), &surgescaler("a", 5))
        .await
        .unwrap();
    // Polled in its own task, as a controller does: a watch only runs while it is polled.
    let (applied_tx, mut applied) = tokio::sync::mpsc::unbounded_channel();
    let watcher = kube::runtime::watcher(scalers.clone(), Default::default()).default_backoff();
    let task = tokio::spawn(async move {
        let mut watcher = std::pin::pin!(watcher);
        while let Some(event) = watcher.next().await {
            if let Ok(
                kube::runtime::watcher::Event::Apply(obj)
                | kube::runtime::watcher::Event::InitApply(obj),
            ) = event
            {
                let _ = applied_tx.send(obj.metadata.name.unwrap_or_default());
            }
        }
    });
    let mut next_applied = async || {
        tokio::time::timeout(Duration::from_secs(5), applied.recv())
            .await
            .expect("the watcher applies an object within 5 s")
            .unwrap()
    };
    assert_eq!(next_applied().await, "a");
    let watching = open_watches(&api, 1).await;
    for how in [WatchCut::Abort, WatchCut::Close] {
        assert_eq!(api.cut_watches(how), 1);
        // Changed while no watch is open.
        let name = format!("after-{how:?}").to_lowercase();
        scalers
            .create(&PostParams::default(), &surgescaler(&name, 5))
            .await
            .unwrap();
        assert_eq!(next_applied().await, name);
        open_watches(&api, 1).await;
    }
    task.abort();
    // It watched again from where it was each time: one list, then three watches.
    let requests = api.requests();
    let watches: Vec<&str> = requests
        .iter()
        .filter(|r| r.query.contains("watch=true"))
        .map(|r| r.query.as_str())
        .collect();
    assert_eq!(watches.len(), 3, "{watches:?}");
    assert_eq!(watches[0], watching[0].query);
    assert!(
        watches.iter().all(|q| q.contains("resourceVersion=")),
        "{watches:?}"
    );
    let lists = requests
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.path.ends_with("/surgescalers")
                && !r.query.contains("watch=true")
        })
        .count();
    assert_eq!(lists, 1, "one list, then watches only");
}

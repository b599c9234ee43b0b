use super::*;
use crate::hub::Ingested;
use axum::http::Request;
use tower::ServiceExt;

const TOKEN: &str = "peer-secret";

fn report(instance: &str, seq: u64) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "proxy": {"namespace": "web", "workload": "api", "pod": "api-1",
                  "owner": "", "role": "sidecar"},
        "instance": instance,
        "seq": seq,
        "time_ms": 1000 * seq,
        "surge": false,
        "routes": [{"route": "r", "cluster": "inbound|80||", "requests_total": 10 * seq,
                    "errors_total": 0, "duration_us_total": 0, "inflight": 1}]
    })
}

fn peer_state() -> PeerState {
    PeerState {
        hub: Arc::new(Hub::default()),
        clock: Clock::default(),
        token: Arc::from(TOKEN),
        limits: Arc::new(Limits::default()),
        metrics: Arc::new(Metrics::default()),
    }
}

async fn post(state: &PeerState, token: &str, body: String) -> StatusCode {
    let request = Request::post(PEER_REPORTS_PATH)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(body))
        .unwrap();
    router(state.clone())
        .oneshot(request)
        .await
        .unwrap()
        .status()
}

fn direct(state: &PeerState, value: &serde_json::Value) -> Ingested {
    let body = decode(value.to_string().as_bytes()).unwrap();
    state.hub.ingest_body(&body, state.clock.now()).0
}

#[tokio::test]
async fn mirrored_reports_count_once_and_skip_the_rate_limit_they_met_where_they_arrived() {
    let state = peer_state();
    // Ten reports of one instance at once: far over its rate here, but each was rated where
    // it arrived.
    let batch: Vec<serde_json::Value> = (1..=10).map(|seq| report("api-1/1", seq)).collect();
    let body = serde_json::to_string(&batch).unwrap();
    assert_eq!(post(&state, TOKEN, body).await, StatusCode::NO_CONTENT);
    // The newest of them was applied: the same report again, arriving directly, is a
    // duplicate, and the next one counts.
    assert_eq!(direct(&state, &report("api-1/1", 10)), Ingested::Duplicate);
    assert!(matches!(
        direct(&state, &report("api-1/1", 11)),
        Ingested::Counted { .. }
    ));
    // A copy arriving after the original is a duplicate too.
    let late = serde_json::to_string(&[report("api-1/1", 11)]).unwrap();
    assert_eq!(post(&state, TOKEN, late).await, StatusCode::NO_CONTENT);
    assert_eq!(direct(&state, &report("api-1/1", 11)), Ingested::Duplicate);
}

#[tokio::test]
async fn a_peer_without_the_token_or_with_a_bad_batch_is_refused_and_bad_items_are_skipped() {
    let state = peer_state();
    let body = serde_json::to_string(&[report("api-1/1", 1)]).unwrap();
    assert_eq!(
        post(&state, "wrong", body.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(state.hub.sizes().0, 0, "nothing counted");
    assert_eq!(
        post(&state, TOKEN, "{\"not\": \"an array\"}".into()).await,
        StatusCode::BAD_REQUEST
    );
    // One invalid item (a version this scaler does not know) does not lose the others.
    let mut bad = report("api-2/1", 1);
    bad["version"] = serde_json::json!(99);
    let mixed = serde_json::to_string(&[bad, report("api-3/1", 1)]).unwrap();
    assert_eq!(post(&state, TOKEN, mixed).await, StatusCode::NO_CONTENT);
    assert_eq!(state.hub.sizes().0, 1, "the valid one counted");
    assert!(
        state
            .metrics
            .encode()
            .contains("surge_mirrored_reports_total{outcome=\"refused\"} 1")
    );
}

#[tokio::test]
async fn the_mirror_delivers_the_newest_report_of_each_instance_to_each_live_peer() {
    let peer = peer_state();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, router(peer.clone())).into_future());
    let ownership = Arc::new(Ownership::sharded("a", 4, 0, Clock::default()));
    let metrics = Arc::new(Metrics::default());
    let mirror = Mirror::new(
        Arc::clone(&ownership),
        Arc::from(TOKEN),
        Arc::clone(&metrics),
    );
    // No peers: nothing is queued.
    mirror.send("api-1/1", &Bytes::from(report("api-1/1", 1).to_string()));
    assert!(mirror.queues.lock().unwrap().is_empty());
    ownership.set_peers(vec![Peer {
        id: "b".into(),
        url: format!("http://{addr}"),
    }]);
    for seq in 1..=5 {
        for instance in ["api-1/1", "api-2/1"] {
            mirror.send(instance, &Bytes::from(report(instance, seq).to_string()));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let both_newest = ["api-1/1", "api-2/1"]
            .iter()
            .all(|i| direct(&peer, &report(i, 5)) == Ingested::Duplicate);
        if both_newest {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not mirrored within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics
            .encode()
            .contains("surge_mirrored_reports_total{outcome=\"sent\"}")
    );
    // A peer no longer listed gets nothing more: nothing is queued for it.
    ownership.set_peers(Vec::new());
    mirror.send("api-3/1", &Bytes::from(report("api-3/1", 1).to_string()));
    let queued_for_api_3 = mirror
        .queues
        .lock()
        .unwrap()
        .values()
        .any(|q| q.pending.lock().unwrap().bodies.contains_key("api-3/1"));
    assert!(!queued_for_api_3);
    server.abort();
}

#[test]
fn a_peer_that_falls_behind_holds_one_body_per_instance_at_most() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ownership = Arc::new(Ownership::sharded("a", 4, 0, Clock::default()));
        // Nothing listens there: the sender fails, the queue is what stays bounded.
        ownership.set_peers(vec![Peer {
            id: "b".into(),
            url: "http://127.0.0.1:9".into(),
        }]);
        let mirror = Mirror::new(ownership, Arc::from(TOKEN), Arc::new(Metrics::default()));
        let first = mirror.queue(&mirror.ownership.peers()[0]);
        // No await in between: the sender task has not run, everything is still queued.
        for seq in 1..=1000 {
            let instance = format!("api-{}/1", seq % 10);
            mirror.send(&instance, &Bytes::from(report(&instance, seq).to_string()));
        }
        let queues = mirror.queues.lock().unwrap();
        assert_eq!(queues.len(), 1);
        // One queue per peer for all its reports (a queue per report would each spawn a
        // sender of its own), holding the newest body of each of the 10 instances.
        assert!(Arc::ptr_eq(&queues["b"], &first));
        let pending = queues["b"].pending.lock().unwrap();
        assert_eq!(pending.order.len(), 10);
        assert_eq!(pending.bodies.len(), 10);
        for (instance, body) in &pending.bodies {
            let seq = serde_json::from_slice::<serde_json::Value>(body).unwrap()["seq"]
                .as_u64()
                .unwrap();
            assert!(seq > 990, "{instance}: seq {seq} is not the newest");
        }
    });
}

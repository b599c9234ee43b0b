//! Scale to zero with two scaler replicas, as the chart installs them: every report reaches
//! one replica (the one the Service picked) and is mirrored to the other; only the owner of
//! the target writes. The app's idle reports and the caller's activation report all go to the
//! replica that does not own the target, so the owner acts on mirrored copies alone, and both
//! replicas' answers list the app cold at zero and warm once it is back.
//!
//! ```text
//!  test: idle sidecar reports, then held 3 --POST--> the other replica --mirror--> the owner
//!        answers {"cold": [...]} from either replica     the owner --PATCH .../scale--> apiserver
//! ```

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use surge_e2e::ha::{Pair, holder, two_replicas};
use surge_e2e::installed::{eventually, pause_deployment, replicas, scale_writes};
use surge_e2e::scaler::http_client;
use surge_e2e::zero_proxy::{APP, Proxy, cold, service, surgescaler};

const IDLE_SECONDS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_takes_the_app_to_zero_and_back_on_reports_mirrored_from_the_other_replica() {
    let Pair {
        kube,
        owner,
        survivor: other,
        survivor_ingest: other_ingest,
        owner_ingest,
    } = two_replicas(
        "ha_zero",
        "web",
        "app",
        &[
            pause_deployment("web", "app", 1),
            service("app", 8080),
            surgescaler(
                "app",
                &format!(
                    "  scaleToZero: {{idleSeconds: {IDLE_SECONDS}, service: app, port: 8080}}\n"
                ),
                0,
            ),
        ],
    )
    .await;
    let client = http_client();

    // Idle reports of the app's sidecar, to the other replica only: the owner goes to zero
    // once it has had the idle period of them, mirrored.
    let mut app = Proxy::app_sidecar();
    let quiet_from = Instant::now();
    let to_zero = loop {
        let (status, answer) = app.send_to(&client, other_ingest, 0).await;
        assert_eq!(status, 200, "{answer}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(write) = scale_writes(&kube, "web", "app")
            .into_iter()
            .find(|w| w.status == 200)
        {
            break write;
        }
        assert!(
            quiet_from.elapsed() < Duration::from_secs(IDLE_SECONDS + 10),
            "not at zero {:?} after the first idle report",
            quiet_from.elapsed()
        );
    };
    assert_eq!(replicas(&to_zero), Some(0), "{:?}", to_zero.body);
    let idle = to_zero.received.saturating_duration_since(quiet_from);
    println!("first idle report (to the other replica) -> scale write to zero: {idle:?}");
    assert!(
        idle >= Duration::from_secs(IDLE_SECONDS),
        "to zero after {idle:?}"
    );
    assert_eq!(holder(&kube, "web", "app").as_deref(), Some(owner.as_str()));

    // At zero, both replicas' answers list the app cold (the caller's reports, one instance
    // with growing sequence numbers, as a proxy sends them).
    let mut caller = Proxy::client_sidecar();
    for (replica, ingest) in [(&owner, owner_ingest), (&other, other_ingest)] {
        let asked = Instant::now();
        loop {
            let (status, answer) = caller.send_to(&client, ingest, 0).await;
            assert_eq!(status, 200, "{answer}");
            if cold(&answer).contains(&APP.to_owned()) {
                println!("{replica} at zero: {answer}");
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "{replica} does not list the app cold: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The caller holds 3 requests and reports them to the other replica: the owner scales
    // 0 -> 3 from the mirrored copy, at once.
    let sent = Instant::now();
    let (status, answer) = caller.send_to(&client, other_ingest, 3).await;
    assert_eq!(status, 200, "{answer}");
    let from_zero = eventually(
        "the scale write from zero",
        Duration::from_secs(5),
        || async {
            scale_writes(&kube, "web", "app")
                .into_iter()
                .find(|w| w.status == 200 && replicas(w) != Some(0))
        },
    )
    .await;
    let reaction = from_zero.received.saturating_duration_since(sent);
    println!("activation report (to the other replica) -> scale write from zero: {reaction:?}");
    assert_eq!(replicas(&from_zero), Some(3), "{:?}", from_zero.body);
    assert!(reaction < Duration::from_secs(1), "{reaction:?}");

    // Once the pods are ready, both replicas answer the app warm.
    for ingest in [other_ingest, owner_ingest] {
        loop {
            let (status, answer) = caller.send_to(&client, ingest, 3).await;
            assert_eq!(status, 200, "{answer}");
            if !cold(&answer).contains(&APP.to_owned()) {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "still cold 30 s after the activation: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "both replicas answer warm {:?} after the activation",
        sent.elapsed()
    );
    // 1 -> 0 -> 3, and nothing else: no second write from the other replica.
    let written = scale_writes(&kube, "web", "app")
        .iter()
        .filter(|w| w.status == 200)
        .filter_map(replicas)
        .collect::<Vec<_>>();
    assert_eq!(written, [0, 3], "{written:?}");
    kube.shutdown().await;
}

//! Several replicas: a loop writes for its target only while this replica holds the target's
//! shard Lease; without it, it only reads. A target taken over starts fail-static and acts on
//! the surge in its window at once.

use super::*;
use crate::shard::{Ownership, shard_of};

const SHARDS: u32 = 4;

fn sharded_setup() -> (TargetLoop, Handle, Arc<Context>, Arc<Ownership>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let clock = Clock::default();
    let ownership = Arc::new(Ownership::sharded("replica-a", SHARDS, 1_000, clock));
    let ctx = Arc::new(
        Context::new(
            client,
            Arc::new(Hub::default()),
            Arc::new(Metrics::default()),
            clock,
            Duration::from_secs(2),
            Duration::from_secs(1),
        )
        .with_ownership(Arc::clone(&ownership)),
    );
    let scaler = scaler();
    let wake = ctx.hub.register(
        &key(),
        Selector::from_spec("web", &scaler.spec),
        MetricType::Rps,
        window_config(&scaler),
    );
    let target = TargetLoop::new(Arc::clone(&ctx), key(), Arc::new(scaler), wake);
    (target, handle, ctx, ownership)
}

#[tokio::test]
async fn without_its_shard_a_loop_reads_the_scale_and_writes_nothing_then_takes_over_at_once() {
    let (mut target, handle, ctx, _ownership) = sharded_setup();
    surge(&ctx, 800);
    // Another replica owns the target: one read of the scale, no conflict check, no PATCH,
    // no Event, no status.
    let server = tokio::spawn(serve(handle, vec![expect("GET", SCALE, 200, scale(1))]));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 1);
    assert!(
        ctx.metrics
            .encode()
            .contains("surge_target_owned{namespace=\"web\",name=\"api\"} 0"),
        "{}",
        ctx.metrics.encode()
    );
}

#[tokio::test]
async fn a_loop_that_gains_its_shard_writes_the_pending_scale_up_and_loses_it_cleanly() {
    let (mut target, handle, ctx, ownership) = sharded_setup();
    surge(&ctx, 800);
    let shard = shard_of(&key(), SHARDS);
    ownership.hold(shard, Some(ctx.clock.now() + 10_000));
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale(1)),
        expect("PATCH", PATCH_SCALE, 200, scale(8)),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(
        seen[3].body,
        scale_patch_at(8, "7"),
        "the surge in the window is written"
    );
    assert!(
        ctx.metrics
            .encode()
            .contains("surge_target_owned{namespace=\"web\",name=\"api\"} 1")
    );
    assert!(target.owned == Some(true));
    // The hold runs out (no renewal): the loop stops writing though nothing told it.
    ownership.hold(shard, Some(ctx.clock.now() + 500));
    assert!(!target.follow_ownership());
    // Regained: fail-static again, as after a restart (no scale-down on the old history).
    ownership.hold(shard, Some(ctx.clock.now() + 10_000));
    assert!(target.follow_ownership());
    assert!(target.scale_read_at.is_none(), "the scale is read afresh");
}

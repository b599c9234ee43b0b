//! Surge's decisions replayed through the comparison's simulation against a live sandbox run of
//! the same scenario (real Envoys with the filter, the real surge-scaler binary, the embedded
//! API): issue 5's cross-check. Needs `make test`'s builds; a missing one fails the test with a
//! message saying so.

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use surge_sandbox::compare::scenarios::Trace;
use surge_sandbox::compare::{live, models, report};
use surge_sandbox::envoy::workspace_root;
use surge_sandbox::report::summary_text;
use surge_sandbox::run::{RunOptions, run};
use surge_sandbox::scenario::Scenario;

/// A short 10x step: 30 rps, then 300 rps (ceil(300 / 70) = 5 replicas) for 10 s.
const SCENARIO: &str = "name: compare-live-10x
warmup_s: 5
pods: {startup_delay_ms: 2000, concurrency: 4, service_time_ms: 40}
scaler: {min_replicas: 1, max_replicas: 10, target: 70}
load:
  - steady: {rps: 30, seconds: 10}
  - steady: {rps: 300, seconds: 10}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_decisions_scale_up_within_a_report_interval_of_the_live_sandbox() {
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let out_dir = workspace_root().join("target/e2e/compare/live_10x");
    let _ = std::fs::remove_dir_all(&out_dir);
    let options = RunOptions::embedded(out_dir, true);
    let result = run(&scenario, &options, std::future::pending())
        .await
        .unwrap_or_else(|e| panic!("sandbox run failed: {e}"));
    println!("{}", summary_text(&result));
    assert!(result.failure.is_none(), "{:?}", result.failure);

    let trace = Trace::from_scenario(&scenario);
    let comparison = report::run(std::slice::from_ref(&trace), &[1], &models::all).unwrap();
    let replay = comparison.scenarios[0]
        .systems
        .iter()
        .find(|s| s.system == models::surge::REPLAY_NAME)
        .expect("the replay runs");
    let live_row = live::system_result(&result, trace.event_s);
    let check = live::cross_check(&scenario.name, trace.event_s, replay, &live_row);
    println!("{}", live::markdown(std::slice::from_ref(&check)));

    assert!(
        check.replay_first_s.is_some() && check.live_first_s.is_some(),
        "both must scale up after the step: {check:?}"
    );
    assert!(check.agree, "{check:?}");
    // Both ask for more than one pod's worth: the step needs 5 at the 70 rps target.
    assert!(check.replay_peak >= 4 && check.live_peak >= 4, "{check:?}");
}

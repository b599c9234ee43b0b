//! Scale to zero and back through real Envoys on the real control plane: the app goes to zero
//! after its idle period, then a burst arrives through the ingress gateway (or a caller's
//! sidecar), whose filter holds the first requests, sends the activation report, and resumes
//! them when the scaler says the app is warm again. The sandbox plays it (`--kube real`,
//! `traffic.via`), so the figures are the ones `make sandbox` prints.

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use surge_e2e::sandbox_run::{self, replicas_written};
use surge_sandbox::envoy::workspace_root;
use surge_sandbox::report::RunResult;
use surge_sandbox::run::{KubeMode, RunOptions};

async fn play(test: &str, yaml: &str) -> RunResult {
    let out_dir = workspace_root().join("target/e2e/kube-zero").join(test);
    let _ = std::fs::remove_dir_all(&out_dir);
    let options = RunOptions {
        kube: KubeMode::Real,
        ..RunOptions::embedded(out_dir, true)
    };
    sandbox_run::play(yaml, &options).await
}

/// Idle after a little load long enough to go to zero (10 s of reported idleness), then 20 rps
/// through `via`, with the hold settings given.
fn scenario(via: &str, hold: &str, extra: &str) -> String {
    format!(
        "name: zero-{via}
warmup_s: 2
cooldown_s: 2
pods: {{startup_delay_ms: 1000}}
scaler:
  min_replicas: 0
  max_replicas: 4
  target: 70
  idle_s: 10
  stable_window_s: 6
  scale_down_stabilization_s: 0
traffic:
  via: {via}
  hold: {hold}
load:
  - steady: {{rps: 10, seconds: 3}}
  - steady: {{rps: 0, seconds: 22}}
  - steady: {{rps: 20, seconds: 5}}
{extra}"
    )
}

/// The app went to zero, came back, and every held request was answered by it.
fn assert_held_and_answered(result: &RunResult) {
    let s = &result.summary;
    let cold = s
        .cold_start
        .as_ref()
        .expect("the app never reached zero before the burst");
    let written = replicas_written(result);
    let zero = written
        .iter()
        .position(|&r| r == 0)
        .expect("no write to zero");
    assert!(
        written[zero + 1..].first().is_some_and(|&r| r >= 1),
        "no write from zero: {written:?}"
    );
    assert!(
        cold.first_request_ok,
        "the first request was not answered 2xx: {cold:?}"
    );
    assert!(cold.hold.held >= 1, "nothing was held: {cold:?}");
    assert_eq!(
        (cold.hold.timed_out, cold.hold.rejected, cold.hold.cancelled),
        (0, 0, 0),
        "{cold:?}"
    );
    assert_eq!(cold.hold.resumed, cold.hold.held, "{cold:?}");
    assert_eq!(s.failed, 0, "requests failed: {s:?}");
    // The activation report leaves at once and the write follows it at once; the rest is
    // the pod starting and the warm answer.
    let activation = cold.activation_report_ms.expect("no activation report");
    let from_zero = cold.scale_from_zero_ms.expect("no scale write from zero");
    assert!(
        activation < 200.0,
        "activation report {activation} ms after the first request"
    );
    assert!(
        from_zero - activation < 200.0,
        "scale write {from_zero} ms, activation {activation} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_zero_the_gateway_holds_the_first_requests_until_the_app_is_back_and_none_fails() {
    let hold = "{max_requests: 100, timeout_ms: 10000, retry_after_s: 1}";
    let result = play("gateway", &scenario("gateway", hold, "")).await;
    assert_held_and_answered(&result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_zero_a_callers_sidecar_holds_its_requests_until_the_app_is_back_and_none_fails() {
    let hold = "{max_requests: 100, timeout_ms: 10000, retry_after_s: 1}";
    let result = play("client", &scenario("client", hold, "")).await;
    assert_held_and_answered(&result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_hold_cap_get_503_at_once_and_the_held_ones_are_answered() {
    let hold = "{max_requests: 3, timeout_ms: 10000, retry_after_s: 2}";
    let result = play("cap", &scenario("gateway", hold, "")).await;
    let cold = result.summary.cold_start.as_ref().expect("no cold start");
    assert!(
        cold.hold.rejected >= 1,
        "the cap turned nothing away: {cold:?}"
    );
    assert!(
        cold.hold.held >= 1 && cold.hold.held <= cold.hold.resumed + 3,
        "{cold:?}"
    );
    assert_eq!(cold.hold.timed_out, 0, "{cold:?}");
    assert!(cold.first_request_ok, "{cold:?}");
    // Turned away, not lost: each is a failed request of the load, answered (503).
    assert!(
        result.summary.failed >= cold.hold.rejected,
        "{:?}",
        result.summary
    );
    assert_eq!(result.summary.unfinished, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_scaler_down_at_zero_held_requests_end_at_the_timeout_and_nothing_hangs() {
    // The scaler is killed once the app is at zero (it writes zero about 17 s into the load;
    // killed at 21 s) and comes back only after the burst (25-30 s): nothing can wake the app.
    let hold = "{max_requests: 100, timeout_ms: 1500, retry_after_s: 1}";
    let faults = "faults:\n  - kill_scaler: {at_s: 21, restart_after_s: 30}\n";
    let result = play("scaler_down", &scenario("gateway", hold, faults)).await;
    let cold = result.summary.cold_start.as_ref().expect("no cold start");
    // Every request of the burst (20 rps for 5 s) was held and ended by the hold timeout with
    // 503. (A warm-up request may have been held and resumed: the load starts within the
    // scaler's warm delay after the app's first ready endpoint.)
    assert_eq!(result.summary.failed, 100, "{:?}", result.summary);
    assert_eq!(cold.hold.timed_out, 100, "{cold:?}");
    assert_eq!(cold.hold.rejected + cold.hold.cancelled, 0, "{cold:?}");
    assert!(!cold.first_request_ok);
    let first = cold.cold_start_ms.expect("the first request was answered");
    assert!(
        (1400.0..3000.0).contains(&first),
        "the first held request ended {first} ms after it was sent, not at the 1.5 s timeout"
    );
    assert_eq!(result.summary.unfinished, 0, "a request hung");
    assert!(
        !replicas_written(&result)
            .iter()
            .skip_while(|&&r| r != 0)
            .any(|&r| r > 0),
        "the app was woken with the scaler down"
    );
}

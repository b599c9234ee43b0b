//! The sandbox on the real control plane (`surge-sandbox run --kube real`): real Envoys running
//! the filter in Pods that the real Deployment and ReplicaSet controllers make and the real
//! scheduler binds to the sandbox's node, the chart's scaler pod, the load following the
//! Service's EndpointSlices, scale writes read from the API server's audit log.

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use surge_cluster::audit::AuditLog;
use surge_e2e::sandbox_run::{self, replicas_written};
use surge_sandbox::envoy::workspace_root;
use surge_sandbox::report::RunResult;
use surge_sandbox::run::{KubeMode, RunOptions};
use surge_sandbox::scenario::DEFAULT_SCENARIO;

fn out_dir(test: &str) -> std::path::PathBuf {
    workspace_root().join("target/e2e/kube-sandbox").join(test)
}

/// `path` relative to the current directory (the test's package folder, inside the workspace).
fn relative(path: &std::path::Path) -> std::path::PathBuf {
    let here = std::env::current_dir().unwrap();
    let root = workspace_root();
    let up = here.strip_prefix(&root).unwrap().components().count();
    let mut out: std::path::PathBuf = std::iter::repeat_n("..", up).collect();
    out.push(path.strip_prefix(&root).unwrap());
    assert!(out.is_relative(), "{}", out.display());
    out
}

async fn play(test: &str, yaml: &str) -> RunResult {
    let out_dir = out_dir(test);
    let _ = std::fs::remove_dir_all(&out_dir);
    let options = RunOptions {
        kube: KubeMode::Real,
        // Relative, as `make sandbox` gives it (`sandbox-out`): what the pods' processes are
        // handed (kubeconfigs, token files) must not depend on the folder they run in.
        ..RunOptions::embedded(relative(&out_dir), true)
    };
    sandbox_run::play(yaml, &options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_burst_scales_real_pods_through_real_envoys_and_the_installed_scaler() {
    let result = play("burst", DEFAULT_SCENARIO).await;
    let s = &result.summary;
    let first = s
        .first_scale_patch_ms
        .expect("a scale write after the step");
    // The goal (p50 <= 150 ms, p99 <= 300 ms) is measured by `bench-reaction --kube real`;
    // here a bound that still rules out any scrape- or loop-driven chain.
    assert!(
        first < 1000.0,
        "first scale write {first} ms after the step"
    );
    assert!(
        s.enough_capacity_ms.is_some(),
        "the ready endpoints never caught up with the load"
    );
    // 300 rps at 70 rps per replica: 5, or one more if the queue that built up meanwhile shows;
    // or 4, when the first write lands there: 300 rps is then 1.07 of 4 replicas' worth,
    // inside the HPA's 10 % tolerance that Surge keeps (since the averages count arrivals over
    // the time each report covers, nothing lifts them past it; 2026-12-05).
    assert!(
        (4..=7).contains(&s.max_desired),
        "max desired {}",
        s.max_desired
    );
    assert_eq!(
        s.max_ready, s.max_desired,
        "not every desired pod turned ready"
    );
    assert_eq!(s.scale_downs, 0, "a scale-down during the burst");
    for write in &result.scale_writes {
        assert_eq!(
            write.field_manager.as_deref(),
            Some("surge-scaler"),
            "{write:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_down_deletes_real_pods_only_after_their_drain_and_fails_no_request() {
    let result = play(
        "step_down",
        "name: step-up-down
warmup_s: 4
cooldown_s: 2
pods: {startup_delay_ms: 500, concurrency: 4, service_time_ms: 40}
scaler:
  min_replicas: 1
  max_replicas: 4
  target: 70
  stable_window_s: 6
  scale_down_stabilization_s: 2
load:
  - steady: {rps: 20, seconds: 2}
  - steady: {rps: 200, seconds: 8}
  - steady: {rps: 20, seconds: 12}
",
    )
    .await;
    let s = &result.summary;
    assert!(s.first_scale_patch_ms.is_some(), "the scaler did not react");
    let written = replicas_written(&result);
    assert!(
        written.iter().all(|r| (1..=4).contains(r)),
        "writes outside [min, max]: {written:?}"
    );
    assert!(
        s.scale_downs >= 1,
        "no scale-down after the load fell: {written:?}"
    );
    // Pods scaled away leave the Service's endpoints as soon as they are terminating, then
    // drain: the low phase (last 10 s of load) fails nothing.
    let load_end = 4 + 2 + 8 + 12;
    let tail_errors: u64 = result.seconds[load_end - 10..load_end]
        .iter()
        .map(|r| r.errors)
        .sum();
    assert_eq!(tail_errors, 0, "requests failed while scaling down");
    let last = result.timeline.last().unwrap();
    assert!(last.replicas < 4, "{last:?}");

    // From the API server's audit log: each pod the ReplicaSet controller deleted (gracefully)
    // was deleted for good by the node only after its sidecar's drain (5 s: Istio's
    // terminationDrainDuration, the pods' grace period), so clients that had not yet seen it
    // leave the EndpointSlices still reached it.
    let mut audit = AuditLog::new(out_dir("step_down").join("cluster/audit.log"));
    let records = audit.refresh().to_vec();
    let end = records.last().unwrap().received_unix_us;
    let deletes = |user: &str| -> Vec<(String, i64)> {
        records
            .iter()
            .filter(|r| r.verb == "delete" && r.resource == "pods" && r.subresource.is_none())
            .filter(|r| r.user.contains(user) && (200..300).contains(&r.code))
            .filter_map(|r| Some((r.name.clone()?, r.received_unix_us)))
            .collect()
    };
    let by_replicaset = deletes("replicaset-controller");
    let by_node = deletes("system:node:");
    let settled: Vec<&(String, i64)> = by_replicaset
        .iter()
        .filter(|(_, at)| end - at > 7_000_000)
        .collect();
    assert!(
        !settled.is_empty(),
        "no pod was scaled away in time to settle"
    );
    for (pod, asked) in settled {
        let (_, done) = by_node
            .iter()
            .find(|(name, _)| name == pod)
            .unwrap_or_else(|| panic!("{pod}: deleted by the ReplicaSet, never by the node"));
        let drained = (done - asked) as f64 / 1e6;
        assert!(
            (4.9..7.0).contains(&drained),
            "{pod}: removed {drained:.2} s after its deletion, not after the 5 s drain"
        );
    }
}

/// `sandbox/scenarios/ha-failover.yaml` as shipped: two scaler replicas, the owner of the app
/// SIGKILLed mid-burst. The other takes over within the Lease duration + 1 s, carries the
/// scale-up on (to at least the 7 replicas the load needs), and nothing is scaled down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_failover_scenario_reports_the_takeover_and_no_scale_down() {
    let yaml = std::fs::read_to_string(workspace_root().join("sandbox/scenarios/ha-failover.yaml"))
        .unwrap();
    let result = play("ha_failover", &yaml).await;
    let s = &result.summary;
    assert!(result.failure.is_none(), "{:?}", result.failure);
    let [fault] = &result.faults[..] else {
        panic!("one fault expected: {:?}", result.faults);
    };
    assert_eq!(fault.fault, "kill_scaler_owner");
    assert!(
        fault
            .killed
            .as_deref()
            .is_some_and(|pod| pod.starts_with("surge-scaler-")),
        "{fault:?}"
    );
    let takeover = s.takeover_ms.expect("another replica took over");
    assert_eq!(fault.takeover_ms, Some(takeover));
    // The chart's Lease duration is 4 s.
    assert!(takeover <= 5000.0, "takeover after {takeover} ms");
    assert_eq!(s.scale_downs, 0, "a scale-down during the failover");
    // 450 rps at 70 per replica: 7, or 6, which carries it at 1.07 of its worth, inside the
    // HPA's 10 % tolerance that Surge keeps. No upper bound: on a saturated app the survivor's
    // burst estimate overshot (9-10 written in most runs on 2026-12-04; RELIABILITY.md), which
    // is an estimate's error, not a lost or doubled scale-up (`kube_ha` shows each report
    // counted once across the replicas).
    eprintln!("max desired after the takeover: {}", s.max_desired);
    assert!(
        s.max_desired >= 6,
        "max desired {}: the survivor did not carry the scale-up on",
        s.max_desired
    );
}

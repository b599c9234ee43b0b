//! End-to-end tests of the sandbox: real Envoys running the filter, the real surge-scaler
//! binary, short scenarios on the embedded Kubernetes API (its fault hooks and quick start);
//! the same on the real control plane is `kube_sandbox.rs`. The two tests of stopping run the
//! `surge-sandbox` binary as a user does, on the real control plane (its default). Each needs
//! `make test`'s builds (the filter's .wasm, the workspace binaries, Envoy, the Kubernetes
//! components); a missing one fails the test with a message saying so.

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use surge_e2e::sandbox_run::{self, replicas_written};
use surge_sandbox::envoy::workspace_root;
use surge_sandbox::report::RunResult;
use surge_sandbox::run::RunOptions;

fn out_dir(test: &str) -> PathBuf {
    let dir = workspace_root().join("target/e2e/sandbox").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn play(test: &str, yaml: &str) -> RunResult {
    sandbox_run::play(yaml, &RunOptions::embedded(out_dir(test), true)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_up_scales_up_fast_and_the_step_down_scales_back_without_failures() {
    let result = play(
        "step_up_down",
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
  - steady: {rps: 30, seconds: 2}
  - steady: {rps: 200, seconds: 8}
  - steady: {rps: 20, seconds: 12}
",
    )
    .await;
    let s = &result.summary;
    let first = s
        .first_scale_patch_ms
        .expect("a scale PATCH after the step");
    // The goal (<= 500 ms p99) is measured by `bench-reaction`; here a loose bound that still
    // rules out a scrape- or tick-driven chain.
    assert!(
        first < 2000.0,
        "first scale PATCH {first} ms after the step"
    );
    assert!(s.enough_capacity_ms.is_some(), "capacity never caught up");
    assert!(
        s.max_desired >= 3 && s.max_desired <= 4,
        "max desired {}",
        s.max_desired
    );
    let written = replicas_written(&result);
    assert!(
        written.iter().all(|r| (1..=4).contains(r)),
        "writes outside [min, max]: {written:?}"
    );
    assert!(
        s.scale_downs >= 1,
        "no scale-down after the load fell: {written:?}"
    );
    // The low phase (last 12 s of load, after 2 s for scale-down to settle) loses nothing:
    // pods scaled away drain before they stop.
    let load_end = 4 + 2 + 8 + 12;
    let tail_errors: u64 = result.seconds[load_end - 10..load_end]
        .iter()
        .map(|r| r.errors)
        .sum();
    assert_eq!(tail_errors, 0, "requests failed while scaling down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_fail_to_start_leave_the_ready_pod_serving_and_the_scale_within_bounds() {
    let result = play(
        "pods_fail",
        "name: pods-fail-to-start
warmup_s: 3
pods: {startup_delay_ms: 300, fail_after: 1}
scaler: {min_replicas: 1, max_replicas: 3, target: 70}
load:
  - steady: {rps: 20, seconds: 2}
  - steady: {rps: 150, seconds: 8}
",
    )
    .await;
    let s = &result.summary;
    assert!(s.first_scale_patch_ms.is_some(), "the scaler did not react");
    assert_eq!(s.max_ready, 1, "only the first pod can ever be ready");
    assert!(s.max_desired <= 3, "desired {} above max", s.max_desired);
    assert!(
        replicas_written(&result)
            .iter()
            .all(|r| (1..=3).contains(r)),
        "{:?}",
        replicas_written(&result)
    );
    // The one ready pod keeps serving what it can (100 rps capacity).
    let served: u64 = result.seconds.iter().map(|r| r.ok).sum();
    assert!(served > 800, "only {served} requests served");
    // And the Deployment's status says so.
    assert!(result.timeline.iter().all(|p| p.ready <= 1));
    assert!(
        result
            .timeline
            .iter()
            .any(|p| p.replicas > 1 && p.ready == 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_killed_and_restarted_mid_burst_never_scales_down() {
    let result = play(
        "scaler_restart",
        "name: scaler-killed-mid-burst
warmup_s: 4
pods: {startup_delay_ms: 500}
scaler: {min_replicas: 1, max_replicas: 5, target: 70}
load:
  - steady: {rps: 30, seconds: 2}
  - steady: {rps: 250, seconds: 14}
faults:
  - kill_scaler: {at_s: 6, restart_after_s: 2}
",
    )
    .await;
    let s = &result.summary;
    assert!(
        s.first_scale_patch_ms.is_some(),
        "no scale-up before the kill"
    );
    assert_eq!(
        s.scale_downs,
        0,
        "scaled down: {:?}",
        replicas_written(&result)
    );
    let kill_at = 4.0 + 6.0;
    let desired_at_kill = result
        .timeline
        .iter()
        .take_while(|p| p.t < kill_at)
        .last()
        .map_or(0, |p| p.desired);
    assert!(
        desired_at_kill >= 3,
        "desired only {desired_at_kill} before the kill"
    );
    // From the kill on (the scaler down 2 s, then restarted with no state), the replicas never
    // go below what they were.
    let lowest_after = result
        .timeline
        .iter()
        .filter(|p| p.t >= kill_at)
        .map(|p| p.desired)
        .chain([desired_at_kill])
        .min()
        .unwrap_or(0);
    assert!(
        lowest_after >= desired_at_kill,
        "desired fell from {desired_at_kill} to {lowest_after} around the restart"
    );
    // `play` asserted no failure: the restarted scaler answered /readyz.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_dropped_by_the_kernel_through_a_step_hold_the_scale_then_scale_up_once_through() {
    // The kernel drops every packet to the scaler's report port from 0.5 s before the step to
    // 2.5 s after it: the whole path (real Envoys, filter, scaler, API) with the reports of the
    // step lost in flight or stuck on dead connections.
    let result = play(
        "reports_dropped",
        "name: reports-dropped-by-the-kernel
warmup_s: 4
pods: {startup_delay_ms: 500}
scaler: {min_replicas: 1, max_replicas: 5, target: 70}
load:
  - steady: {rps: 30, seconds: 2}
  - steady: {rps: 250, seconds: 10}
faults:
  - drop_reports: {at_s: 1.5, for_s: 3}
",
    )
    .await;
    assert_eq!(result.faults.len(), 1, "{:?}", result.faults);
    let fault = &result.faults[0];
    let dropped = fault.packets_dropped;
    assert!(dropped > 0, "the rule dropped nothing: {fault:?}");
    let writes: Vec<(f64, i64)> = result
        .scale_writes
        .iter()
        .filter(|w| (200..300).contains(&w.status))
        .filter_map(|w| Some((w.t, w.replicas?)))
        .collect();
    assert!(
        writes
            .iter()
            .all(|(t, _)| *t < fault.from_s || *t >= fault.until_s),
        "a scale write while every report was dropped ({:.2}-{:.2} s): {writes:?}",
        fault.from_s,
        fault.until_s
    );
    let (first_t, first) = *writes
        .iter()
        .find(|(t, _)| *t >= fault.until_s)
        .unwrap_or_else(|| panic!("no scale-up after the fault: {writes:?}"));
    let after = first_t - fault.until_s;
    println!(
        "{dropped} packets dropped over {:.2}-{:.2} s; first write ({first}) {:.0} ms after",
        fault.from_s,
        fault.until_s,
        after * 1000.0
    );
    // A report stuck on a dead connection waits out the filter's 1 s timeout, and TCP's
    // retransmission timers add up to a second more.
    assert!(
        after < 3.0,
        "the scale-up came {after:.2} s after the fault"
    );
    assert!(first >= 2, "first write after the fault: {first}");
    let s = &result.summary;
    assert_eq!(s.scale_downs, 0, "scaled down on missing data: {writes:?}");
    assert!(
        (3..=5).contains(&s.max_desired),
        "max desired {}",
        s.max_desired
    );
}

async fn unreachable(test: &str, how: &str) {
    let result = play(
        test,
        &format!(
            "name: scaler-{how}
warmup_s: 2
pods: {{startup_delay_ms: 300}}
scaler: {{min_replicas: 1, max_replicas: 3, target: 70, reachability: {how}}}
load:
  - steady: {{rps: 20, seconds: 2}}
  - steady: {{rps: 60, seconds: 8}}
"
        ),
    )
    .await;
    let s = &result.summary;
    assert_eq!(s.failed, 0, "requests failed while the scaler was {how}");
    assert!(s.requests > 500);
    // One pod serves 60 rps well within capacity: latency stays near the 40 ms service time.
    let p99 = s.p99_ms.unwrap();
    assert!(p99 < 150.0, "p99 {p99} ms");
    assert_eq!(s.scale_writes, 0, "nothing can scale without reports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_unaffected_when_the_scaler_refuses_connections() {
    unreachable("scaler_refused", "refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_unaffected_when_the_scaler_hangs() {
    unreachable("scaler_hanging", "hanging").await;
}

/// Processes whose command line or environment mentions `needle` (Envoys name their files
/// under the output directory; the scaler gets a kubeconfig there; the control plane its
/// certificates, data and logs).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let mut text = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        text.extend(std::fs::read(entry.path().join("environ")).unwrap_or_default());
        if String::from_utf8_lossy(&text).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// The `surge-sandbox` binary (`$SURGE_SANDBOX_BIN`, else the debug build).
fn sandbox_bin() -> PathBuf {
    let bin = std::env::var_os("SURGE_SANDBOX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/surge-sandbox"));
    assert!(
        bin.is_file(),
        "{} missing: run `make test` (it builds the workspace binaries)",
        bin.display()
    );
    bin
}

/// Scaler pods the sandbox runs: the chart's default `replicaCount`.
const SCALER_REPLICAS: usize = 2;

/// The control plane's processes (their names as the kernel keeps them, 15 characters).
const CONTROL_PLANE: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller",
    "kube-scheduler",
];

#[test]
fn ctrl_c_stops_every_envoy_the_scaler_and_the_control_plane() {
    let bin = sandbox_bin();
    let out = out_dir("interrupt");
    let mut child = std::process::Command::new(&bin)
        .args(["run", "--quiet", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let count =
        |children: &[ProcStat], name: &str| children.iter().filter(|p| p.name == name).count();
    // Wait until the control plane, the scaler pod and an app pod's Envoy run.
    let deadline = Instant::now() + Duration::from_secs(90);
    let children = loop {
        let children = children_of(pid);
        if count(&children, "envoy") >= 1 && count(&children, "surge-scaler") == SCALER_REPLICAS {
            break children;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("no Envoy and scaler within 90 s: {children:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for name in CONTROL_PLANE {
        assert_eq!(
            count(&children, name),
            1,
            "{name} not running: {children:?}"
        );
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("surge-sandbox did not stop within 20 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!exit.success(), "an interrupted run reports failure");
    let left: Vec<&ProcStat> = children.iter().filter(|p| still_runs(p)).collect();
    assert!(left.is_empty(), "processes left after Ctrl-C: {left:?}");
    let out_str = out.to_string_lossy().into_owned();
    let left = processes_mentioning(&out_str);
    assert!(left.is_empty(), "processes left after Ctrl-C: {left:?}");
}

/// What `/proc/<pid>/stat` says of a process: its name, state, parent and start time (clock
/// ticks since boot; with the pid it names one process, even if the pid is reused).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcStat {
    pid: u32,
    name: String,
    state: char,
    parent: u32,
    started: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let (_, name) = head.split_once('(')?;
    // After the name: state, ppid, pgrp, ..., starttime (field 22 of stat, 20th after the name).
    let fields: Vec<&str> = tail.split_whitespace().collect();
    Some(ProcStat {
        pid,
        name: name.to_string(),
        state: fields.first()?.chars().next()?,
        parent: fields.get(1)?.parse().ok()?,
        started: fields.get(19)?.parse().ok()?,
    })
}

/// The live (not zombie) children of `parent`.
fn children_of(parent: u32) -> Vec<ProcStat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(proc_stat)
        .filter(|p| p.parent == parent && p.state != 'Z')
        .collect()
}

/// True while the process `p` names still runs (same pid and start time, not a zombie).
fn still_runs(p: &ProcStat) -> bool {
    proc_stat(p.pid).is_some_and(|now| now.started == p.started && now.state != 'Z')
}

#[test]
fn kill_9_of_the_sandbox_leaves_no_envoy_no_scaler_and_no_control_plane_running() {
    let bin = sandbox_bin();
    let out = out_dir("kill_9");
    std::fs::create_dir_all(&out).unwrap();
    let scenario = out.join("scenario.yaml");
    // Two pods from the start (no scale-up needed for two Envoys); the step starts more, so the
    // kill lands while some Envoys serve and others are starting. 14 s of load in all, so a run
    // the kill missed ends by itself.
    std::fs::write(
        &scenario,
        "name: killed
warmup_s: 2
pods: {startup_delay_ms: 300}
scaler: {min_replicas: 2, max_replicas: 4, target: 70}
load:
  - steady: {rps: 30, seconds: 2}
  - steady: {rps: 300, seconds: 10}
",
    )
    .unwrap();
    let mut sandbox = std::process::Command::new(&bin)
        .args(["run", "--quiet", "--out"])
        .arg(&out)
        .arg(&scenario)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = sandbox.id();
    let count =
        |children: &[ProcStat], name: &str| children.iter().filter(|p| p.name == name).count();
    // The scaler starts once the first pods are ready, just before the load.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let children = children_of(pid);
        if count(&children, "envoy") >= 2 && count(&children, "surge-scaler") == SCALER_REPLICAS {
            break;
        }
        if let Some(exit) = sandbox.try_wait().unwrap() {
            panic!("surge-sandbox exited ({exit}) before its Envoys and scaler ran");
        }
        if Instant::now() >= deadline {
            let _ = sandbox.kill();
            panic!("no 2 Envoys and a scaler within 90 s: {children:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Just past the step (warm-up 2 s + 2 s): new pods are being started.
    std::thread::sleep(Duration::from_millis(4500));
    let started = children_of(pid);
    sandbox.kill().unwrap(); // SIGKILL: no destructor, no signal handler runs
    sandbox.wait().unwrap();
    println!("children at the kill: {started:?}");
    assert!(
        count(&started, "envoy") >= 2 && count(&started, "surge-scaler") == SCALER_REPLICAS,
        "children at the kill: {started:?}"
    );
    for name in CONTROL_PLANE {
        assert_eq!(count(&started, name), 1, "{name} not running: {started:?}");
    }

    // Envoy gets SIGTERM (it sets its own death signal) and exits within milliseconds; the
    // scaler and the control plane's processes get SIGKILL. Also look for anything started after the snapshot (an Envoy names
    // files under the output directory).
    let out_str = out.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    let left = loop {
        let mut left: Vec<ProcStat> = started.iter().filter(|p| still_runs(p)).cloned().collect();
        let later: Vec<ProcStat> = processes_mentioning(&out_str)
            .into_iter()
            .filter_map(proc_stat)
            .filter(|p| p.state != 'Z' && !left.iter().any(|l| l.pid == p.pid))
            .collect();
        left.extend(later);
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for p in &left {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &p.pid.to_string()])
            .status();
    }
    assert!(
        left.is_empty(),
        "left running 15 s after kill -9 of the sandbox: {left:?}"
    );
}

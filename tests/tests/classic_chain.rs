//! The classic chain for real (`surge-sandbox run --autoscaler classic`): the same real pods
//! and Envoys as Surge's runs, scraped every 15 s by Prometheus (built from its module) that finds them through
//! the API server, the seed's ScaledObject served by KEDA (built from its module) through the
//! aggregation layer, and the real HPA controller writing the scale. A load step must make the
//! HPA scale the Deployment, and nothing but the HPA writes it.
//!
//! Needs `make classic-tools` besides `make tools` (`make test` runs both).

// Tests fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use surge_e2e::sandbox_run::{self, replicas_written};
use surge_sandbox::envoy::workspace_root;
use surge_sandbox::run::{Autoscaler, KubeMode, RunOptions};

/// The burst's pods (100 rps each) and target (70 rps per replica), 30 rps then 300 rps held
/// long enough for two scrapes, KEDA's poll and an HPA sync after it.
const STEP: &str = "
name: classic-step
slo_ms: 250
warmup_s: 20
cooldown_s: 2
pods:
  startup_delay_ms: 2000
  concurrency: 4
  service_time_ms: 40
  queue: 200
  envoy_concurrency: 1
scaler:
  min_replicas: 1
  max_replicas: 10
  metric: rps
  target: 70
load:
  - steady: {rps: 30, seconds: 5}
  - steady: {rps: 300, seconds: 75}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_step_makes_the_real_hpa_scale_through_keda_and_prometheus() {
    let out_dir = workspace_root().join("target/e2e/classic-chain/step");
    let _ = std::fs::remove_dir_all(&out_dir);
    let options = RunOptions {
        kube: KubeMode::Real,
        autoscaler: Autoscaler::Classic,
        ..RunOptions::embedded(&out_dir, true)
    };
    let result = sandbox_run::play(STEP, &options).await;
    let written = replicas_written(&result);
    let first = result.summary.first_scale_patch_ms;
    eprintln!(
        "classic chain: {}; HPA scale writes {written:?}, first {first:?} ms after the step",
        result.autoscaler
    );
    assert!(result.autoscaler.contains("KEDA"), "{}", result.autoscaler);
    // Scaled up by the HPA (the only writer followed), from the external metric KEDA served.
    assert!(
        written.iter().any(|&r| r >= 2),
        "the HPA never scaled up: {:?}",
        result.scale_writes
    );
    // Scrape, poll and sync loops: no chain of them reacts within a second of the step.
    let first = first.expect("a scale write after the step");
    assert!(
        first > 1000.0,
        "first scale write {first} ms after the step"
    );
}

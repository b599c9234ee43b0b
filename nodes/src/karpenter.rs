//! Karpenter (kwok provider) started beside the real control plane as its Deployment would run
//! it, after its CRDs, with the NodePool and KWOKNodeClass of [`crate::nodepool`].
//!
//! Out of a cluster it needs what its pod would be given: a kubeconfig (the administrator's
//! here: the chart's ClusterRoles are Karpenter's concern, not what Surge tests),
//! `DISABLE_LEADER_ELECTION` (one replica, no namespace to hold a Lease in), the metrics and
//! health ports. Everything else keeps Karpenter's defaults, batching included (a window closes
//! 1 s after the last pending pod, at most 10 s after the first): those are what a user's
//! cluster runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use surge_cluster::ControlPlane;
use surge_cluster::kubectl;
use surge_cluster::launch::{http_status, start_with_env, tail};
use surge_cluster::process::ChildGuard;

use crate::nodepool::{self, PoolSettings};
use crate::{NodesError, Result, components, io};

/// The CRDs Karpenter needs before it starts.
const CRDS: [&str; 4] = [
    "nodepools.karpenter.sh",
    "nodeclaims.karpenter.sh",
    "kwoknodeclasses.karpenter.kwok.sh",
    "capacitybuffers.autoscaling.x-k8s.io",
];

/// Karpenter's feature gates: its defaults, with CapacityBuffer on (headroom, issue 16).
const FEATURE_GATES: &str = "NodeRepair=false,ReservedCapacity=true,SpotToSpotConsolidation=false,\
                             NodeOverlay=false,StaticCapacity=false,CapacityBuffer=true";

/// Running Karpenter; the process stops when this is dropped.
#[derive(Debug)]
pub struct Karpenter {
    log: PathBuf,
    metrics_port: u16,
    _process: ChildGuard,
}

impl Karpenter {
    /// Applies Karpenter's CRDs, the pool's KWOKNodeClass and NodePool, and starts Karpenter
    /// (its log in `dir`); returns once it answers `/readyz`.
    pub async fn start(plane: &ControlPlane, dir: &Path, pool: &PoolSettings) -> Result<Self> {
        let binary = components::karpenter()?;
        let crds = components::karpenter_crds()?;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        kubectl::apply_crds(plane, &crds, &CRDS, Duration::from_secs(30)).await?;
        for object in [nodepool::node_class(pool), nodepool::node_pool(pool)] {
            kubectl::run(plane, &["apply", "-f", "-"], Some(&object.to_string()))?;
        }

        let [metrics, health] =
            surge_cluster::free_ports::<2>().map_err(io("pick ports for Karpenter"))?;
        let (metrics_text, health_text) = (metrics.to_string(), health.to_string());
        let kubeconfig = plane.admin_kubeconfig().display().to_string();
        let log = dir.join("karpenter.log");
        let mut process = start_with_env(
            "karpenter",
            &binary,
            &[],
            &[
                ("KUBECONFIG", kubeconfig.as_str()),
                ("DISABLE_LEADER_ELECTION", "true"),
                ("METRICS_PORT", metrics_text.as_str()),
                ("HEALTH_PROBE_PORT", health_text.as_str()),
                ("FEATURE_GATES", FEATURE_GATES),
                ("LOG_LEVEL", "debug"),
            ],
            &log,
        )?;
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        loop {
            if http_status(health, "/readyz") == Some(200) {
                break;
            }
            let why = if !process.is_running() {
                "it exited"
            } else if Instant::now() >= deadline {
                "no 200 from /readyz"
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            return Err(NodesError::NotReady(format!(
                "Karpenter did not turn ready within {timeout:?}: {why}; {} ends:\n{}",
                log.display(),
                tail(&log, 15)
            )));
        }
        Ok(Self {
            log,
            metrics_port: metrics,
            _process: process,
        })
    }

    /// Karpenter's log.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Where Karpenter serves its Prometheus metrics (`/metrics` on 127.0.0.1).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }
}

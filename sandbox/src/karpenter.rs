//! Node elasticity on the real control plane (`make sandbox KUBE=real` with a scenario's
//! `nodes:`, and the tests): Karpenter with its kwok provider (`surge_nodes`) adds Nodes when
//! pods do not fit, and the sandbox's kubelet fleet ([`crate::node::fleet`]) turns each Ready
//! and runs its pods.

use std::path::Path;

use kube::Client;
use surge_cluster::ControlPlane;
use surge_nodes::karpenter::Karpenter;
use surge_nodes::nodepool::PoolSettings;

use crate::node::fleet::{Fleet, FleetOptions, Joined, Launched};
use crate::node::{NodeOptions, RunningPods};
use crate::run::RunError;

/// Karpenter and the nodes it added; both stop when this is dropped.
pub struct NodeElasticity {
    // Drop order: the nodes' pods before Karpenter.
    fleet: Fleet,
    karpenter: Karpenter,
}

impl NodeElasticity {
    /// Starts Karpenter with `pool`, then the fleet (new nodes take `template`'s app runtime
    /// and pod network; it watches NodeClaims, whose CRD Karpenter's start applies); files
    /// under `dir`. Karpenter launches nothing before pods are pending and its batch window
    /// (at least 1 s) closed, so the fleet is watching before the first Node appears.
    pub async fn start(
        plane: &ControlPlane,
        client: Client,
        template: NodeOptions,
        running: RunningPods,
        dir: &Path,
        pool: &PoolSettings,
    ) -> Result<Self, RunError> {
        let kubeconfig_dir = dir.join("nodes");
        std::fs::create_dir_all(&kubeconfig_dir)
            .map_err(|e| RunError::Setup(format!("create {}: {e}", kubeconfig_dir.display())))?;
        let karpenter = Karpenter::start(plane, &dir.join("karpenter"), pool)
            .await
            .map_err(|e| RunError::Setup(format!("start Karpenter: {e}")))?;
        let fleet = Fleet::start(
            client,
            FleetOptions {
                template,
                pki: plane.pki().clone(),
                kubeconfig_dir,
                running,
            },
        );
        Ok(Self { fleet, karpenter })
    }

    /// The nodes that joined so far.
    pub fn joined(&self) -> Vec<Joined> {
        self.fleet.joined()
    }

    /// The NodeClaims Karpenter created so far.
    pub fn launched(&self) -> Vec<Launched> {
        self.fleet.launched()
    }

    /// Karpenter's log.
    pub fn karpenter_log(&self) -> &Path {
        self.karpenter.log()
    }

    /// Stops the nodes' pods, then Karpenter.
    pub async fn shutdown(self) {
        self.fleet.shutdown().await;
        drop(self.karpenter);
    }
}

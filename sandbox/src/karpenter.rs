//! Node elasticity on the real control plane (`make sandbox KUBE=real` with a scenario's
//! `nodes:`, and the tests): Karpenter with its kwok provider (`surge_nodes`) adds Nodes when
//! pods do not fit, and the sandbox's kubelet fleet ([`crate::node::fleet`]) turns each Ready
//! and runs its pods.

use std::path::Path;

use kube::Client;
use surge_cluster::ControlPlane;
use surge_nodes::karpenter::Karpenter;
use surge_nodes::nodepool::PoolSettings;

use crate::node::NodeOptions;
use crate::node::fleet::{Fleet, FleetOptions, Joined};
use crate::run::RunError;

/// Karpenter and the nodes it added; both stop when this is dropped.
pub struct NodeElasticity {
    // Drop order: the nodes' pods before Karpenter.
    fleet: Fleet,
    karpenter: Karpenter,
}

impl NodeElasticity {
    /// Starts the fleet (new nodes take `template`'s app runtime and pod network), then
    /// Karpenter with `pool`; its files under `dir`.
    pub async fn start(
        plane: &ControlPlane,
        client: Client,
        template: NodeOptions,
        dir: &Path,
        pool: &PoolSettings,
    ) -> Result<Self, RunError> {
        let kubeconfig_dir = dir.join("nodes");
        std::fs::create_dir_all(&kubeconfig_dir)
            .map_err(|e| RunError::Setup(format!("create {}: {e}", kubeconfig_dir.display())))?;
        let fleet = Fleet::start(
            client,
            FleetOptions {
                template,
                pki: plane.pki().clone(),
                kubeconfig_dir,
            },
        );
        let karpenter = Karpenter::start(plane, &dir.join("karpenter"), pool)
            .await
            .map_err(|e| RunError::Setup(format!("start Karpenter: {e}")))?;
        Ok(Self { fleet, karpenter })
    }

    /// The nodes that joined so far.
    pub fn joined(&self) -> Vec<Joined> {
        self.fleet.joined()
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

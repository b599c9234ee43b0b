//! Node elasticity for real, beside the real control plane ([`surge_cluster`]): Karpenter with
//! its kwok cloud provider adds Node objects when pods do not fit, and the sandbox's kubelet
//! (`surge-sandbox`'s `node::fleet`) turns them Ready and runs their pods.
//!
//! ```text
//!  kube-scheduler: pod does not fit -> PodScheduled=False, Unschedulable
//!        |
//!  Karpenter (kwok provider): batch pending pods -> NodeClaim -> Node (karpenter.sh/unregistered taint)
//!        |                                                         |
//!        |                                    sandbox kubelet: Ready after the boot delay
//!        `-- registered, initialized (taint off) <-----------------'
//!  kube-scheduler binds the pods to the new node; the sandbox kubelet starts them
//! ```
//!
//! What is real: Karpenter 1.14 (provisioning, batching, NodeClaim lifecycle, disruption) built
//! from its published Go module (`cluster/build-karpenter.sh`), the scheduler, the API server.
//! What is faked: the instances. The kwok provider's "instance" is the Node object it creates
//! itself; no machine boots, so the sandbox's kubelet waits a configured boot delay before it
//! reports the node Ready, and runs the node's pods as processes on this machine.

pub mod components;
pub mod karpenter;
pub mod nodepool;

/// What can go wrong starting Karpenter or applying its objects.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    /// Karpenter or its CRDs are not built.
    #[error("{0}")]
    Missing(String),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A step of the control plane's harness failed (kubectl, a process).
    #[error(transparent)]
    Cluster(#[from] surge_cluster::ClusterError),
    /// Karpenter did not turn ready in time; the text says where its log is.
    #[error("{0}")]
    NotReady(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, NodesError>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodesError {
    let context = context.into();
    move |source| NodesError::Io { context, source }
}

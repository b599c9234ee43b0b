//! The classic chain Surge replaces, run for real beside the real control plane
//! ([`surge_cluster`]): sidecar counters -> Prometheus scrape every 15 s -> KEDA's Prometheus
//! trigger -> `external.metrics.k8s.io` -> the HPA controller's 15 s loop -> the Deployment.
//!
//! ```text
//!  pods' Envoys (/stats/prometheus) <-- Prometheus (kubernetes_sd_configs: the API server's Pods)
//!                                          ^ PromQL, every pollingInterval
//!  KEDA operator (ScaledObject -> HPA) --> gRPC (mutual TLS) <-- KEDA metrics API server
//!                                                                  ^ aggregation layer
//!  kube-controller-manager's HPA controller --> external metric --> scale subresource
//! ```
//!
//! What is real: Prometheus and KEDA are built from their published Go modules
//! (`cluster/build-classic.sh`); the HPA is the controller-manager's. What is arranged: the
//! processes run on this machine instead of in pods, so Prometheus's pod addresses are rewritten
//! to where the sandbox serves them ([`prometheus::Prometheus`]), and KEDA's metrics API server
//! is registered with an APIService, Service and EndpointSlice naming this machine's own address
//! ([`keda::Keda`]).

pub mod components;
pub mod keda;
pub mod prometheus;
pub mod scaled_object;

/// What can go wrong starting or asking the chain's components.
#[derive(Debug, thiserror::Error)]
pub enum ClassicError {
    /// A component is not built or installed.
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
    /// A step of the control plane's harness failed (certificates, kubectl).
    #[error(transparent)]
    Cluster(#[from] surge_cluster::ClusterError),
    /// Certificates could not be made or written.
    #[error(transparent)]
    Pki(#[from] surge_cluster::pki::PkiError),
    /// A component did not turn ready in time; the text says where its log is.
    #[error("{0}")]
    NotReady(String),
    /// An answer could not be read.
    #[error("{0}")]
    Answer(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, ClassicError>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClassicError {
    let context = context.into();
    move |source| ClassicError::Io { context, source }
}

//! `surge-cluster`: a real Kubernetes control plane on this machine, for the sandbox and the
//! tests.
//!
//! The components are the published releases, built from their Go modules by
//! `cluster/build-components.sh` at the versions pinned in `cluster/versions.env` (Kubernetes
//! 1.35, etcd 3.6): nothing here imitates them. This crate makes what kubeadm would make for a
//! one-node control plane (a CA, serving and client certificates, the service-account key, the
//! kubeconfigs), starts the processes on loopback, waits for each to be ready, and kills them
//! with the harness.
//!
//! ```text
//!  components (.tools/kube/<v>, .tools/etcd/<v>)     pki: CA, certs, SA key
//!              \                                     /
//!               control_plane: etcd -> kube-apiserver -> controller-manager, scheduler
//!                                         |
//!                          audit log -> audit::AuditLog (what the server saw, when)
//! ```
//!
//! There is no kubelet and no container runtime: the sandbox plays a node's kubelet against
//! this API server (`surge-sandbox`'s `node` module).

pub mod audit;
pub mod components;
pub mod control_plane;
pub mod kubeconfig;
pub mod kubectl;
pub mod launch;
pub mod pki;
pub mod process;
pub mod tokens;

pub use control_plane::{ClusterError, ControlPlane, Options, StartTimes};
pub use launch::{free_port, free_ports};

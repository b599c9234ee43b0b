//! `surge-sandbox`: the whole Surge burst path on one machine.
//!
//! Real Envoy sidecars running the real filter (V8), the real `surge-scaler` binary over real
//! HTTP, and an embedded Kubernetes API ([`kubeapi`]) standing in for the cluster, as an
//! embedded database stands in for a server.

pub mod app;
pub mod app_pod;
pub mod bench;
pub mod chart;
pub mod compare;
pub mod endpoints;
pub mod kubeapi;
pub mod load;
pub mod nft;
pub mod node;
pub mod pods;
pub mod real;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod scaler;
pub mod scenario;
pub mod tap;

pub mod envoy;
pub use surge_cluster::process;

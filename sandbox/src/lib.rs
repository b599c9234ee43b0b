//! `surge-sandbox`: the whole Surge burst path on one machine.
//!
//! Real Envoy sidecars running the real filter (V8), the real `surge-scaler` binary over real
//! HTTP, and Kubernetes: by default the real control plane ([`real`], built by `make tools`)
//! with the sandbox's node as kubelet ([`node`]); or, for quick runs and fault hooks a real
//! server lacks, an embedded API ([`kubeapi`]) with its own pods controller ([`pods`]).
//! [`sandbox`] starts either behind one interface; [`run`] plays a scenario on it.

pub mod app;
pub mod app_pod;
pub mod bench;
pub mod chart;
pub mod classic;
pub mod compare;
pub mod endpoints;
pub mod ingress;
pub mod karpenter;
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
pub mod service_proxy;
pub mod tap;

pub mod envoy;
pub use surge_cluster::process;

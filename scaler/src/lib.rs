//! `surge-scaler`: turns the counters that Surge's proxy filters push into replica counts, and
//! writes them to each target's `scale` subresource.
//!
//! ```text
//!  proxies --POST /v1/reports--> ingest (axum) --> window (per target, 100 ms buckets)
//!                                       |                 |
//!                                  notify target          v
//!                                       '-----> controller: decision (pure) --> PATCH .../scale
//!  SurgeScalers (watch) -------------------------^            status, Events <--'
//! ```
//!
//! - [`crd`]: the `SurgeScaler` resource.
//! - [`cli`]: the command line.
//! - [`decision`] and [`zero`]: the pure scaling rules (scale to zero and back in [`zero`]).
//! - [`headroom`]: the node headroom a target keeps, sized from its bursts (pure).
//! - [`waypoint`]: which ambient waypoint serves a Service, so its reports count (pure).
//! - [`shard`]: several replicas share the targets through Leases; [`mirror`] copies each
//!   report to the other replicas, so whichever owns a target has all of its reports.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod controller;
pub mod crd;
pub mod decision;
pub mod headroom;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod mirror;
pub mod server;
pub mod shard;
pub mod waypoint;
pub mod window;
pub mod zero;

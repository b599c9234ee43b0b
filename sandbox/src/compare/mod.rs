//! Side by side: Surge against the classic Prometheus + KEDA + HPA chain and Knative's KPA, on the
//! same per-second load, the same pod start-up time and the same capacity per pod.
//!
//! Everything here is a pure, deterministic discrete-time simulation (no clock, no I/O):
//!
//! ```text
//!  scenario (per-second offered load)
//!        |
//!        v
//!  sim::simulate ── every 100 ms ──> pods (start-up delay, capacity) ──> fluid queue ──> series
//!        ^                                   |
//!        |  desired replicas                 | Observation (request counter, ready pods, ...)
//!        +──────────── models::* <───────────+
//! ```
//!
//! - [`sim`]: the simulation loop, the pod and queue model and the metrics of one run.
//! - [`models`]: one [`sim::Autoscaler`] per system (classic chain, the tutorial's counter
//!   variant, Knative's KPA), each a pure struct whose constants cite
//!   `shared/reference/autoscalers.md` (the anchors' documented formulas and defaults).
//! - [`scenarios`]: the scenario set (steps, spike, ramp, noisy diurnal curve, drop to zero).
//! - [`report`]: runs every system over every scenario and writes the markdown and JSON table.
//! - [`chart`]: one hand-written SVG chart per scenario.
//! - [`rng`]: a small seeded generator, so phases and noise are reproducible.

pub mod chart;
pub mod models;
pub mod report;
pub mod rng;
pub mod scenarios;
pub mod sim;

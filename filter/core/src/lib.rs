//! `surge-filter-core`: everything Surge's proxy-wasm filter decides, with no host in sight.
//!
//! The filter (`surge-filter`, a cdylib for wasm32-wasip1) is thin glue that turns Envoy's
//! callbacks into calls on these types; the sandbox's comparison replays the same report
//! schedule natively, and the fuzz targets drive the same parsers.
//!
//! ```text
//!  pluginConfig bytes --json--> config::Config (validated, errors name the field)
//!  route / vhost / cluster property bytes --route--> RouteKey --RouteTable--> Slot
//!  per request: tally::Delta (in VM memory) --flush--> host metrics
//!  every check: surge::Scheduler (arrivals, recent rate, periodic | surge)
//!               lease (who reports, seq, instance id) --report--> surge_wire::ReportBody JSON
//!  scale from zero: scaler's answer --hold::parse_answer--> ColdSet (shared) -> HoldQueue per
//!               VM (pause, resume in arrival order, 503 at the cap or timeout) -> HeldTable
//!               (shared) -> the report's `held`
//! ```
//!
//! Time and host values are arguments everywhere, so every rule is tested natively.

pub mod config;
pub mod hold;
pub mod identity;
pub mod inflight;
pub mod json;
pub mod lease;
pub mod report;
pub mod route;
pub mod surge;
pub mod tally;

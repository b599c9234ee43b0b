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
//!               lease (who reports, seq, instance id) --report--> surge_wire::Report JSON
//! ```
//!
//! Time and host values are arguments everywhere, so every rule is tested natively.

pub mod config;
pub mod identity;
pub mod inflight;
pub mod json;
pub mod lease;
pub mod report;
pub mod route;
pub mod surge;
pub mod tally;

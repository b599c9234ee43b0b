//! `surge-filter`: a proxy-wasm filter for Envoy (Istio sidecars and gateways) that counts
//! requests per route and pushes the cumulative counters straight to the Surge scaler, early
//! when it sees a surge.
//!
//! ```text
//!  worker VM 1 ─┐ on_log: tally in VM memory, flushed every 10 ms / tick to host metrics
//!               │         surge.route.<i>.*  (process-wide Envoy stats)
//!  worker VM 2 ─┤ route key -> index <i>: table in shared data (CAS)
//!  main VM    ──┘
//!        every check period, each VM: CAS lease in shared data -> one reporter
//!        reporter: get_metric (process-wide totals) -> Scheduler (periodic | surge)
//!                  -> seq record (CAS) -> surge_wire::Report JSON -> dispatch_http_call
//! ```
//!
//! Pure modules (`config`, `json`, `route`, `surge`, `tally`, `lease`, `report`, `identity`) hold
//! every decision and are tested natively; only `glue` imports `proxy_wasm`, and only on wasm32.

pub mod config;
pub mod identity;
pub mod json;
pub mod lease;
pub mod report;
pub mod route;
pub mod surge;
pub mod tally;

#[cfg(target_arch = "wasm32")]
mod glue;

/// The module's `_initialize` export (defined by the SDK's macro), which installs the root.
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs, unreachable_pub)]
mod entry {
    proxy_wasm::main! {{
        super::glue::start();
    }}
}

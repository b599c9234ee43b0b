//! `surge-filter`: a proxy-wasm filter for Envoy (Istio sidecars and gateways) that counts
//! requests per route and pushes the cumulative counters straight to the Surge scaler, early
//! when it sees a surge; and, in gateways and on sidecars' outbound side, holds the requests to
//! a destination scaled to zero until the scaler has woken it.
//!
//! ```text
//!  worker VM 1 ─┐ request headers: in flight +1; on_log: tally in VM memory,
//!               │   flushed every 10 ms / tick to host metrics surge.route.<i>.*
//!  worker VM 2 ─┤   (process-wide Envoy stats)
//!  main VM    ──┘ route key -> index <i>: table in shared data (CAS)
//!        every check period, each VM: CAS lease in shared data -> one reporter
//!        reporter: get_metric (process-wide totals) -> Scheduler (periodic | surge | activation)
//!                  -> seq record (CAS) -> surge_wire::ReportBody JSON -> dispatch_http_call
//!        reporter: the answer's cold destinations -> shared data; every VM of a gateway or
//!                  client plugin pauses requests to them, resumes them in arrival order when
//!                  warm (woken through a shared queue), 503s beyond the cap or the timeout
//! ```
//!
//! This crate is only the glue that imports `proxy_wasm` (built for wasm32 only): host events
//! in, calls on the pure types of `surge-filter-core` out, where every decision lives and is
//! tested natively.

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

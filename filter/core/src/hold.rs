//! Holding requests for cold destinations, so that a destination scaled to zero can be woken by
//! its first request instead of failing it.
//!
//! The scaler's answer to every report names the destinations that are cold (`surge_wire::Answer`,
//! by the Envoy cluster a caller's route sends to). Whichever VM sent the report stores that
//! list in shared data; every VM of a gateway or client plugin reads it on its tick and keeps a
//! copy ([`ColdSet`]). A request whose cluster is in the copy is paused at its request headers
//! and queued in its VM ([`HoldQueue`], arrival order); each VM publishes how many it holds per
//! destination in one shared record ([`HeldTable`]), which bounds the proxy-wide count per
//! destination and gives the reporter the report's `held`.
//!
//! ```text
//!  reporter VM: answer {"cold": [...]} --parse_answer--> ColdSet --> "surge.v1.cold"
//!  every VM, each tick: "surge.v1.cold" --> its ColdSet copy (none cold: the request path
//!                       makes no host call for holding at all)
//!  request to a cold cluster: HoldQueue::admit (cap per destination, proxy-wide via
//!                       "surge.v1.held") --> Held: pause | Full: 503 + Retry-After
//!  every VM, each tick: HoldQueue::sweep: warm again -> resume, in arrival order (the
//!                       oldest at once, the rest HEAD_START_MS later, the glue ticking
//!                       then); past the timeout -> 503 + Retry-After; HeldTable refreshed
//!  reporter: "surge.v1.held" --> report `held` (an activation report, every check period
//!            while anything is held)
//! ```
//!
//! Pure: the glue does the shared-data I/O and the host calls, and passes `now` in.

mod cold;
mod queue;
mod table;

pub use cold::{AnswerError, ColdSet, parse_answer};
pub use queue::{Admission, HeldRequest, HoldQueue, Release};
pub use table::{HeldLine, HeldTable, HeldUpdate};

/// Shared-data key of the cold set.
pub const COLD_KEY: &str = "surge.v1.cold";

/// Shared-data key of the held table.
pub const HELD_KEY: &str = "surge.v1.held";

/// The name of VM `vm`'s wake-up queue: another VM enqueues to it so that this one acts now
/// rather than at its next tick (the reporter on a first held request: the activation report;
/// a VM holding requests when the cold set changed: their release).
pub fn wake_queue(vm: u64) -> String {
    format!("surge.v1.wake.{vm}")
}

/// A cold set that no answer has confirmed for this long is dropped: the scaler has been
/// unreachable for that long, and holding every request to those destinations for the hold
/// timeout would turn a scaler outage into an outage of the destinations. Without it, requests
/// go to Envoy as they would without Surge.
pub const COLD_TTL_MS: u64 = 30_000;

/// How long a destination's oldest held request goes on alone when the destination turns warm
/// before the VM releases the rest. Long enough for that request to reach the new pod first
/// (a new upstream connection and a forward, a few ms in a cluster); short beside the pod's
/// own answer, so the others lose little: the new pod is busy with the heads meanwhile.
pub const HEAD_START_MS: u64 = 10;

/// Most requests one VM holds, all destinations together: with `hold.max_requests` (at most
/// [`crate::config::MAX_HOLD_REQUESTS`] per destination) and the cold set's cap it bounds the
/// memory holding takes, whatever the traffic.
pub const MAX_HELD_PER_VM: usize = 4096;

/// Most lines of the held table (VMs times destinations with held requests).
pub const MAX_HELD_LINES: usize = 1024;

/// Destinations and cold sets the hold modules' tests share.
#[cfg(test)]
mod fixtures {
    use surge_wire::Answer;

    use super::ColdSet;

    pub(super) const APP: &str = "outbound|8080||app.default.svc.cluster.local";
    pub(super) const WEB: &str = "outbound|80||web.shop.svc.cluster.local";

    /// The cold set an answer listing `clusters` gives at `now_ms`.
    pub(super) fn cold(now_ms: u64, clusters: &[&str]) -> ColdSet {
        ColdSet::new(
            now_ms,
            Answer {
                cold: clusters.iter().map(|c| c.to_string()).collect(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_shared_prefix() {
        for key in [COLD_KEY, HELD_KEY, &wake_queue(7)] {
            assert!(key.starts_with(crate::lease::KEY_PREFIX));
        }
    }
}

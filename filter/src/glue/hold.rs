//! Holding requests for cold destinations, per VM: the VM's copy of the cold set, its queue of
//! held requests, and their shared-data and host calls (`surge_filter_core::hold` decides).
//!
//! Nothing here runs on the request path while nothing is cold: the request contexts check
//! [`VmHold::idle`] (a field read) and go on.

use surge_filter_core::config::Config;
use surge_filter_core::hold::{
    Admission, COLD_KEY, ColdSet, HELD_KEY, HeldTable, HoldQueue, Release, wake_queue,
};
use surge_filter_core::lease::{LEASE_KEY, Lease};
use surge_wire::{Held, HoldTotals};

use super::host;

/// CAS retries when several VMs write the held table at once.
const WRITE_ATTEMPTS: usize = 4;

/// The body of the filter's `503`s.
const HELD_TOO_LONG: &str = "destination is starting from zero; retry later\n";
const HOLD_FULL: &str = "destination is starting from zero and has too many waiting requests; \
                         retry later\n";

/// The filter's hold counters (process-wide Envoy stats, `surge.held_*`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HoldMetrics {
    held: Option<u32>,
    resumed: Option<u32>,
    timed_out: Option<u32>,
    cancelled: Option<u32>,
    rejected: Option<u32>,
    /// Requests held now across the proxy (set by the reporter).
    pub(crate) held_now: Option<u32>,
    /// Destinations cold now (set by the reporter).
    pub(crate) cold_now: Option<u32>,
    /// Answers that could not be read.
    pub(crate) answers_malformed: Option<u32>,
}

impl HoldMetrics {
    pub(crate) fn define() -> Self {
        let [
            held,
            resumed,
            timed_out,
            cancelled,
            rejected,
            answers_malformed,
        ] = [
            "surge.held_total",
            "surge.held_resumed_total",
            "surge.held_timed_out_total",
            "surge.held_cancelled_total",
            "surge.held_rejected_total",
            "surge.answers_malformed_total",
        ]
        .map(host::counter);
        let [held_now, cold_now] = ["surge.held", "surge.cold_destinations"].map(host::gauge);
        Self {
            held,
            resumed,
            timed_out,
            cancelled,
            rejected,
            held_now,
            cold_now,
            answers_malformed,
        }
    }

    /// The totals a report carries; `None` while nothing was ever held or refused. The outcomes
    /// are read before `held_total`, so none is read ahead of its hold.
    pub(crate) fn totals(&self) -> Option<HoldTotals> {
        let rejected_total = host::read(self.rejected);
        let resumed_total = host::read(self.resumed);
        let timed_out_total = host::read(self.timed_out);
        let cancelled_total = host::read(self.cancelled);
        let held_total = host::read(self.held);
        (held_total > 0 || rejected_total > 0).then_some(HoldTotals {
            held_total,
            resumed_total,
            timed_out_total,
            cancelled_total,
            rejected_total,
        })
    }
}

/// What the request path decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not cold: go on.
    Pass,
    /// Held: pause.
    Held,
    /// Answered `503` (the destination holds the most allowed): pause.
    Refused,
}

/// One VM's holding state.
#[derive(Debug, Default)]
pub(crate) struct VmHold {
    /// Whether this VM's role holds requests at all.
    enabled: bool,
    /// The cold set as this VM last read it (empty when the stored one is stale).
    cold: ColdSet,
    /// The CAS version of the stored cold set this copy was decoded from.
    cold_version: Option<u32>,
    queue: HoldQueue,
    /// Whether the held table may lack this VM's current counts (a write lost every race, or
    /// the queue changed since).
    unpublished: bool,
    /// Whether the held table carries lines of this VM.
    listed: bool,
    /// The plugin's VM configuration id (Istio leaves it empty), which names the wake-up queues.
    vm_config_id: String,
    pub(crate) metrics: HoldMetrics,
}

impl VmHold {
    /// Turns holding on or off for this VM's role, with its counters.
    pub(crate) fn configure(&mut self, enabled: bool, metrics: HoldMetrics, vm_config_id: String) {
        self.enabled = enabled;
        self.metrics = metrics;
        self.vm_config_id = vm_config_id;
    }

    /// True when no request of this VM can be held: the request path's only check.
    pub(crate) fn idle(&self) -> bool {
        self.cold.is_empty()
    }

    /// Whether `cluster` (the raw `xds.cluster_name`) is cold for this VM.
    pub(crate) fn is_cold(&self, cluster: &[u8]) -> bool {
        self.cold.contains(cluster)
    }

    /// Whether request `context_id` is held (its body and trailers must wait too).
    pub(crate) fn holds(&self, context_id: u32) -> bool {
        self.queue.contains(context_id)
    }

    /// Holds the request `context_id` if `cluster` is cold, or refuses it with a `503` if its
    /// destination already holds the most allowed.
    pub(crate) fn admit(
        &mut self,
        vm: u64,
        context_id: u32,
        cluster: &[u8],
        config: &Config,
        now_ms: u64,
    ) -> Decision {
        if !self.cold.contains(cluster) {
            return Decision::Pass;
        }
        // A cold set's names are valid UTF-8 (the answer was), so this copies them as is.
        let cluster = String::from_utf8_lossy(cluster).into_owned();
        let table = HeldTable::decode(&host::shared_get(HELD_KEY).0.unwrap_or_default());
        let others = table.others(vm, &cluster, now_ms);
        match self
            .queue
            .admit(context_id, &cluster, now_ms, others, &config.hold)
        {
            Admission::Held => {
                host::add(self.metrics.held, 1);
                self.unpublished = true;
                self.publish(vm, now_ms);
                if others == 0 && self.queue.held_for(&cluster) == 1 {
                    // The first request held for this destination: the reporter sends the
                    // activation report now, not at its next tick.
                    self.wake_reporter(now_ms);
                }
                Decision::Held
            }
            Admission::Full => {
                host::add(self.metrics.rejected, 1);
                host::send_unavailable(config.hold.retry_after_s, HOLD_FULL);
                Decision::Refused
            }
        }
    }

    /// A request that ended: if it was still held (the client went away, or Envoy reset it),
    /// it leaves the queue and counts as cancelled.
    pub(crate) fn ended(&mut self, vm: u64, context_id: u32, now_ms: u64) {
        if self.queue.remove(context_id) {
            host::add(self.metrics.cancelled, 1);
            self.unpublished = true;
            self.publish(vm, now_ms);
        }
    }

    /// Every tick: reads the cold set (decoding it only when it changed), resumes the held
    /// requests whose destination is warm again and ends those past the timeout, in arrival
    /// order, and refreshes this VM's lines in the held table. `root` is the root context, made
    /// effective again afterwards so that the tick's own calls (a report) stay the root's.
    pub(crate) fn tick(&mut self, vm: u64, root: u32, config: &Config, now_ms: u64) {
        if !self.enabled {
            return;
        }
        let (stored, version) = host::shared_get(COLD_KEY);
        if version != self.cold_version || !self.cold.is_empty() {
            self.cold_version = version;
            self.cold = ColdSet::decode(&stored.unwrap_or_default()).live(now_ms);
        }
        if self.queue.is_empty() && !self.unpublished && !self.listed {
            return;
        }
        let released = self.queue.sweep(now_ms, &self.cold, config.hold.timeout_ms);
        self.release(root, &released, config);
        // A VM that holds anything rewrites its lines every tick: the time it writes says it is
        // alive, so its requests keep counting.
        self.unpublished = true;
        self.publish(vm, now_ms);
    }

    /// When this VM next releases held requests of a destination that turned warm (the end of
    /// a head start), if it has any waiting.
    pub(crate) fn next_release_ms(&self) -> Option<u64> {
        self.queue.next_release_ms()
    }

    /// The plugin shuts down: every held request is answered now (warm: resumed; cold: `503`),
    /// rather than left to Envoy.
    pub(crate) fn shut_down(&mut self, vm: u64, root: u32, config: &Config, now_ms: u64) {
        let released = self.queue.drain(&self.cold);
        self.release(root, &released, config);
        self.unpublished = true;
        self.publish(vm, now_ms);
    }

    fn release(&mut self, root: u32, released: &[(u32, Release)], config: &Config) {
        if released.is_empty() {
            return;
        }
        for &(context_id, release) in released {
            let answered = host::set_effective_context(context_id)
                && match release {
                    Release::Resume => host::resume_request(),
                    Release::TimedOut => {
                        host::send_unavailable(config.hold.retry_after_s, HELD_TOO_LONG)
                    }
                };
            let metric = match (answered, release) {
                (true, Release::Resume) => self.metrics.resumed,
                (true, Release::TimedOut) => self.metrics.timed_out,
                // Gone before the filter could answer it.
                (false, _) => self.metrics.cancelled,
            };
            host::add(metric, 1);
        }
        host::set_effective_context(root);
    }

    /// Writes this VM's held counts into the held table (CAS, a few attempts; else again at the
    /// next tick), counting the requests of gone VMs it drops as cancelled.
    fn publish(&mut self, vm: u64, now_ms: u64) {
        if !self.unpublished {
            return;
        }
        let counts = self.queue.counts();
        for _ in 0..WRITE_ATTEMPTS {
            let (stored, cas) = host::shared_get(HELD_KEY);
            let update = HeldTable::decode(&stored.unwrap_or_default()).update(vm, now_ms, &counts);
            if host::shared_set(HELD_KEY, &update.table.encode(), cas) {
                host::add(
                    self.metrics.cancelled,
                    i64::try_from(update.cut).unwrap_or(i64::MAX),
                );
                self.unpublished = false;
                self.listed = !counts.is_empty();
                return;
            }
        }
    }

    /// Wakes the VM holding the reporter lease.
    fn wake_reporter(&self, now_ms: u64) {
        let lease = host::shared_get(LEASE_KEY).0;
        if let Some(lease) = lease.as_deref().and_then(Lease::decode)
            && lease.expires_ms > now_ms
        {
            host::wake(&self.vm_config_id, &wake_queue(lease.holder));
        }
    }

    /// Wakes every other VM that holds requests (the cold set changed: they release what they
    /// can now, not at their next tick).
    pub(crate) fn wake_holders(&self, me: u64) {
        let table = HeldTable::decode(&host::shared_get(HELD_KEY).0.unwrap_or_default());
        let mut woken: Vec<u64> = Vec::new();
        for line in table.lines() {
            if line.vm != me && !woken.contains(&line.vm) {
                woken.push(line.vm);
                host::wake(&self.vm_config_id, &wake_queue(line.vm));
            }
        }
    }

    /// The reporter's view: what the live VMs hold per destination, and whether anything is
    /// held. Drops the lines of gone VMs (counting their requests as cancelled).
    pub(crate) fn held_now(&self, now_ms: u64) -> Vec<Held> {
        let (stored, cas) = host::shared_get(HELD_KEY);
        let Some(stored) = stored.filter(|s| !s.is_empty()) else {
            return Vec::new();
        };
        let table = HeldTable::decode(&stored);
        if let Some(update) = table.prune(now_ms)
            && host::shared_set(HELD_KEY, &update.table.encode(), cas)
        {
            host::add(
                self.metrics.cancelled,
                i64::try_from(update.cut).unwrap_or(i64::MAX),
            );
        }
        table.totals(now_ms, surge_wire::Limits::default().max_held)
    }
}

/// Stores the cold set an answer gave, when it changes what the VMs do; the reporter's VM then
/// takes it up at its next tick like every other VM.
pub(crate) fn store_cold(set: &ColdSet) -> bool {
    let (stored, cas) = host::shared_get(COLD_KEY);
    let stored = ColdSet::decode(&stored.unwrap_or_default());
    set.worth_storing(&stored) && host::shared_set(COLD_KEY, &set.encode(), cas)
}

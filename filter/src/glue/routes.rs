//! Per-VM cache of route keys and their host metrics, backed by the process-wide route table in
//! shared data; and this VM's in-flight counts, published in shared data (`inflight`).

use surge_filter_core::config::Config;
use surge_filter_core::inflight::{self, Entry, Registry, Tally, VMS_KEY};
use surge_filter_core::lease::ROUTES_KEY;
use surge_filter_core::report::{Counters, Reading};
use surge_filter_core::route::{Registration, RouteKey, RouteTable, Slot};
use surge_filter_core::surge::Arrivals;
use surge_filter_core::tally::Delta;

use super::host;

/// The host metrics of one route key (ids are per VM; the stats are process-wide).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteMetrics {
    requests: Option<u32>,
    errors: Option<u32>,
    duration_us: Option<u32>,
}

impl RouteMetrics {
    fn define(slot: Slot) -> Self {
        let base = match slot {
            Slot::Index(i) => format!("surge.route.{i}"),
            Slot::Other => "surge.route.other".to_string(),
        };
        Self {
            requests: host::counter(&format!("{base}.requests_total")),
            errors: host::counter(&format!("{base}.errors_total")),
            duration_us: host::counter(&format!("{base}.duration_us_total")),
        }
    }

    /// Adds a VM's tallied counts. Requests before errors: the reporter reads errors first, so
    /// it never sees more errors than requests.
    fn apply(&self, delta: Delta) {
        host::add(
            self.requests,
            i64::try_from(delta.requests).unwrap_or(i64::MAX),
        );
        host::add(self.errors, i64::try_from(delta.errors).unwrap_or(i64::MAX));
        host::add(
            self.duration_us,
            i64::try_from(delta.duration_us).unwrap_or(i64::MAX),
        );
    }

    /// The process-wide counters, with `inflight` as the live VMs publish it.
    pub(crate) fn read(&self, inflight: u64) -> Counters {
        let errors = host::read(self.errors);
        let duration_us = host::read(self.duration_us);
        let requests = host::read(self.requests);
        Counters {
            requests,
            errors,
            duration_us,
            inflight,
        }
    }
}

/// Route keys this VM has seen, with their slots and metrics.
///
/// Plain vectors rather than hash maps: a proxy sees a handful of route keys, a linear scan of
/// a few short strings is as fast as hashing them, and hashbrown would add ~10 KB to the module.
#[derive(Debug, Default)]
pub(crate) struct RouteCache {
    /// Keyed by the raw property bytes, so a known key costs no sanitising on the request path.
    slots: Vec<(Vec<u8>, Vec<u8>, Slot)>,
    metrics: Vec<Option<RouteMetrics>>,
    other: Option<RouteMetrics>,
    /// Unflushed counts, by slot index; `other_pending` for the overflow key.
    pending: Vec<Delta>,
    other_pending: Delta,
    table: RouteTable,
    overflow_logged: bool,
    /// Requests in flight on this VM, as flushed.
    inflight: Tally,
    /// Whether `inflight` changed since it was last published.
    inflight_changed: bool,
    /// Whether this VM is listed in the registry of VMs that publish in-flight counts.
    registered: bool,
}

/// CAS retries when several VMs register keys at once.
const REGISTER_ATTEMPTS: usize = 4;

impl RouteCache {
    /// The slot a request is counted under, from the raw route name (already the virtual
    /// host when that is the fallback) and cluster, registering the key process-wide on first
    /// sight.
    pub(crate) fn slot_for(&mut self, route: &[u8], cluster: &[u8], config: &Config) -> Slot {
        let known = self
            .slots
            .iter()
            .find(|(r, c, _)| r == route && c == cluster)
            .map(|(_, _, s)| *s);
        match known {
            Some(slot) => slot,
            None => {
                let key =
                    RouteKey::from_properties(Some(route), None, Some(cluster), &config.route_key);
                let slot = self.register(&key, config.max_routes);
                if slot == Slot::Other && !key.is_other() && !self.overflow_logged {
                    self.overflow_logged = true;
                    host::log(
                        proxy_wasm::types::LogLevel::Warn,
                        &format!(
                            "more than max_routes ({}) route keys; further keys are \
                             counted under \"other\" (first: route \"{}\" cluster \"{}\")",
                            config.max_routes, key.route, key.cluster
                        ),
                    );
                }
                // Overflowing keys are cached too (so a hot one does not hit shared data on
                // every request), up to a bound that keeps the cache from growing with traffic.
                if self.slots.len() < config.max_routes.saturating_mul(4) {
                    self.slots.push((route.to_vec(), cluster.to_vec(), slot));
                }
                slot
            }
        }
    }

    /// The unflushed counts of `slot`.
    pub(crate) fn pending(&mut self, slot: Slot) -> &mut Delta {
        match slot {
            Slot::Other => &mut self.other_pending,
            Slot::Index(i) => {
                if self.pending.len() <= i {
                    self.pending.resize(i + 1, Delta::default());
                }
                match self.pending.get_mut(i) {
                    Some(delta) => delta,
                    // Unreachable after the resize; count under `other` rather than panic.
                    None => &mut self.other_pending,
                }
            }
        }
    }

    /// Adds every unflushed count to the process-wide metrics and to this VM's in-flight
    /// counts; returns whether those changed (and should be published).
    pub(crate) fn flush(&mut self) -> bool {
        for i in 0..self.pending.len() {
            let delta = self.pending.get_mut(i).and_then(Delta::take);
            if let Some(delta) = delta {
                self.apply(Slot::Index(i), delta);
            }
        }
        if let Some(delta) = self.other_pending.take() {
            self.apply(Slot::Other, delta);
        }
        self.inflight_changed
    }

    fn apply(&mut self, slot: Slot, delta: Delta) {
        if delta.inflight != 0 {
            let index = match slot {
                Slot::Index(i) => Some(i),
                Slot::Other => None,
            };
            self.inflight.add(index, delta.inflight);
            self.inflight_changed = true;
        }
        self.metrics_of(slot).apply(delta);
    }

    /// Publishes this VM's in-flight counts under its own key (and lists it in the registry
    /// the first time, after the entry exists, so a listed VM always has one).
    pub(crate) fn publish(&mut self, vm: u64, now_ms: u64) {
        let entry = self.inflight.entry(now_ms);
        if !host::shared_set(&inflight::vm_key(vm), &entry.encode(), None) {
            return;
        }
        self.inflight_changed = false;
        if !self.registered {
            for _ in 0..REGISTER_ATTEMPTS {
                let (stored, cas) = host::shared_get(VMS_KEY);
                let registry = Registry::decode(&stored.unwrap_or_default());
                match registry.with(vm) {
                    None => {
                        // Listed already, or the registry is full: nothing more to do (a full
                        // registry leaves this VM's requests out of the in-flight counts,
                        // never out of the totals).
                        self.registered = true;
                        break;
                    }
                    Some(updated) => {
                        if host::shared_set(VMS_KEY, &updated.encode(), cas) {
                            self.registered = true;
                            break;
                        }
                    }
                }
            }
        }
    }

    /// The reporter's census of the VMs: the in-flight counts of the live ones, summed per slot.
    /// The requests that VMs found gone still held were cut without `on_log`: they are counted
    /// once, as completed errors (a CAS on the gone VM's entry makes sure of "once"), and the
    /// VMs leave the registry.
    pub(crate) fn census(&mut self, now_ms: u64) -> Arrivals {
        let (stored, cas) = host::shared_get(VMS_KEY);
        let registry = Registry::decode(&stored.unwrap_or_default());
        let entries: Vec<(u64, Option<Entry>)> = registry
            .vms()
            .iter()
            .map(|&vm| {
                let value = host::shared_get(&inflight::vm_key(vm)).0;
                (vm, value.as_deref().and_then(Entry::decode))
            })
            .collect();
        let census = inflight::census(now_ms, &entries);
        if census.gone.is_empty() {
            return census.inflight;
        }
        let mut settled = Vec::new();
        for (vm, entry) in &census.gone {
            let key = inflight::vm_key(*vm);
            if let Some(entry) = entry {
                let (value, entry_cas) = host::shared_get(&key);
                if value.as_deref().and_then(Entry::decode).as_ref() != Some(entry)
                    || !host::shared_set(&key, b"", entry_cas)
                {
                    // Changed since it was read (settled by another VM, or not gone after all).
                    continue;
                }
                self.count_cut(&entry.inflight);
            }
            settled.push(*vm);
        }
        if !settled.is_empty() {
            host::shared_set(VMS_KEY, &registry.without(&settled).encode(), cas);
        }
        census.inflight
    }

    /// Counts requests cut without `on_log` as completed with an error (no response code).
    fn count_cut(&mut self, cut: &Arrivals) {
        let slots = cut
            .indexed
            .iter()
            .enumerate()
            .map(|(i, &n)| (Slot::Index(i), n))
            .chain(std::iter::once((Slot::Other, cut.other)));
        for (slot, n) in slots.filter(|&(_, n)| n > 0) {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            let metrics = self.metrics_of(slot);
            host::add(metrics.requests, n);
            host::add(metrics.errors, n);
        }
    }

    fn metrics_of(&mut self, slot: Slot) -> RouteMetrics {
        let entry = match slot {
            Slot::Other => &mut self.other,
            Slot::Index(i) => {
                if self.metrics.len() <= i {
                    self.metrics.resize(i + 1, None);
                }
                match self.metrics.get_mut(i) {
                    Some(entry) => entry,
                    // Unreachable after the resize; define without caching rather than panic.
                    None => return RouteMetrics::define(slot),
                }
            }
        };
        *entry.get_or_insert_with(|| RouteMetrics::define(slot))
    }

    fn register(&mut self, key: &RouteKey, cap: usize) -> Slot {
        for _ in 0..REGISTER_ATTEMPTS {
            let (stored, cas) = host::shared_get(ROUTES_KEY);
            self.table = RouteTable::decode(&stored.unwrap_or_default());
            match self.table.register(key, cap) {
                Registration::Existing(slot) => return slot,
                Registration::Appended { slot, encoded } => {
                    if host::shared_set(ROUTES_KEY, &encoded, cas) {
                        return slot;
                    }
                }
            }
        }
        // Lost every race: count this request under `other` rather than block or drop it.
        Slot::Other
    }

    /// Defines the metrics of every key in the shared table, and `other`, so they live as long
    /// as this VM.
    pub(crate) fn define_known(&mut self) {
        let _ = self.read_all(&Arrivals::default());
    }

    /// Every known key (from the shared table) with its process-wide counters, plus `other`;
    /// `inflight` per slot from the census.
    pub(crate) fn read_all(&mut self, inflight: &Arrivals) -> Vec<Reading> {
        let (stored, _) = host::shared_get(ROUTES_KEY);
        self.table = RouteTable::decode(&stored.unwrap_or_default());
        let keys: Vec<RouteKey> = self.table.keys().to_vec();
        let mut out = Vec::with_capacity(keys.len() + 1);
        for (i, key) in keys.into_iter().enumerate() {
            let slot = Slot::Index(i);
            out.push(Reading {
                slot,
                route: key.route,
                cluster: key.cluster,
                counters: self
                    .metrics_of(slot)
                    .read(inflight.indexed.get(i).copied().unwrap_or(0)),
            });
        }
        let other = RouteKey::other();
        out.push(Reading {
            slot: Slot::Other,
            route: other.route,
            cluster: other.cluster,
            counters: self.metrics_of(Slot::Other).read(inflight.other),
        });
        out
    }
}

//! Per-VM cache of route keys and their host metrics, backed by the process-wide route table in
//! shared data.

use surge_filter_core::config::Config;
use surge_filter_core::lease::ROUTES_KEY;
use surge_filter_core::report::{Counters, Reading, gauge_value};
use surge_filter_core::route::{Registration, RouteKey, RouteTable, Slot};
use surge_filter_core::tally::Delta;

use super::host;

/// The host metrics of one route key (ids are per VM; the stats are process-wide).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteMetrics {
    requests: Option<u32>,
    errors: Option<u32>,
    duration_us: Option<u32>,
    inflight: Option<u32>,
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
            inflight: host::gauge(&format!("{base}.inflight")),
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
        host::add(self.inflight, delta.inflight);
    }

    /// The process-wide counters.
    pub(crate) fn read(&self) -> Counters {
        let errors = host::read(self.errors);
        let duration_us = host::read(self.duration_us);
        let inflight = gauge_value(host::read(self.inflight));
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

    /// Adds every unflushed count to the process-wide metrics.
    pub(crate) fn flush(&mut self) {
        for i in 0..self.pending.len() {
            let delta = self.pending.get_mut(i).and_then(Delta::take);
            if let Some(delta) = delta {
                self.metrics_of(Slot::Index(i)).apply(delta);
            }
        }
        if let Some(delta) = self.other_pending.take() {
            self.metrics_of(Slot::Other).apply(delta);
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
        let _ = self.read_all();
    }

    /// Every known key (from the shared table) with its process-wide counters, plus `other`.
    pub(crate) fn read_all(&mut self) -> Vec<Reading> {
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
                counters: self.metrics_of(slot).read(),
            });
        }
        let other = RouteKey::other();
        out.push(Reading {
            slot: Slot::Other,
            route: other.route,
            cluster: other.cluster,
            counters: self.metrics_of(Slot::Other).read(),
        });
        out
    }
}

//! The scale-to-zero side of the hub: per target, its destination and what is known of its
//! replicas and ready endpoints (which make the cold list every answer carries), the requests
//! proxies hold for it (the held demand), and what proxies report of their holds
//! (`hold_totals`, for the metrics).
//!
//! ```text
//!  report held[]: outbound|port|subset|host or inbound-vip|port|http|host
//!                 --by host--> target: instance -> latest count
//!                 (each report's held replaces the instance's previous one; none: cleared)
//!  controller:    replicas (scale), ready endpoints (EndpointSlices), ports (spec or Service)
//!                 --> temperature per target --> cold list: sorted, at most MAX_COLD entries
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use surge_wire::{Held, HoldTotals, ServiceCluster};

use super::TargetKey;
use crate::crd::ScaleToZero;
use crate::decision::Millis;
use crate::zero::{self, Temperature};

/// Most entries in an answer's `cold` (`surge_wire::Limits::max_cold`: the filter refuses a
/// longer list as a whole).
pub const MAX_COLD: usize = 256;

/// Where a scale-to-zero target's callers send its requests: the Service's host, and the port
/// they use (any port of the Service when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `<service>.<namespace>.svc.cluster.local`.
    pub host: String,
    /// The Service port; every port of the Service when `None`.
    pub port: Option<u16>,
}

impl Destination {
    /// The destination `scale_to_zero` names for a SurgeScaler in `namespace`.
    pub fn from_spec(namespace: &str, scale_to_zero: &ScaleToZero) -> Self {
        Self {
            host: format!("{}.{namespace}.svc.cluster.local", scale_to_zero.service),
            port: scale_to_zero.port,
        }
    }

    /// The Envoy cluster a caller's proxy routes port `port` of it to (no subset: such an
    /// entry of the cold list also covers the port's subsets).
    pub fn cluster(&self, port: u16) -> String {
        format!("outbound|{port}||{}", self.host)
    }

    fn covers(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }
}

/// What the controller reads of a scale-to-zero target before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroView {
    /// Requests held for it now, summed over the instances' latest counts.
    pub held: u64,
    /// Instances holding them.
    pub holders: usize,
    /// Since when every report of its sources has said zero, and nothing has been held
    /// (`None`: some report, or some proxy's hold, says otherwise).
    pub quiet_since: Option<Millis>,
    /// Whether the proxies are told it is cold.
    pub temperature: Temperature,
    /// Its ready endpoints as the proxies likely see them (`None`: not listed yet).
    pub ready_endpoints: Option<usize>,
    /// Whether its destination can be named (the port is known): without that it cannot be
    /// listed cold, so it must not go to zero.
    pub named: bool,
}

#[derive(Debug, Clone, Copy)]
struct HeldBy {
    requests: u64,
    seen: Millis,
}

#[derive(Debug)]
struct ZeroEntry {
    destination: Destination,
    /// Ports its clusters are named with: the spec's, or the Service's once read.
    ports: Vec<u16>,
    replicas: Option<i32>,
    ready_endpoints: Option<usize>,
    /// A ready endpoint appeared while `replicas` still read 0 (after the endpoints had gone to
    /// zero): the target was scaled up since that read (see [`zero::temperature_seen`]).
    ready_since_zero: bool,
    /// Latest held count per proxy instance.
    held: HashMap<Arc<str>, HeldBy>,
    /// When a report last held requests for it.
    last_held_at: Option<Millis>,
    /// A hold not confirmed by a report for this long is dropped (the proxy went away).
    hold_ttl_ms: Millis,
}

impl ZeroEntry {
    fn temperature(&self) -> Temperature {
        zero::temperature_seen(self.replicas, self.ready_endpoints, self.ready_since_zero)
    }
}

/// Every scale-to-zero target, the holds proxies report, and the cold list.
#[derive(Debug, Default)]
pub(super) struct ZeroTable {
    targets: HashMap<TargetKey, ZeroEntry>,
    /// Host -> scale-to-zero targets behind it.
    by_host: HashMap<String, Vec<TargetKey>>,
    /// Instance -> the targets it holds requests for (so that its next report clears them),
    /// and when it last reported.
    holders: HashMap<Arc<str>, (Vec<TargetKey>, Millis)>,
    /// Instance -> its last `hold_totals`, and when it sent them.
    totals: HashMap<Arc<str>, (HoldTotals, Millis)>,
    /// The answer's `cold`, rebuilt when a target's temperature or names change.
    cold: Arc<[String]>,
    cold_targets: usize,
}

impl ZeroTable {
    /// Registers, updates (`Some`) or forgets (`None`) a target's scale to zero.
    pub(super) fn set(&mut self, key: &TargetKey, destination: Option<(Destination, Millis)>) {
        match destination {
            Some((destination, hold_ttl_ms)) => {
                if let Some(entry) = self.targets.get_mut(key) {
                    entry.hold_ttl_ms = hold_ttl_ms;
                    if entry.destination == destination {
                        return;
                    }
                }
                self.unindex(key);
                self.by_host
                    .entry(destination.host.clone())
                    .or_default()
                    .push(key.clone());
                let previous = self.targets.remove(key);
                let ports = destination.port.into_iter().collect();
                self.targets.insert(
                    key.clone(),
                    ZeroEntry {
                        destination,
                        ports,
                        replicas: previous.as_ref().and_then(|p| p.replicas),
                        ready_endpoints: None,
                        ready_since_zero: false,
                        held: HashMap::new(),
                        last_held_at: None,
                        hold_ttl_ms,
                    },
                );
            }
            None => {
                self.unindex(key);
                self.targets.remove(key);
            }
        }
        self.rebuild();
    }

    fn unindex(&mut self, key: &TargetKey) {
        let Some(entry) = self.targets.get(key) else {
            return;
        };
        if let Some(keys) = self.by_host.get_mut(&entry.destination.host) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_host.remove(&entry.destination.host);
            }
        }
    }

    /// The ports of the Service, for a destination without a port of its own.
    pub(super) fn set_ports(&mut self, key: &TargetKey, mut ports: Vec<u16>) {
        let Some(entry) = self.targets.get_mut(key) else {
            return;
        };
        if entry.destination.port.is_some() {
            return;
        }
        ports.sort_unstable();
        ports.dedup();
        if entry.ports != ports {
            entry.ports = ports;
            self.rebuild();
        }
    }

    /// The target's `spec.replicas` as last read or written (`None`: unknown).
    pub(super) fn set_replicas(&mut self, key: &TargetKey, replicas: Option<i32>) {
        if let Some(entry) = self.targets.get_mut(key)
            && entry.replicas != replicas
        {
            entry.replicas = replicas;
            // A fresh value of the scale: nothing to infer from the endpoints any more.
            entry.ready_since_zero = false;
            self.rebuild();
        }
    }

    /// The target's ready endpoints as the proxies likely see them (`None`: unknown).
    pub(super) fn set_ready_endpoints(&mut self, key: &TargetKey, ready: Option<usize>) {
        if let Some(entry) = self.targets.get_mut(key)
            && entry.ready_endpoints != ready
        {
            // Only a rise from a known zero with the scale read at zero: a first listing
            // (from unknown) may still show the endpoints of pods being scaled away.
            let rose_from_zero = entry.ready_endpoints == Some(0) && ready.is_some_and(|r| r > 0);
            entry.ready_since_zero = match ready {
                Some(0) | None => false,
                Some(_) => entry.ready_since_zero || (rose_from_zero && entry.replicas == Some(0)),
            };
            entry.ready_endpoints = ready;
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        let mut clusters = BTreeSet::new();
        let mut cold_targets = 0;
        for entry in self.targets.values() {
            if entry.temperature().listed() {
                cold_targets += 1;
                for &port in &entry.ports {
                    clusters.insert(entry.destination.cluster(port));
                }
            }
        }
        if clusters.len() > MAX_COLD {
            tracing::warn!(
                destinations = clusters.len(),
                limit = MAX_COLD,
                "more cold destinations than an answer may list; the rest are not held"
            );
        }
        self.cold = clusters.into_iter().take(MAX_COLD).collect();
        self.cold_targets = cold_targets;
    }

    /// The answer's `cold`.
    pub(super) fn cold(&self) -> Arc<[String]> {
        Arc::clone(&self.cold)
    }

    /// Targets listed cold.
    pub(super) fn cold_targets(&self) -> usize {
        self.cold_targets
    }

    /// Records what instance `instance` holds now, from an accepted report at `now`: its latest
    /// count per target replaces the one before (a report without a destination clears it). At
    /// most `max_per_target` instances are tracked per target. Returns the targets it holds
    /// requests for.
    pub(super) fn apply_held(
        &mut self,
        instance: &Arc<str>,
        held: &[Held],
        now: Millis,
        max_per_target: usize,
    ) -> Vec<TargetKey> {
        if held.is_empty() && !self.holders.contains_key(instance) {
            return Vec::new();
        }
        let mut holding: Vec<(TargetKey, u64)> = Vec::new();
        for h in held {
            // A gateway's or client sidecar's `outbound|...`, or a waypoint's `inbound-vip|...`.
            let Some(ServiceCluster { port, host, .. }) = ServiceCluster::parse(&h.cluster) else {
                continue;
            };
            for key in self.by_host.get(host).into_iter().flatten() {
                let covered = self
                    .targets
                    .get(key)
                    .is_some_and(|e| e.destination.covers(port));
                if !covered {
                    continue;
                }
                match holding.iter_mut().find(|(k, _)| k == key) {
                    Some((_, requests)) => *requests = requests.saturating_add(h.requests),
                    None => holding.push((key.clone(), h.requests)),
                }
            }
        }
        if let Some((before, _)) = self.holders.remove(instance) {
            for key in before {
                if !holding.iter().any(|(k, _)| *k == key)
                    && let Some(entry) = self.targets.get_mut(&key)
                {
                    entry.held.remove(instance);
                }
            }
        }
        let mut keys = Vec::with_capacity(holding.len());
        for (key, requests) in holding {
            let Some(entry) = self.targets.get_mut(&key) else {
                continue;
            };
            if entry.held.len() >= max_per_target && !entry.held.contains_key(instance) {
                continue;
            }
            entry.held.insert(
                Arc::clone(instance),
                HeldBy {
                    requests,
                    seen: now,
                },
            );
            entry.last_held_at = Some(now);
            keys.push(key);
        }
        if !keys.is_empty() {
            self.holders
                .insert(Arc::clone(instance), (keys.clone(), now));
        }
        keys
    }

    /// Records instance `instance`'s cumulative `hold_totals`; returns what was added since its
    /// previous ones (nothing for the first, or after a counter went down: a restart).
    pub(super) fn apply_totals(
        &mut self,
        instance: &Arc<str>,
        totals: Option<&HoldTotals>,
        now: Millis,
    ) -> Option<HoldTotals> {
        let totals = *totals?;
        let previous = self.totals.insert(Arc::clone(instance), (totals, now));
        let (before, _) = previous?;
        let fields = |t: &HoldTotals| {
            [
                t.held_total,
                t.resumed_total,
                t.timed_out_total,
                t.cancelled_total,
                t.rejected_total,
            ]
        };
        let (now_values, before_values) = (fields(&totals), fields(&before));
        if now_values.iter().zip(&before_values).any(|(n, b)| n < b) {
            return None;
        }
        Some(HoldTotals {
            held_total: totals.held_total - before.held_total,
            resumed_total: totals.resumed_total - before.resumed_total,
            timed_out_total: totals.timed_out_total - before.timed_out_total,
            cancelled_total: totals.cancelled_total - before.cancelled_total,
            rejected_total: totals.rejected_total - before.rejected_total,
        })
    }

    /// The target's view at `now` (holds not confirmed within their TTL dropped first);
    /// `quiet_since` is its sources' (from the window) and is combined with the holds here.
    pub(super) fn view(
        &mut self,
        key: &TargetKey,
        quiet_since: Option<Millis>,
        now: Millis,
    ) -> Option<ZeroView> {
        let entry = self.targets.get_mut(key)?;
        let ttl = entry.hold_ttl_ms;
        entry.held.retain(|_, h| now.saturating_sub(h.seen) <= ttl);
        let held = entry
            .held
            .values()
            .fold(0u64, |sum, h| sum.saturating_add(h.requests));
        // A hold is activity: the idle clock counts from after the last one.
        let quiet_since = match (quiet_since, entry.last_held_at) {
            _ if held > 0 => None,
            (Some(quiet), Some(held_at)) => Some(quiet.max(held_at.saturating_add(1))),
            (quiet, _) => quiet,
        };
        Some(ZeroView {
            held,
            holders: entry.held.len(),
            quiet_since,
            temperature: entry.temperature(),
            ready_endpoints: entry.ready_endpoints,
            named: !entry.ports.is_empty(),
        })
    }

    /// Forgets instances that have not reported for `ttl_ms`.
    pub(super) fn expire(&mut self, now: Millis, ttl_ms: Millis) {
        self.holders
            .retain(|_, (_, seen)| now.saturating_sub(*seen) <= ttl_ms);
        self.totals
            .retain(|_, (_, seen)| now.saturating_sub(*seen) <= ttl_ms);
    }
}

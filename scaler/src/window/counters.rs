//! Cumulative counters to deltas, per (instance, route), and the per-source limits that bound
//! what one proxy instance (or one namespace of them) may cost the scaler.
//!
//! ```text
//!  report (instance, seq, routes[]) --> seq <= last? duplicate. first? baseline.
//!                                       over its report rate? throttled. counter went down? reset:
//!                                       a new baseline, no traffic. else per-route deltas
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use surge_wire::Report;

use crate::decision::Millis;

/// Per-source limits: what one proxy (instance) may cost the scaler, and how many the scaler
/// tracks. A flooding or misbehaving sender is refused beyond them instead of growing memory or
/// waking decisions faster than real traffic could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Least mean time between accepted reports of one instance, in milliseconds (the rate of
    /// a GCRA token bucket). The filter sends one report per `report_interval_ms` (default
    /// 1000, at least 50) plus early surge reports at least `surge.min_gap_ms` (100) apart,
    /// each but the first of a surge only after a further 1.25x rise.
    pub min_report_interval_ms: Millis,
    /// Reports of one instance accepted back to back before the interval applies (at least 1).
    pub report_burst: u32,
    /// Instances tracked in all (each holds its last counters until it expires).
    pub max_instances: usize,
    /// Instances tracked per proxy namespace, so that a sender rotating instance ids fills its
    /// own namespace's share, not the whole table.
    pub max_instances_per_namespace: usize,
    /// (instance, route) pairs tracked in all: with `max_instances`, the memory bound.
    pub max_instance_routes: usize,
    /// Sources one target tracks.
    pub max_sources_per_target: usize,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self {
            min_report_interval_ms: 50,
            report_burst: 5,
            max_instances: 50_000,
            max_instances_per_namespace: 20_000,
            max_instance_routes: 500_000,
            max_sources_per_target: 10_000,
        }
    }
}

/// A tracking limit a report would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// [`SourceLimits::max_instances`].
    Instances(usize),
    /// [`SourceLimits::max_instance_routes`].
    InstanceRoutes(usize),
    /// [`SourceLimits::max_instances_per_namespace`].
    NamespaceInstances(usize),
}

/// What one report changed, per route, for one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// `seq` not above the last seen for this instance: nothing changed.
    Duplicate,
    /// The instance reports faster than [`SourceLimits`] allow: nothing changed. Counters are
    /// cumulative, so the instance's next accepted report carries this one's traffic.
    Throttled {
        /// When a report would be accepted again, in milliseconds from now.
        retry_after_ms: Millis,
    },
    /// Tracking this report would exceed a limit: nothing changed.
    OverCapacity(Capacity),
    /// The instance id is tracked for another namespace: nothing changed. Instance ids are
    /// random (the filter's 64 bits), so this is a collision or a forgery; refusing it keeps a
    /// sender from taking over another namespace's counters (e.g. with a huge `seq` that would
    /// turn the real proxy's reports into duplicates).
    ForeignInstance,
    /// First report of this instance (or a counter reset): a new baseline, no traffic counted.
    Baseline,
    /// Traffic since the previous report of this instance.
    Deltas {
        /// Time the deltas cover, in milliseconds (the proxy's own clock when sane).
        interval_ms: Millis,
        /// One entry per route of the report, in the report's order.
        routes: Vec<RouteDelta>,
    },
}

/// Traffic of one route between two reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteDelta {
    /// Completed requests.
    pub requests: u64,
    /// Sum of the completed requests' durations, in microseconds.
    pub busy_us: u64,
}

/// Last cumulative counters of one (route, cluster) of one instance. Kept in a `Vec` in the
/// report's order: proxies send their routes in a stable order, so the lookup is positional
/// almost always, with no hashing and no allocation.
#[derive(Debug)]
pub(super) struct RouteLast {
    route: Box<str>,
    cluster: Box<str>,
    requests: u64,
    busy_us: u64,
}

#[derive(Debug)]
struct InstanceState {
    /// Theoretical arrival time of the next report (GCRA): reports earlier than
    /// `tat - (burst - 1) * interval` are throttled.
    tat: Millis,
    /// Namespace of the proxy that owns the instance id (the authenticated part of a report).
    namespace: Box<str>,
    last_seq: u64,
    last_seen: Millis,
    last_time_ms: u64,
    routes: Vec<RouteLast>,
}

fn routes_of(report: &Report) -> Vec<RouteLast> {
    report
        .routes
        .iter()
        .map(|r| RouteLast {
            route: r.route.as_str().into(),
            cluster: r.cluster.as_str().into(),
            requests: r.requests_total,
            busy_us: r.duration_us_total,
        })
        .collect()
}

/// Last counters per (instance, route): turns cumulative reports into deltas.
#[derive(Debug, Default)]
pub struct Counters {
    instances: HashMap<Arc<str>, InstanceState>,
    limits: SourceLimits,
    /// Sum of the instances' tracked routes.
    instance_routes: usize,
    /// Instances tracked per proxy namespace.
    per_namespace: HashMap<Box<str>, usize>,
}

impl Counters {
    /// Counters enforcing `limits`.
    pub fn with_limits(limits: SourceLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The limits enforced.
    pub fn limits(&self) -> SourceLimits {
        self.limits
    }

    /// Applies a validated report received at `now`; returns the instance key (shared, so
    /// targets can name their sources without copying the string) and what changed.
    pub fn apply(&mut self, report: &Report, now: Millis) -> (Arc<str>, Applied) {
        self.apply_as(report, now, true)
    }

    /// [`Counters::apply`], with the instance's report rate checked (`rated`) or not: a report
    /// another replica mirrored was rated where it arrived, and the same instance's reports
    /// reach this replica both directly and mirrored, faster than either path alone.
    pub fn apply_as(&mut self, report: &Report, now: Millis, rated: bool) -> (Arc<str>, Applied) {
        let key = match self.instances.get_key_value(report.instance.as_str()) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(report.instance.as_str()),
        };
        let interval = self.limits.min_report_interval_ms;
        let state = match self.instances.get_mut(&key) {
            Some(state) => state,
            None => {
                if self.instances.len() >= self.limits.max_instances {
                    let limit = self.limits.max_instances;
                    return (key, Applied::OverCapacity(Capacity::Instances(limit)));
                }
                let limit = self.limits.max_instance_routes;
                if self.instance_routes.saturating_add(report.routes.len()) > limit {
                    return (key, Applied::OverCapacity(Capacity::InstanceRoutes(limit)));
                }
                let namespace = report.proxy.namespace.as_str();
                let in_namespace = self.per_namespace.get(namespace).copied().unwrap_or(0);
                let limit = self.limits.max_instances_per_namespace;
                if in_namespace >= limit {
                    return (
                        key,
                        Applied::OverCapacity(Capacity::NamespaceInstances(limit)),
                    );
                }
                *self.per_namespace.entry(namespace.into()).or_default() += 1;
                let routes = routes_of(report);
                self.instance_routes += routes.len();
                self.instances.insert(
                    Arc::clone(&key),
                    InstanceState {
                        tat: now.saturating_add(interval),
                        namespace: report.proxy.namespace.as_str().into(),
                        last_seq: report.seq,
                        last_seen: now,
                        last_time_ms: report.time_ms,
                        routes,
                    },
                );
                return (key, Applied::Baseline);
            }
        };
        if *state.namespace != *report.proxy.namespace {
            return (key, Applied::ForeignInstance);
        }
        if report.seq <= state.last_seq {
            return (key, Applied::Duplicate);
        }
        // GCRA: one report per `interval` on average, `burst` back to back.
        let tat = state.tat.max(now);
        let tolerance = interval.saturating_mul(Millis::from(self.limits.report_burst.max(1) - 1));
        if rated && tat.saturating_sub(now) > tolerance {
            let retry_after_ms = tat - now - tolerance;
            return (key, Applied::Throttled { retry_after_ms });
        }
        let grown = report.routes.len().saturating_sub(state.routes.len());
        if grown > 0 && self.instance_routes.saturating_add(grown) > self.limits.max_instance_routes
        {
            let limit = self.limits.max_instance_routes;
            return (key, Applied::OverCapacity(Capacity::InstanceRoutes(limit)));
        }
        if rated {
            state.tat = tat.saturating_add(interval);
        }
        let receiver_ms = now.saturating_sub(state.last_seen);
        let proxy_ms = report.time_ms.saturating_sub(state.last_time_ms);
        // The proxy's clock measures its own interval best (skew cancels out); a jumped clock
        // (zero, or far from what the receiver saw) falls back to the receiver's clock.
        let interval_ms = if proxy_ms > 0 && proxy_ms <= receiver_ms.saturating_mul(2) + 1000 {
            proxy_ms
        } else {
            receiver_ms
        }
        .max(1);
        state.last_seq = report.seq;
        state.last_seen = now;
        state.last_time_ms = report.time_ms;

        let mut reset = false;
        let mut same_layout = state.routes.len() == report.routes.len();
        let mut routes = Vec::with_capacity(report.routes.len());
        for (i, r) in report.routes.iter().enumerate() {
            let matches =
                |l: &RouteLast| *l.route == *r.route.as_str() && *l.cluster == *r.cluster.as_str();
            let last = match state.routes.get(i) {
                Some(l) if matches(l) => Some(l),
                _ => {
                    same_layout = false;
                    state.routes.iter().find(|l| matches(l))
                }
            };
            let delta = match last {
                Some(last) => {
                    if r.requests_total < last.requests || r.duration_us_total < last.busy_us {
                        reset = true;
                        RouteDelta::default()
                    } else {
                        RouteDelta {
                            requests: r.requests_total - last.requests,
                            busy_us: r.duration_us_total - last.busy_us,
                        }
                    }
                }
                // A route this instance has not reported before started from zero with it.
                None => RouteDelta {
                    requests: r.requests_total,
                    busy_us: r.duration_us_total,
                },
            };
            routes.push(delta);
        }
        // Remember the new totals; routes that vanished from the report are forgotten, so
        // memory never exceeds the last report's (bounded) routes.
        if same_layout {
            for (last, r) in state.routes.iter_mut().zip(&report.routes) {
                last.requests = r.requests_total;
                last.busy_us = r.duration_us_total;
            }
        } else {
            self.instance_routes =
                (self.instance_routes + report.routes.len()).saturating_sub(state.routes.len());
            state.routes = routes_of(report);
        }
        if reset {
            // A counter went down: the proxy restarted under the same instance id or its stats
            // were cleared. The new values are a baseline, never negative traffic.
            return (key, Applied::Baseline);
        }
        (
            key,
            Applied::Deltas {
                interval_ms,
                routes,
            },
        )
    }

    /// Forgets instances not heard from for `ttl_ms`.
    pub fn expire(&mut self, now: Millis, ttl_ms: Millis) {
        self.instances
            .retain(|_, s| now.saturating_sub(s.last_seen) <= ttl_ms);
        self.instance_routes = self.routes();
        self.per_namespace.clear();
        for state in self.instances.values() {
            *self
                .per_namespace
                .entry(state.namespace.clone())
                .or_default() += 1;
        }
    }

    /// Instances tracked.
    pub fn instances(&self) -> usize {
        self.instances.len()
    }

    /// (instance, route) pairs tracked.
    pub fn routes(&self) -> usize {
        self.instances.values().map(|s| s.routes.len()).sum()
    }
}

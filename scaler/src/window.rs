//! Rates from cumulative counters, and per-target windows. Pure: `now` is an argument.
//!
//! ```text
//!  report (instance, seq, routes[]) --> Counters: seq <= last? drop. first? baseline.
//!                                       counter went down? reset: new baseline, no traffic.
//!                                       else per-route deltas (requests, busy microseconds)
//!  deltas of the routes a target selects --> TargetWindow: 100 ms buckets (ring), sources
//!  TargetWindow::observe(now) --> stable / panic averages, burst estimate, freshness
//! ```
//!
//! Concurrency is measured by Little's law on the counters: the busy time (sum of request
//! durations) completed per second is the average number of requests in flight, so it survives
//! lost and duplicated reports as the request counts do. The reported `inflight` gauge only
//! feeds the burst estimate, where the newest value matters more than a smooth one.

use std::collections::HashMap;
use std::sync::Arc;

use surge_wire::Report;

use crate::crd::MetricType;
use crate::decision::{Freshness, Millis, Observation};

/// Width of one window bucket.
pub const BUCKET_MS: Millis = 100;

/// The span over which the filter measures the rate it compares to decide on an early report
/// (its `surge.window_ms` default); see [`TargetWindow::record`].
pub const SURGE_WINDOW_MS: Millis = 200;

/// Per-source limits: what one proxy (instance) may cost the scaler, and how many the scaler
/// tracks. A flooding or misbehaving sender is refused beyond them instead of growing memory or
/// waking decisions faster than real traffic could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Least mean time between accepted reports of one instance, in milliseconds (the rate of
    /// a GCRA token bucket). The filter sends one report per `report_interval_ms` (default
    /// 1000, at least 50) plus early surge reports at least `surge.min_gap_ms` (250) apart.
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
struct RouteLast {
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
        if tat.saturating_sub(now) > tolerance {
            let retry_after_ms = tat - now - tolerance;
            return (key, Applied::Throttled { retry_after_ms });
        }
        let grown = report.routes.len().saturating_sub(state.routes.len());
        if grown > 0 && self.instance_routes.saturating_add(grown) > self.limits.max_instance_routes
        {
            let limit = self.limits.max_instance_routes;
            return (key, Applied::OverCapacity(Capacity::InstanceRoutes(limit)));
        }
        state.tat = tat.saturating_add(interval);
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

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    busy_us: u64,
}

/// One proxy feeding a target.
#[derive(Debug, Clone, Copy)]
struct Source {
    last_seen: Millis,
    last_interval_ms: Millis,
    /// Requests per second over the source's last interval.
    rps: f64,
    /// Average concurrency over the source's last interval.
    concurrency: f64,
    /// In-flight requests at its last report.
    inflight: u64,
    /// Estimated arrival rate for the burst estimate (see [`TargetWindow::record`]).
    arrivals_rps: f64,
    has_rate: bool,
}

/// Window settings of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Stable window.
    pub stable_ms: Millis,
    /// Panic window.
    pub panic_ms: Millis,
    /// Sources silent for longer are dropped.
    pub stale_ms: Millis,
}

/// The traffic of one target, summed over its sources, in [`BUCKET_MS`] buckets.
#[derive(Debug)]
pub struct TargetWindow {
    config: WindowConfig,
    buckets: Vec<Bucket>,
    /// Absolute index (`time / BUCKET_MS`) of the newest bucket written.
    newest: u64,
    first_data: Option<Millis>,
    sources: HashMap<Arc<str>, Source>,
    surge_since: Option<Millis>,
}

/// What a report did to a target's window, for deciding whether to wake the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing that can move the answer.
    Minor,
    /// A new source, or a source's rate moved by more than 10 %: decide soon.
    Significant,
    /// A report sent early because of a surge: decide at once.
    Surge,
}

impl TargetWindow {
    /// An empty window.
    pub fn new(config: WindowConfig) -> Self {
        let len = (config.stable_ms.max(config.panic_ms) / BUCKET_MS).max(1) as usize;
        Self {
            config,
            buckets: vec![Bucket::default(); len],
            newest: 0,
            first_data: None,
            sources: HashMap::new(),
            surge_since: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> WindowConfig {
        self.config
    }

    /// Records a source's report: `delta` is `None` for a baseline (no traffic known yet).
    pub fn record(
        &mut self,
        now: Millis,
        source: &Arc<str>,
        delta: Option<(RouteDelta, Millis)>,
        inflight: u64,
        surge: bool,
    ) -> Change {
        let mut change = Change::Minor;
        if surge && self.surge_since.is_none() {
            self.surge_since = Some(now);
        }
        let entry = match self.sources.get_mut(source) {
            Some(entry) => entry,
            None => {
                change = Change::Significant;
                self.sources.entry(Arc::clone(source)).or_insert(Source {
                    last_seen: now,
                    last_interval_ms: 0,
                    rps: 0.0,
                    concurrency: 0.0,
                    inflight,
                    arrivals_rps: 0.0,
                    has_rate: false,
                })
            }
        };
        entry.last_seen = now;
        let previous_inflight = entry.inflight;
        entry.inflight = inflight;
        let Some((delta, interval_ms)) = delta else {
            return if surge { Change::Surge } else { change };
        };
        let seconds = interval_ms.max(1) as f64 / 1000.0;
        let rps = delta.requests as f64 / seconds;
        let concurrency = delta.busy_us as f64 / 1e6 / seconds;
        if !entry.has_rate || (rps - entry.rps).abs() > 0.1 * entry.rps.max(1.0) {
            change = Change::Significant;
        }
        // Arrivals, not completions: a saturated pod completes at its capacity while its queue
        // (the in-flight gauge) grows, so arrivals = completions + growth of the queue.
        let arrivals =
            (delta.requests as f64 + inflight as f64 - previous_inflight as f64).max(0.0);
        entry.arrivals_rps = if surge && entry.has_rate && interval_ms > SURGE_WINDOW_MS {
            // A surge report closes an interval that began at the previous (calm) report: the
            // filter sends it as soon as its last `SURGE_WINDOW_MS` run at `factor` times the
            // previous rate, so the traffic above that rate is put in that window rather than
            // spread over the whole interval, which would dilute a step by interval/window.
            let window = SURGE_WINDOW_MS as f64 / 1000.0;
            let before = entry.rps * (seconds - window);
            ((arrivals - before).max(0.0) / window).max(arrivals / seconds)
        } else {
            arrivals / seconds
        };
        entry.rps = rps;
        entry.concurrency = concurrency;
        entry.last_interval_ms = interval_ms;
        entry.has_rate = true;

        let start = now.saturating_sub(interval_ms);
        self.first_data = Some(self.first_data.map_or(start, |t| t.min(start)));
        self.advance(now);
        let bucket = self.bucket_mut(now);
        bucket.requests = bucket.requests.saturating_add(delta.requests);
        bucket.busy_us = bucket.busy_us.saturating_add(delta.busy_us);
        if surge { Change::Surge } else { change }
    }

    fn advance(&mut self, now: Millis) {
        let index = now / BUCKET_MS;
        if index <= self.newest {
            return;
        }
        let len = self.buckets.len() as u64;
        let from = self.newest.max(index.saturating_sub(len)) + 1;
        for i in from..=index {
            self.buckets[(i % len) as usize] = Bucket::default();
        }
        self.newest = index;
    }

    fn bucket_mut(&mut self, now: Millis) -> &mut Bucket {
        let len = self.buckets.len() as u64;
        // `advance` made `now` the newest bucket, or `now` is older and still in the ring.
        let index = (now / BUCKET_MS).max(self.newest.saturating_sub(len - 1));
        &mut self.buckets[(index % len) as usize]
    }

    /// Sum of the buckets within `window_ms` before `now`, and the time the data covers.
    fn sum(&self, now: Millis, window_ms: Millis) -> (Bucket, Millis) {
        let len = self.buckets.len() as u64;
        let index = now / BUCKET_MS;
        let count = (window_ms / BUCKET_MS).clamp(1, len);
        let oldest = index.saturating_sub(count - 1);
        let mut total = Bucket::default();
        for i in oldest..=index.min(self.newest) {
            if i + len > self.newest {
                let b = &self.buckets[(i % len) as usize];
                total.requests += b.requests;
                total.busy_us += b.busy_us;
            }
        }
        let covered = match self.first_data {
            Some(first) => now.saturating_sub(first).clamp(BUCKET_MS, window_ms),
            None => window_ms,
        };
        (total, covered)
    }

    /// Drops sources silent for longer than the staleness bound; returns how many were dropped.
    pub fn expire(&mut self, now: Millis) -> usize {
        let before = self.sources.len();
        let stale = self.config.stale_ms;
        self.sources
            .retain(|_, s| now.saturating_sub(s.last_seen) <= stale);
        before - self.sources.len()
    }

    /// Sources currently feeding the target.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Whether `source` already feeds the target.
    pub fn has_source(&self, source: &str) -> bool {
        self.sources.contains_key(source)
    }

    /// The metric as the decision sees it at `now`.
    pub fn observe(&mut self, now: Millis, metric: MetricType) -> Observation {
        self.expire(now);
        let value = |bucket: Bucket, covered: Millis| -> f64 {
            let seconds = covered as f64 / 1000.0;
            match metric {
                MetricType::Rps => bucket.requests as f64 / seconds,
                MetricType::Concurrency => bucket.busy_us as f64 / 1e6 / seconds,
            }
        };
        let (stable_sum, stable_covered) = self.sum(now, self.config.stable_ms);
        let (panic_sum, panic_covered) = self.sum(now, self.config.panic_ms);

        if self
            .surge_since
            .is_some_and(|since| now.saturating_sub(since) > self.config.panic_ms)
        {
            // By now the panic window holds the surge: its average takes over.
            self.surge_since = None;
        }
        let burst = self.surge_since.map(|_| {
            self.sources
                .values()
                .map(|s| match metric {
                    MetricType::Rps => s.arrivals_rps,
                    MetricType::Concurrency => s.concurrency.max(s.inflight as f64),
                })
                .sum()
        });

        let with_rate = self.sources.values().filter(|s| s.has_rate).count();
        let late = self.sources.values().any(|s| {
            let expected = if s.last_interval_ms == 0 {
                1000
            } else {
                s.last_interval_ms
            };
            now.saturating_sub(s.last_seen) > 2 * expected + 500
        });
        let freshness = if with_rate == 0 || self.first_data.is_none() {
            Freshness::Stale
        } else if late || with_rate < self.sources.len() {
            Freshness::Incomplete
        } else {
            Freshness::Fresh
        };
        Observation {
            stable: value(stable_sum, stable_covered),
            panic: value(panic_sum, panic_covered),
            burst,
            freshness,
        }
    }
}

#[cfg(test)]
mod tests;

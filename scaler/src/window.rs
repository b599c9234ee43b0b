//! Rates from cumulative counters, and per-target windows. Pure: `now` is an argument.
//!
//! ```text
//!  report (instance, seq, routes[]) --> Counters (counters.rs): seq <= last? drop. first?
//!                                       baseline. counter went down? reset: new baseline, no
//!                                       traffic. else per-route deltas (requests, busy us)
//!  deltas of the routes a target selects --> TargetWindow: 100 ms buckets (ring.rs: a report
//!                                       spread over its interval), sources
//!  TargetWindow::observe(now) --> stable / panic averages, burst estimate, freshness
//!  TargetWindow::quiet_since(now) --> since when every source's reports say zero (scale to zero)
//! ```
//!
//! The request-rate averages (stable and panic) count arrivals: completions plus the growth
//! of the in-flight gauges, which over a window telescopes to completions + in flight at its
//! end - in flight at its start. Completions alone read low while a saturated pod queues and
//! high while its queue drains once new pods turn ready: that backlog is served once, it is not
//! load to size for. A window holds each report's share of its interval that falls inside it,
//! plus, for the time since each source's last report, that source's latest rates: a 6 s panic
//! window spans only six 1 s report intervals, so one interval counted whole or left out moves
//! it by a sixth of a source.
//!
//! Concurrency is measured by Little's law on the counters: the busy time (sum of request
//! durations) completed per second is the average number of requests in flight, so it survives
//! lost and duplicated reports as the request counts do. The reported `inflight` gauge only
//! feeds the burst estimate, where the newest value matters more than a smooth one.
//!
//! The burst estimate is the target's arrival rate *now*: each source's latest rate of requests
//! reaching it, taken from the recent window its report carries (the filter's own 200 ms view)
//! or, without one, from the arrivals (completions plus the growth of the in-flight count) over
//! the interval since its previous report; while a rise is in progress, from the arrivals
//! since the report that first showed it (`rise.rs`: a window right after a stalled proxy
//! catches up reads far above the rate). Summed over the sources, with one correction: when a
//! pod joins the traffic (a new replica turning ready), the load balancer moves part of the
//! other pods' traffic to it, and their latest rates, reported before the move, still count
//! that part. A joining source is therefore left out of the sum until every other source
//! carrying traffic has reported a rate measured wholly after it joined (joining sources
//! included: a pod's rate from before a later batch of pods joined holds that batch's share
//! too); until then the others' rates already hold its share. The estimate errs low while
//! pods join, never high, and is whole again one report interval later.
//!
//! A burst estimate is given only while it stands [`BURST_SIGMAS`] standard deviations above
//! the stable average, judged on the arrivals counted in the sources' recent windows, in their
//! last intervals, in their newest intervals back to a second (`evidence.rs`: a proxy that
//! reports every 250 ms shows a step of half again its rate as clearly as one that reports each
//! second), or in the panic window, whichever is clearest: one noisy 200 ms window must not
//! scale a target, while a real step clears the bar in its first window (a 10x step) or its
//! first interval (a doubling). Once the stable average has caught up the estimate is no
//! longer needed and is not given.

use std::collections::HashMap;
use std::sync::Arc;

use crate::crd::MetricType;
use crate::decision::{Freshness, Millis, Observation};

/// Width of one window bucket.
pub const BUCKET_MS: Millis = 100;

mod counters;
mod evidence;
mod ring;
mod rise;

#[cfg(test)]
use counters::RouteLast;
pub use counters::{Applied, Capacity, Counters, RouteDelta, SourceLimits};
use evidence::{Evidence, Recent};
use ring::{Ring, Totals, Traffic};

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
    /// Latest arrival rate, for the burst estimate.
    arrivals_rps: f64,
    /// Requests counted for that rate, and the span they were counted over: its evidence.
    rate_evidence: Evidence,
    /// Arrivals over its newest intervals, as evidence: the last one (longer than a window,
    /// so a moderate rise shows with more confidence there), and those back to a second when
    /// they are short.
    recent_intervals: Recent,
    /// Start of the span that rate was measured over.
    rate_since: Millis,
    /// The rise the source's rate is read over, if one is in progress (see `rise.rs`).
    rise: Option<rise::Rise>,
    has_rate: bool,
    /// When the source started carrying traffic while others already did (see the module
    /// docs); cleared once every other source has reported since.
    joined_at: Option<Millis>,
    /// Its latest report said zero: no request completed since the one before, none in flight,
    /// none arriving in its window. A baseline is not quiet: its completions are unknown.
    quiet: bool,
}

/// How many standard deviations a target's burst estimate must stand above its stable average
/// before a decision may act on it. The filter sends an early report at three sigmas of its own
/// (cheap: it only wakes the scaler with fresh data); acting is not cheap (a scale-up holds for
/// the scale-down stabilization window, 300 s by default), so the scaler asks for four, over
/// the target's summed evidence: either the recent windows (about 200 ms, fast) or the last
/// intervals (about a second, for moderate rises).
pub const BURST_SIGMAS: f64 = 4.0;

/// A target's stable averages, which a burst must stand out from.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    rps: f64,
    concurrency: f64,
}

/// What one report says of one source, over the routes a target selects.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SourceReport {
    /// Traffic since the source's previous report and the time that covers; `None` for a
    /// baseline (no traffic known yet).
    pub delta: Option<(RouteDelta, Millis)>,
    /// Requests in flight at the report.
    pub inflight: u64,
    /// Requests that arrived during the proxy's recent window, and the window's span.
    pub window: Option<(u64, Millis)>,
    /// Sent early because of a surge.
    pub surge: bool,
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
    buckets: Ring,
    first_data: Option<Millis>,
    sources: HashMap<Arc<str>, Source>,
    /// Since when every source's latest report has been quiet (`None`: some source's is not).
    quiet_since: Option<Millis>,
    /// When a source last joined the traffic: a rise that began before it ends.
    last_join: Millis,
}

/// What a report did to a target's window, for deciding whether to wake the decision; ordered
/// by urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Nothing that can move the answer.
    Minor,
    /// A new source, a source's rate moved by more than 10 %, or a report during a rise:
    /// decide soon.
    Significant,
    /// A report sent early because of a surge that it is the first to show (not one adding to
    /// a rise already read): decide at once.
    Surge,
}

impl TargetWindow {
    /// An empty window.
    pub fn new(config: WindowConfig) -> Self {
        // One bucket more than the longest window: a window rarely starts on a bucket's edge.
        let len = (config.stable_ms.max(config.panic_ms) / BUCKET_MS).max(1) as usize + 1;
        Self {
            config,
            buckets: Ring::new(len),
            first_data: None,
            sources: HashMap::new(),
            quiet_since: None,
            last_join: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> WindowConfig {
        self.config
    }

    /// Records a source's report.
    pub fn record(&mut self, now: Millis, source: &Arc<str>, report: SourceReport) -> Change {
        let mut change = Change::Minor;
        let carrying = self
            .sources
            .iter()
            .any(|(key, s)| key != source && s.arrivals_rps > 0.0);
        let entry = match self.sources.get_mut(source) {
            Some(entry) => entry,
            None => {
                change = Change::Significant;
                self.sources.entry(Arc::clone(source)).or_insert(Source {
                    last_seen: now,
                    last_interval_ms: 0,
                    rps: 0.0,
                    concurrency: 0.0,
                    inflight: report.inflight,
                    arrivals_rps: 0.0,
                    rate_evidence: Evidence::default(),
                    recent_intervals: Recent::default(),
                    rate_since: now,
                    rise: None,
                    has_rate: false,
                    joined_at: None,
                    quiet: false,
                })
            }
        };
        entry.last_seen = now;
        entry.quiet = report.delta.is_some_and(|(delta, _)| delta.requests == 0)
            && report.inflight == 0
            && report.window.is_none_or(|(requests, _)| requests == 0);
        if entry.quiet {
            if self.quiet_since.is_none() && self.sources.values().all(|s| s.quiet) {
                self.quiet_since = Some(now);
            }
        } else {
            self.quiet_since = None;
        }
        // The entry again: the check above borrowed every source.
        let Some(entry) = self.sources.get_mut(source) else {
            return change;
        };
        let previous_inflight = entry.inflight;
        let queue_change = report.inflight as i64 - previous_inflight as i64;
        entry.inflight = report.inflight;
        let was_idle = entry.arrivals_rps <= 0.0;
        let interval_arrivals = report.delta.map(|(delta, interval_ms)| Evidence {
            // Arrivals, not completions: a saturated pod completes at its capacity while its
            // queue (the in-flight gauge) grows, so arrivals = completions + growth of the queue.
            count: (delta.requests as f64 + report.inflight as f64 - previous_inflight as f64)
                .max(0.0),
            span_ms: interval_ms.max(1),
        });
        // The proxy's recent window is the freshest view; the interval average is the fallback.
        let measured = report
            .window
            .map(|(requests, span_ms)| Evidence {
                count: requests as f64,
                span_ms: span_ms.max(1),
            })
            .or(interval_arrivals);
        if let Some(measured) = measured {
            let reading = rise::Reading {
                measured,
                interval: interval_arrivals,
                previous_rate: (entry.rate_evidence.span_ms > 0).then_some(entry.arrivals_rps),
            };
            let (evidence, rise) = rise::read(
                entry.rise,
                reading,
                now,
                self.last_join,
                self.config.panic_ms,
            );
            entry.rise = rise;
            entry.arrivals_rps = evidence.rate();
            entry.rate_evidence = evidence;
            entry.rate_since = now.saturating_sub(evidence.span_ms);
        }
        if let Some(evidence) = interval_arrivals {
            entry.recent_intervals.push(evidence);
        }
        // A surge report is news (decide at once) when it shows a rise, not when it adds to one
        // already read: the filter sends one a window while a surge lasts, and with many
        // sources deciding at each would run decisions back to back. Those wake the decision
        // as a report during a rise does, below.
        let surge = if report.surge && !entry.rise.is_some_and(|r| r.began_before(now)) {
            Change::Surge
        } else {
            Change::Minor
        };
        if was_idle && entry.arrivals_rps > 0.0 && carrying {
            // Its traffic began at the latest now: a rate measured from then on cannot hold
            // its share. (Pods that turn ready together wait for each other's next report,
            // within an interval: their first windows reach back before they joined.)
            entry.joined_at = Some(now);
            self.last_join = now;
        }
        let Some((delta, interval_ms)) = report.delta else {
            return surge.max(change);
        };
        let seconds = interval_ms.max(1) as f64 / 1000.0;
        let rps = delta.requests as f64 / seconds;
        let concurrency = delta.busy_us as f64 / 1e6 / seconds;
        if !entry.has_rate || (rps - entry.rps).abs() > 0.1 * entry.rps.max(1.0) {
            change = Change::Significant;
        }
        if entry.rise.is_some() {
            // Each report during a rise adds to its evidence (the arrivals since it began),
            // which may stand out now where it did not before although no rate moved: a
            // saturated pod completes at its capacity report after report, and the rise's
            // rate holds as it grows surer. Left to the slow tick, a 3x step's write waited
            // up to a second after the report that carried enough.
            change = Change::Significant;
        }
        entry.rps = rps;
        entry.concurrency = concurrency;
        entry.last_interval_ms = interval_ms;
        entry.has_rate = true;

        let start = now.saturating_sub(interval_ms);
        self.first_data = Some(self.first_data.map_or(start, |t| t.min(start)));
        let traffic = Traffic {
            requests: delta.requests,
            busy_us: delta.busy_us,
            queue_change,
        };
        self.buckets.add(now, interval_ms, traffic);
        surge.max(change)
    }

    /// The burst estimate: every source's latest rate, joining sources left out until the
    /// others have reported since they joined (see the module docs); `None` unless it stands
    /// [`BURST_SIGMAS`] above the target's stable average (`stable_rps`, and for the
    /// concurrency metric `stable_concurrency`).
    fn burst(
        &mut self,
        now: Millis,
        metric: MetricType,
        stable: Baseline,
        panic: Evidence,
    ) -> Option<f64> {
        // A source that missed its last report is most likely a pod that is gone (a
        // scale-down): the pods left took its share, so its last rate would be counted twice.
        // Left out here (erring low), it still keeps the data incomplete until it expires.
        let current = |s: &Source| {
            let interval = if s.last_interval_ms == 0 {
                1000
            } else {
                s.last_interval_ms
            };
            now.saturating_sub(s.last_seen) <= interval + interval / 2
        };
        // The two oldest rates among the sources carrying traffic, by the start of the span
        // each was measured over: a rate measured partly before a join may still hold the
        // joiner's share. A source's "others" include the oldest one unless it is that one.
        let mut oldest = [(Millis::MAX, None::<&Arc<str>>); 2];
        for (key, s) in &self.sources {
            if s.arrivals_rps > 0.0 && current(s) {
                if s.rate_since < oldest[0].0 {
                    oldest = [(s.rate_since, Some(key)), oldest[0]];
                } else if s.rate_since < oldest[1].0 {
                    oldest[1] = (s.rate_since, Some(key));
                }
            }
        }
        let oldest_other = |key: &Arc<str>| {
            if oldest[0].1 == Some(key) {
                oldest[1].0
            } else {
                oldest[0].0
            }
        };
        let mut settled = Vec::new();
        let mut total = 0.0;
        let (mut recent, mut recent_var) = (0.0, 0.0);
        let (mut interval, mut interval_var) = (0.0, 0.0);
        let (mut second, mut second_var) = (0.0, 0.0);
        let mut inflight = 0.0;
        for (key, s) in &self.sources {
            if !current(s) {
                continue;
            }
            if let Some(joined) = s.joined_at {
                if oldest_other(key) < joined {
                    continue;
                }
                settled.push(Arc::clone(key));
            }
            total += match metric {
                MetricType::Rps => s.arrivals_rps,
                MetricType::Concurrency => s.concurrency.max(s.inflight as f64),
            };
            recent += s.rate_evidence.rate();
            recent_var += s.rate_evidence.variance();
            let last = s.recent_intervals.last();
            interval += last.rate();
            interval_var += last.variance();
            let over_second = s.recent_intervals.over(evidence::SPAN_MS);
            second += over_second.rate();
            second_var += over_second.variance();
            inflight += s.inflight as f64;
        }
        for key in settled {
            if let Some(s) = self.sources.get_mut(&key) {
                s.joined_at = None;
            }
        }
        let stands_out = |rate: f64, variance: f64| {
            // The spread is the observed count's (larger than the baseline's when the rate
            // rose), and at least one request's worth, so a handful of requests never passes.
            rate - stable.rps >= BURST_SIGMAS * variance.max(1.0).sqrt()
        };
        let arrivals_rose = stands_out(recent, recent_var)
            || stands_out(interval, interval_var)
            || stands_out(second, second_var)
            || stands_out(panic.rate(), panic.variance());
        let clear = match metric {
            MetricType::Rps => arrivals_rose,
            // A concurrency burst may come from slower requests rather than more of them: the
            // in-flight count (a count, about Poisson too) against the stable concurrency.
            MetricType::Concurrency => {
                arrivals_rose
                    || inflight - stable.concurrency >= BURST_SIGMAS * inflight.max(1.0).sqrt()
            }
        };
        clear.then_some(total)
    }

    /// Sums of the window's last `window_ms` before `now`, the time the data covers, and
    /// what the sources' reports have not carried yet: each current source's latest rates
    /// over the time since its last report (its traffic is known only up to its report; left
    /// out, every average would read low by the sources' mean report age, a twelfth of a 6 s
    /// window at 1 s reports). A source late past half an interval is not extended (erring
    /// low: it is most likely gone).
    fn sum(&self, now: Millis, window_ms: Millis) -> (Totals, Totals, Millis) {
        let total = self.buckets.sum(now, window_ms);
        let covered = match self.first_data {
            Some(first) => now.saturating_sub(first).clamp(BUCKET_MS, window_ms),
            None => window_ms,
        };
        let mut pending = Totals::default();
        for s in self.sources.values().filter(|s| s.has_rate) {
            let age = now.saturating_sub(s.last_seen);
            if age > s.last_interval_ms + s.last_interval_ms / 2 {
                continue;
            }
            let seconds = age.min(covered) as f64 / 1000.0;
            // Arrivals as completions: the queue's growth since the last report is unknown.
            pending.requests += s.recent_intervals.last().rate() * seconds;
            pending.busy_us += s.concurrency * 1e6 * seconds;
        }
        (total, pending, covered)
    }

    /// What a burst must stand out from: the stable window's traffic before its last second.
    /// The evidence a burst is judged on reaches back a second; a baseline that held it would
    /// follow the step it is tested against, little over a full minute of history but much
    /// at a replica whose window covers seconds (one that just started, in a rollout). With
    /// too little history before that second, the whole stable window (`stable`, extended to
    /// the present, over `covered`). `counted` is the stable window's sum of the reports alone.
    fn baseline(&self, now: Millis, counted: Totals, stable: Totals, covered: Millis) -> Baseline {
        let before = covered.saturating_sub(evidence::SPAN_MS);
        let (totals, span) = if before >= evidence::SPAN_MS {
            let older = counted.minus(self.buckets.sum(now, evidence::SPAN_MS));
            (older, before)
        } else {
            (stable, covered)
        };
        let seconds = span as f64 / 1000.0;
        Baseline {
            rps: totals.arrivals() / seconds,
            concurrency: totals.busy_us / 1e6 / seconds,
        }
    }

    /// Drops sources silent for longer than the staleness bound; returns how many were dropped.
    pub fn expire(&mut self, now: Millis) -> usize {
        let before = self.sources.len();
        let stale = self.config.stale_ms;
        self.sources
            .retain(|_, s| now.saturating_sub(s.last_seen) <= stale);
        before - self.sources.len()
    }

    /// Since when every source's latest report has said zero (no request completed, in flight
    /// or arriving), after dropping the sources silent past the staleness bound; `None` while
    /// some source's latest report carried requests, or when there is no source. A source that
    /// carried requests and then went silent keeps it `None` until it expires: its silence is
    /// not zero load.
    pub fn quiet_since(&mut self, now: Millis) -> Option<Millis> {
        self.expire(now);
        if self.sources.is_empty() || !self.sources.values().all(|s| s.quiet) {
            self.quiet_since = None;
            return None;
        }
        Some(*self.quiet_since.get_or_insert(now))
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
        let value = |totals: Totals, covered: Millis| -> f64 {
            let seconds = covered as f64 / 1000.0;
            match metric {
                MetricType::Rps => totals.arrivals() / seconds,
                MetricType::Concurrency => totals.busy_us / 1e6 / seconds,
            }
        };
        let (stable_counted, stable_pending, stable_covered) = self.sum(now, self.config.stable_ms);
        let (panic_sum, panic_pending, panic_covered) = self.sum(now, self.config.panic_ms);
        let stable_sum = stable_counted.plus(stable_pending);
        let stable = value(stable_sum, stable_covered);

        // Evidence is what was counted, not the extension to the present.
        let panic_evidence = Evidence {
            count: panic_sum.arrivals(),
            span_ms: panic_covered,
        };
        let baseline = self.baseline(now, stable_counted, stable_sum, stable_covered);
        let burst = self.burst(now, metric, baseline, panic_evidence);

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
            stable,
            panic: value(panic_sum.plus(panic_pending), panic_covered),
            burst,
            freshness,
        }
    }
}

#[cfg(test)]
mod tests;

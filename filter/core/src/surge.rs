//! When to send a report: periodically, and early when the arrival rate surges.
//!
//! The reporter samples, every check period, the requests that have *reached* the proxy per
//! route key (completed plus in flight: [`Arrivals`]). Arrivals rather than completions,
//! because a saturated pod completes at its capacity while its queue grows: counted at
//! completion, a 10x step into a pod with 3x headroom looks like a 3x step, late. A report is
//! due when the report interval has passed since the last one (whichever VM sent it), or early
//! when the arrival rate over the recent window surges: at least `min_rps`, at least `factor`
//! times the rate the last report carried, and more above it than noise would be (see
//! [`NOISE_SIGMAS`]). Early reports are at least `min_gap_ms` apart. While a surge lasts (the
//! window still stands out from the rate before it) one follows every window, at most
//! [`MAX_LASTING_REPORTS`] (a periodic report falling due meanwhile is flagged as one of them):
//! each adds its window's arrivals to what the scaler has seen of the rise, so a moderate step
//! is confirmed in a few hundred milliseconds instead of at the next periodic report, up to a
//! second later. Every report carries the recent window ([`Recent`]), so the scaler reads the
//! current rate instead of an interval average. Pure: time is an argument.

use std::collections::VecDeque;

use crate::config::{Config, SurgeConfig};

/// Why a report goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The report interval has passed and the rate is not surging.
    Periodic,
    /// The recent rate surged past the last reported rate before the interval passed: an early
    /// report.
    Surge,
    /// The interval passed while the rate surges, or while a surge lasts: sent on schedule and
    /// flagged as a surge, so that a periodic report falling due at the start of a surge does
    /// not hide it, nor one falling due during it end its follow-ups.
    PeriodicSurge,
    /// Nothing else is due, but the proxy holds requests for a cold destination: an activation
    /// report, sent at every check while anything is held, so that the scaler hears of the held
    /// demand at once and its answer that the destination is warm arrives within a check
    /// period. It changes neither the periodic schedule nor the surge baseline.
    Activation,
}

impl Trigger {
    /// Whether the report is flagged as a surge.
    pub fn is_surge(self) -> bool {
        matches!(self, Self::Surge | Self::PeriodicSurge)
    }

    /// Whether the report is the periodic one (it advances the schedule).
    pub fn is_periodic(self) -> bool {
        matches!(self, Self::Periodic | Self::PeriodicSurge)
    }
}

/// How far above the baseline, in standard deviations of a Poisson count at the baseline rate,
/// the window's count must be to be a surge. At low rates a 200 ms window holds a handful of
/// requests, and "twice the baseline" is then a coin toss (6 expected, 12 seen happens every
/// few seconds at 10 checks a second); three sigmas make a false early report rare there,
/// while at the rates where scaling matters the factor is the stricter rule (200 rps: 40
/// expected, the default factor asks for 20 more, three sigmas for 19).
pub const NOISE_SIGMAS: f64 = 3.0;

/// After a report flagged as a surge, an early one may follow as soon as the rate has risen this much
/// again (rather than by the whole `factor`). An early report goes out the moment the window
/// crosses the factor, while the window still holds some of the calm before the step, so the
/// rate it carries is short of the new level (a 10x step crossed 40 ms in reads about 3x);
/// once the window has moved past the step the rest shows as a further rise, which this lets
/// through, rate-limited by `min_gap_ms` like every early report.
pub const FOLLOW_UP_FACTOR: f64 = 1.25;

/// Most reports a lasting surge adds (see the module docs): five 200 ms windows reach
/// the next periodic report at the default 1 s interval, and the count bounds them whatever
/// the interval (up to 60 s). Every report of the surge after its first counts against it;
/// once they are spent, only a further [`FOLLOW_UP_FACTOR`] rise that also clears the noise
/// margin goes out early (`Scheduler::surging`), and such rises are few.
pub const MAX_LASTING_REPORTS: u32 = 5;

/// Least time between two reports of a lasting surge (less [`TICK_SLACK_MS`]), however short
/// `window_ms` and `min_gap_ms` are set: with [`MAX_LASTING_REPORTS`], a lasting surge stays
/// within the scaler's per-instance limit (a burst of 5, then one per 50 ms).
pub const LASTING_MIN_GAP_MS: u64 = 100;

/// How much sooner than a gap's end a check may come and still count as after it. Envoy re-arms
/// a plugin's tick once the tick has run, yet a tick one check period after an early report
/// sometimes read the period less a millisecond on the filter's clock (the wall clock, in whole
/// milliseconds), and the report due then waited a whole check more: on the real control plane
/// the follow-up of a 10x step went out 200 ms after the first report instead of 100 in 5 of
/// the 16 runs that needed one (two rounds of 20), in none with this slack.
pub const TICK_SLACK_MS: u64 = 5;

/// Most samples kept. The configuration keeps `window_ms / check_period_ms` below this, so the
/// window always has a sample at or before its start.
pub const MAX_SAMPLES: usize = 66;

/// Requests that have reached the proxy since its counters started, per route key: completed
/// plus in flight. Indexed like the shared route table, with the overflow key apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Arrivals {
    /// By index in the shared route table.
    pub indexed: Vec<u64>,
    /// The `other` key.
    pub other: u64,
}

impl Arrivals {
    /// All routes together.
    pub fn total(&self) -> u64 {
        self.indexed
            .iter()
            .fold(self.other, |sum, &n| sum.saturating_add(n))
    }

    /// Per route, what arrived since `base`. A key `base` does not have yet counts from zero;
    /// a count below its base (the gauges are read one by one while other threads flush) counts
    /// as nothing rather than wrapping.
    pub fn since(&self, base: &Self) -> Self {
        Self {
            indexed: self
                .indexed
                .iter()
                .enumerate()
                .map(|(i, &now)| now.saturating_sub(base.indexed.get(i).copied().unwrap_or(0)))
                .collect(),
            other: self.other.saturating_sub(base.other),
        }
    }
}

/// The recent window: what arrived per route over the last `span_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recent {
    /// The span actually covered, between two samples (close to `surge.window_ms`).
    pub span_ms: u64,
    /// Arrivals within it.
    pub arrivals: Arrivals,
}

impl Recent {
    /// Requests per second over the window.
    pub fn rate(&self) -> f64 {
        per_second(self.arrivals.total(), self.span_ms)
    }
}

/// Whether a check at `now_ms` comes `gap_ms` after `since_ms`, give or take
/// [`TICK_SLACK_MS`].
fn gap_passed(since_ms: u64, now_ms: u64, gap_ms: u64) -> bool {
    now_ms
        .saturating_sub(since_ms)
        .saturating_add(TICK_SLACK_MS)
        >= gap_ms
}

fn per_second(count: u64, span_ms: u64) -> f64 {
    if span_ms == 0 {
        0.0
    } else {
        count as f64 * 1000.0 / span_ms as f64
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sample {
    at_ms: u64,
    arrivals: Arrivals,
}

/// Surge detector and report scheduler of the reporting VM.
#[derive(Debug, Clone)]
pub struct Scheduler {
    interval_ms: u64,
    surge: SurgeConfig,
    samples: VecDeque<Sample>,
    /// Time and total arrivals of the last report.
    last_report: Option<(u64, u64)>,
    /// `None` until a report carried a measured rate (at start, or right after taking over with
    /// no history): without a baseline there is nothing to call a surge.
    last_reported_rate: Option<f64>,
    last_early_ms: Option<u64>,
    /// The surge in progress, if any: set by a report flagged as a surge (after which a
    /// follow-up needs only [`FOLLOW_UP_FACTOR`]), cleared by a periodic report that is not
    /// one of its reports.
    lasting: Option<Lasting>,
}

/// A surge in progress, after its first report.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Lasting {
    /// The rate the last report before the surge carried: a further early report is due every
    /// window while the recent rate stands out from it (see [`Scheduler::lasting`]).
    base: f64,
    /// Reports it may still add, of [`MAX_LASTING_REPORTS`].
    left: u32,
}

impl Scheduler {
    /// A scheduler with no history.
    pub fn new(config: &Config) -> Self {
        Self {
            interval_ms: config.report_interval_ms,
            surge: config.surge.clone(),
            samples: VecDeque::new(),
            last_report: None,
            last_reported_rate: None,
            last_early_ms: None,
            lasting: None,
        }
    }

    /// Records the arrivals seen at `now_ms`.
    pub fn observe(&mut self, now_ms: u64, arrivals: Arrivals) {
        if self.samples.back().is_some_and(|last| now_ms <= last.at_ms) {
            // Same or earlier instant (clock step back): keep the series monotonic.
            return;
        }
        self.samples.push_back(Sample {
            at_ms: now_ms,
            arrivals,
        });
        // Keep the newest sample at or before the window's start, and everything after it.
        let start = now_ms.saturating_sub(self.surge.window_ms);
        while self.samples.len() > MAX_SAMPLES
            || self.samples.get(1).is_some_and(|next| next.at_ms <= start)
        {
            self.samples.pop_front();
        }
    }

    /// The recent window, once two samples exist: from the newest sample at or before the
    /// window's start (else the oldest) to the newest one.
    pub fn recent(&self) -> Option<Recent> {
        let last = self.samples.back()?;
        let base = self
            .samples
            .front()
            .filter(|base| base.at_ms < last.at_ms)?;
        Some(Recent {
            span_ms: last.at_ms - base.at_ms,
            arrivals: last.arrivals.since(&base.arrivals),
        })
    }

    /// Arrivals per second over the recent window, once known.
    pub fn recent_rate(&self) -> Option<f64> {
        self.recent().map(|r| r.rate())
    }

    /// Whether the recent rate has surged past the rate the last report carried.
    ///
    /// During a surge a rise of [`FOLLOW_UP_FACTOR`] is enough, and it needs no noise margin of
    /// its own over that rate while the surge lasts (it stands out from the rate before the
    /// surge) and has reports left: the first report went out with part of the step in its
    /// window, and the next check's window, which holds more of it, is often within three
    /// standard deviations of that part although far above the calm before (a 10x step at 30
    /// rps, 20 requests in the first report's window and 34 a check later: the margin over 20
    /// asks for 34, and the scaler could act on 34). Held back, the report waited a check
    /// longer, or for the next window of the lasting surge. Counted against
    /// [`MAX_LASTING_REPORTS`], such reports stay few; a rise that clears the margin goes out
    /// regardless, as before.
    fn surging(&self) -> bool {
        let Some(baseline) = self.last_reported_rate else {
            return false;
        };
        if self.lasting.is_none() {
            return self.stands_out(baseline, self.surge.factor);
        }
        let factor = FOLLOW_UP_FACTOR.min(self.surge.factor);
        self.stands_out(baseline, factor)
            || (self.lasts()
                && self
                    .recent_rate()
                    .is_some_and(|rate| rate >= baseline * factor))
    }

    /// Whether a report of a surge that lasts is due: a window after the last early report
    /// (and at least `min_gap_ms` and [`LASTING_MIN_GAP_MS`]), while [`Self::lasts`]. Such a
    /// report adds no news of a higher rate, only more evidence of the same one, which the
    /// scaler needs before it acts on a moderate step: one 200 ms window of a 3x step at 30
    /// rps (18 requests where 6 are usual) is 2.8 standard deviations of its own count, under
    /// the scaler's four.
    fn lasting(&self, now_ms: u64) -> bool {
        let gap = self
            .surge
            .window_ms
            .max(self.surge.min_gap_ms)
            .max(LASTING_MIN_GAP_MS);
        let spaced = self
            .last_early_ms
            .is_some_and(|t| gap_passed(t, now_ms, gap));
        spaced && self.lasts()
    }

    /// Whether the surge an early report announced still lasts, with reports left of
    /// [`MAX_LASTING_REPORTS`]: the recent rate stands out from the rate before the surge (by
    /// the whole factor, [`NOISE_SIGMAS`], `min_rps`).
    fn lasts(&self) -> bool {
        self.lasting.is_some_and(|lasting| {
            lasting.left > 0 && self.stands_out(lasting.base, self.surge.factor)
        })
    }

    /// Whether the recent window's rate is at least `min_rps`, `factor` times `baseline`, and
    /// [`NOISE_SIGMAS`] above it.
    fn stands_out(&self, baseline: f64, factor: f64) -> bool {
        let Some(recent) = self.recent() else {
            return false;
        };
        let rate = recent.rate();
        let seconds = recent.span_ms as f64 / 1000.0;
        let expected = baseline * seconds;
        let excess = (rate - baseline) * seconds;
        rate >= self.surge.min_rps
            && rate >= baseline * factor
            && excess >= NOISE_SIGMAS * expected.max(1.0).sqrt()
    }

    /// Whether a report is due at `now_ms`. `schedule_ms` is the nominal time of the proxy's
    /// last periodic report (from shared data, whichever VM sent it), so a new reporter keeps
    /// the schedule.
    pub fn due(&self, now_ms: u64, schedule_ms: Option<u64>) -> Option<Trigger> {
        let periodic = match schedule_ms {
            None => true,
            Some(at) => now_ms >= at.saturating_add(self.interval_ms),
        };
        let surging = self.surging();
        if periodic {
            // A periodic report falling due while a surge lasts is one of its reports: closing
            // the surge there would end its follow-ups with one window of it told (on the real
            // control plane a 3x step came 0.2 s before a periodic report, and the scaler had
            // to wait for the next one, a second later).
            return Some(if surging || self.lasts() {
                Trigger::PeriodicSurge
            } else {
                Trigger::Periodic
            });
        }
        let gap_ok = self
            .last_early_ms
            .is_none_or(|t| gap_passed(t, now_ms, self.surge.min_gap_ms));
        ((surging && gap_ok) || self.lasting(now_ms)).then_some(Trigger::Surge)
    }

    /// The schedule to store after sending a report triggered by `trigger` at `now_ms`.
    ///
    /// Periodic reports advance the nominal time by exactly one interval, so that reports go
    /// out every interval on average even when it is not a multiple of the check period (a
    /// report always waits for the next check); after a long gap (no reporter for a while) the
    /// schedule restarts from now instead of catching up in a burst. Early reports leave the
    /// periodic schedule alone.
    pub fn next_schedule(&self, now_ms: u64, schedule_ms: Option<u64>, trigger: Trigger) -> u64 {
        match schedule_ms {
            Some(at) if !trigger.is_periodic() => at,
            Some(at) if now_ms < at.saturating_add(self.interval_ms.saturating_mul(2)) => {
                at.saturating_add(self.interval_ms)
            }
            _ => now_ms,
        }
    }

    /// Whether a report is due at `now_ms` when the proxy may hold requests: [`Self::due`], or
    /// else an activation report while `holding`.
    pub fn due_holding(
        &self,
        now_ms: u64,
        schedule_ms: Option<u64>,
        holding: bool,
    ) -> Option<Trigger> {
        self.due(now_ms, schedule_ms)
            .or(holding.then_some(Trigger::Activation))
    }

    /// Whether the answer to a report sent at `sent_ms`, arriving at `now_ms`, should be
    /// followed by the next report at once rather than at the next check: while the proxy
    /// still holds requests (`holding`), and only if the report was out for at least a check
    /// period. The scaler keeps the answer to a holding report until the destination turns warm
    /// or its wait runs out; had the next report waited for the next check, the moment the
    /// destination turned warm could fall in that gap, with no answer waiting to tell the
    /// proxy, and the held requests would stay up to a check period longer. Sending at once
    /// keeps one answer waiting at all times; the check period still bounds the rate (an answer
    /// quicker than that leaves the next report to the checks, as before).
    pub fn follows_answer(&self, sent_ms: u64, now_ms: u64, holding: bool) -> bool {
        holding && now_ms.saturating_sub(sent_ms) >= self.surge.check_period_ms
    }

    /// Records that a report was sent at `now_ms`, after observing the arrivals it carries.
    pub fn sent(&mut self, now_ms: u64, trigger: Trigger) {
        if trigger == Trigger::Activation {
            // Every check while requests are held: a baseline over 100 ms would be noise, and
            // the next periodic report still closes the whole interval.
            return;
        }
        let total = self
            .samples
            .back()
            .map_or(0, |sample| sample.arrivals.total());
        self.lasting = match (trigger.is_surge(), self.lasting) {
            // The surge begins: the rate before it is what it must keep standing out from (a
            // surge is only ever called against a reported rate).
            (true, None) => self.last_reported_rate.map(|base| Lasting {
                base,
                left: MAX_LASTING_REPORTS,
            }),
            // Every further report of it counts against the cap, rising or not.
            (true, Some(lasting)) => Some(Lasting {
                left: lasting.left.saturating_sub(1),
                ..lasting
            }),
            // A periodic report that is not one of the surge's closes it: the next surge is
            // judged against its rate.
            (false, _) => None,
        };
        self.last_reported_rate = if trigger.is_surge() {
            // The rate that triggered the report is what the scaler now acts on.
            self.recent_rate()
        } else {
            // The rate over the interval the report closes (the recent window when this VM
            // has no earlier report, e.g. it just took over).
            self.last_report
                .and_then(|(at, before)| {
                    let span = now_ms.checked_sub(at).filter(|&dt| dt > 0)?;
                    Some(per_second(total.saturating_sub(before), span))
                })
                .or_else(|| self.recent_rate())
        };
        if trigger.is_surge() {
            self.last_early_ms = Some(now_ms);
        }
        self.last_report = Some((now_ms, total));
    }

    /// The rate the last report carried, in requests per second, once known.
    pub fn last_reported_rate(&self) -> Option<f64> {
        self.last_reported_rate
    }
}

#[cfg(test)]
mod tests;

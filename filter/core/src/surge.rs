//! When to send a report: periodically, and early when the arrival rate surges.
//!
//! The reporter samples, every check period, the requests that have *reached* the proxy per
//! route key (completed plus in flight: [`Arrivals`]). Arrivals rather than completions,
//! because a saturated pod completes at its capacity while its queue grows: counted at
//! completion, a 10x step into a pod with 3x headroom looks like a 3x step, late. A report is
//! due when the report interval has passed since the last one (whichever VM sent it), or early
//! when the arrival rate over the recent window surges: at least `min_rps`, at least `factor`
//! times the rate the last report carried, and more above it than noise would be (see
//! [`NOISE_SIGMAS`]). Early reports are at least `min_gap_ms` apart. Every report carries the
//! recent window ([`Recent`]), so the scaler reads the current rate instead of an interval
//! average. Pure: time is an argument.

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
    /// The interval passed while the rate surges: sent on schedule and flagged as a surge, so
    /// that a periodic report falling due at the start of a surge does not hide it.
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
    /// Whether the last report was flagged as a surge (a follow-up needs only
    /// [`FOLLOW_UP_FACTOR`]).
    last_was_surge: bool,
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
            last_was_surge: false,
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

    fn surging(&self) -> bool {
        let (Some(baseline), Some(recent)) = (self.last_reported_rate, self.recent()) else {
            return false;
        };
        let rate = recent.rate();
        let seconds = recent.span_ms as f64 / 1000.0;
        let expected = baseline * seconds;
        let excess = (rate - baseline) * seconds;
        let factor = if self.last_was_surge {
            FOLLOW_UP_FACTOR.min(self.surge.factor)
        } else {
            self.surge.factor
        };
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
            return Some(if surging {
                Trigger::PeriodicSurge
            } else {
                Trigger::Periodic
            });
        }
        let gap_ok = self
            .last_early_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.surge.min_gap_ms);
        (surging && gap_ok).then_some(Trigger::Surge)
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
        self.last_was_surge = trigger.is_surge();
        self.last_report = Some((now_ms, total));
    }

    /// The rate the last report carried, in requests per second, once known.
    pub fn last_reported_rate(&self) -> Option<f64> {
        self.last_reported_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler() -> Scheduler {
        Scheduler::new(&Config::default())
    }

    fn arrivals(total: u64) -> Arrivals {
        Arrivals {
            indexed: vec![total],
            other: 0,
        }
    }

    /// Feeds `rps` for `ms` milliseconds in 100 ms ticks from (`t`, `total`), sending the
    /// reports that fall due; returns the new (t, total) and the triggers seen with their times.
    fn run(
        s: &mut Scheduler,
        schedule: &mut Option<u64>,
        mut t: u64,
        mut total: u64,
        rps: u64,
        ms: u64,
    ) -> (u64, u64, Vec<(u64, Trigger)>) {
        let mut sent = Vec::new();
        let end = t + ms;
        while t < end {
            t += 100;
            total += rps / 10;
            s.observe(t, arrivals(total));
            if let Some(trigger) = s.due(t, *schedule) {
                s.sent(t, trigger);
                *schedule = Some(s.next_schedule(t, *schedule, trigger));
                sent.push((t, trigger));
            }
        }
        (t, total, sent)
    }

    #[test]
    fn an_interval_off_the_check_grid_holds_on_average() {
        let config = Config {
            report_interval_ms: 250,
            surge: SurgeConfig {
                min_rps: 1e9,
                ..SurgeConfig::default()
            },
            ..Config::default()
        };
        let mut s = Scheduler::new(&config);
        let mut schedule = None;
        let (_, _, sent) = run(&mut s, &mut schedule, 0, 0, 100, 10_000);
        // 10 s / 250 ms = 40 reports, although each one waits for a 100 ms check.
        assert!((39..=41).contains(&sent.len()), "{}", sent.len());
    }

    #[test]
    fn after_a_long_gap_the_schedule_restarts_instead_of_catching_up() {
        let s = scheduler();
        assert_eq!(s.next_schedule(1_100, Some(0), Trigger::Periodic), 1_000);
        assert_eq!(s.next_schedule(9_000, Some(0), Trigger::Periodic), 9_000);
        assert_eq!(s.next_schedule(1_500, Some(1_000), Trigger::Surge), 1_000);
        assert_eq!(s.next_schedule(1_500, None, Trigger::Periodic), 1_500);
    }

    #[test]
    fn while_holding_a_report_goes_out_at_every_check_without_moving_the_schedule() {
        let mut s = scheduler();
        let mut schedule = None;
        let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 50, 3_050);
        let baseline = s.last_reported_rate();
        let at = schedule;
        let mut triggers = Vec::new();
        for k in 1..=5 {
            let now = t + 10 * k;
            s.observe(now, arrivals(total));
            let trigger = s.due_holding(now, schedule, true);
            if let Some(trigger) = trigger {
                s.sent(now, trigger);
                schedule = Some(s.next_schedule(now, schedule, trigger));
            }
            triggers.push(trigger);
        }
        assert!(
            triggers.iter().all(|t| *t == Some(Trigger::Activation)),
            "{triggers:?}"
        );
        assert_eq!(schedule, at);
        assert_eq!(s.last_reported_rate(), baseline);
        assert!(!Trigger::Activation.is_surge() && !Trigger::Activation.is_periodic());
        // Not holding: nothing until the interval.
        assert_eq!(s.due_holding(t + 60, schedule, false), None);
        // A periodic report due while holding is the periodic one.
        assert_eq!(
            s.due_holding(t + 1_000, schedule, true),
            Some(Trigger::Periodic)
        );
    }

    #[test]
    fn a_held_answer_is_followed_at_once_and_a_quick_one_waits_for_the_check() {
        let s = scheduler();
        let check = Config::default().surge.check_period_ms;
        // Kept by the scaler for 250 ms, the proxy still holding: the next report goes now.
        assert!(s.follows_answer(1_000, 1_250, true));
        assert!(s.follows_answer(1_000, 1_000 + check, true));
        // Answered within a check period (a scaler that does not keep answers, or one that
        // answered "warm" at once): the checks pace the reports, so they never spin.
        assert!(!s.follows_answer(1_000, 1_000 + check - 1, true));
        assert!(!s.follows_answer(1_000, 1_002, true));
        // Nothing held: nothing follows, however long the answer took.
        assert!(!s.follows_answer(1_000, 1_250, false));
        // A clock stepping back never follows.
        assert!(!s.follows_answer(1_000, 900, true));
    }

    #[test]
    fn first_report_goes_out_at_once() {
        let s = scheduler();
        assert_eq!(s.due(5, None), Some(Trigger::Periodic));
    }

    #[test]
    fn steady_load_sends_one_report_per_interval() {
        let mut s = scheduler();
        let mut last = None;
        let (_, _, sent) = run(&mut s, &mut last, 0, 0, 200, 10_000);
        assert!(
            sent.iter().all(|(_, t)| *t == Trigger::Periodic),
            "{sent:?}"
        );
        assert_eq!(sent.len(), 10, "{sent:?}");
    }

    #[test]
    fn a_tenfold_step_is_reported_within_one_check_period() {
        let mut s = scheduler();
        let mut last = None;
        let (t, total, _) = run(&mut s, &mut last, 0, 0, 50, 3_050);
        let (_, _, sent) = run(&mut s, &mut last, t, total, 500, 500);
        let first = sent.first().copied();
        assert_eq!(first, Some((t + 100, Trigger::Surge)), "{sent:?}");
    }

    #[test]
    fn a_doubling_of_a_busy_proxy_is_a_surge() {
        // 200 -> 400 rps: 40 expected in the window, 80 seen.
        let mut s = scheduler();
        let mut last = None;
        let (t, total, _) = run(&mut s, &mut last, 0, 0, 200, 3_050);
        let (_, _, sent) = run(&mut s, &mut last, t, total, 400, 300);
        assert!(sent.iter().any(|(_, k)| *k == Trigger::Surge), "{sent:?}");
    }

    #[test]
    fn a_doubling_at_a_few_requests_per_second_is_noise_not_a_surge() {
        // 10 -> 20 rps: 2 expected in a 200 ms window, 4 seen: twice the baseline, but only
        // 1.4 sigmas above it.
        let mut s = scheduler();
        let mut last = None;
        let (t, total, _) = run(&mut s, &mut last, 0, 0, 10, 3_050);
        let (_, _, sent) = run(&mut s, &mut last, t, total, 20, 900);
        assert!(
            sent.iter().all(|(_, k)| *k == Trigger::Periodic),
            "{sent:?}"
        );
    }

    #[test]
    fn a_step_crossed_mid_window_is_followed_by_its_full_rate() {
        // 60 -> 600 rps, 40 ms before a check: that check's window reads 60 + 540 * 40 / 200
        // = 168 rps; the next checks see more of the step, and one window later the full 600,
        // each going out early as it rises.
        let mut s = scheduler();
        let mut schedule = None;
        let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 60, 3_050);
        let step_at = t + 60;
        let mut total = total;
        let mut sent = Vec::new();
        let mut now = t;
        for _ in 0..6 {
            now += 100;
            let before = 100u64.min(step_at.saturating_sub(now - 100));
            total += (60 * before + 600 * (100 - before)) / 1000;
            s.observe(now, arrivals(total));
            if let Some(trigger) = s.due(now, schedule) {
                s.sent(now, trigger);
                schedule = Some(s.next_schedule(now, schedule, trigger));
                sent.push((now, trigger, s.last_reported_rate()));
            }
        }
        let early: Vec<_> = sent
            .iter()
            .filter(|(_, k, _)| *k == Trigger::Surge)
            .collect();
        assert!((2..=3).contains(&early.len()), "{sent:?}");
        assert!(early[0].2.is_some_and(|r| r < 300.0), "{sent:?}");
        let last = early[early.len() - 1];
        assert!(last.2.is_some_and(|r| r >= 590.0), "{sent:?}");
        assert!(last.0 - early[0].0 <= 200, "{sent:?}");
    }

    #[test]
    fn a_rise_after_a_periodic_report_needs_the_whole_factor() {
        // 200 -> 280 rps is a rise of 1.4x: a follow-up's size, but no report before it was
        // early.
        let mut s = scheduler();
        let mut schedule = None;
        let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 200, 3_050);
        let (_, _, sent) = run(&mut s, &mut schedule, t, total, 280, 900);
        assert!(
            sent.iter().all(|(_, k)| *k == Trigger::Periodic),
            "{sent:?}"
        );
    }

    #[test]
    fn early_reports_are_rate_limited() {
        let mut config = Config::default();
        config.surge.min_gap_ms = 250;
        let mut s = Scheduler::new(&config);
        let mut last = None;
        let (mut t, mut total, _) = run(&mut s, &mut last, 0, 0, 20, 3_050);
        // Tripling every tick would trigger every tick without the gap.
        let mut rps = 60;
        let mut early = Vec::new();
        for _ in 0..6 {
            let (t2, total2, sent) = run(&mut s, &mut last, t, total, rps, 100);
            early.extend(sent.into_iter().filter(|(_, k)| *k == Trigger::Surge));
            (t, total, rps) = (t2, total2, rps * 3);
        }
        for pair in early.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 250, "{early:?}");
        }
        assert!(!early.is_empty());
    }

    #[test]
    fn low_traffic_noise_below_min_rps_sends_nothing_early() {
        let mut config = Config::default();
        config.surge.min_rps = 50.0;
        let mut s = Scheduler::new(&config);
        let mut last = None;
        let (t, total, _) = run(&mut s, &mut last, 0, 0, 0, 2_050);
        // 0 -> 40 rps is "infinitely" more, but below min_rps (50).
        let (_, _, sent) = run(&mut s, &mut last, t, total, 40, 500);
        assert!(
            sent.iter().all(|(_, k)| *k == Trigger::Periodic),
            "{sent:?}"
        );
    }

    #[test]
    fn traffic_from_zero_above_min_rps_is_a_surge() {
        let mut s = scheduler();
        let mut last = None;
        let (t, total, _) = run(&mut s, &mut last, 0, 0, 0, 2_050);
        let (_, _, sent) = run(&mut s, &mut last, t, total, 100, 300);
        assert_eq!(sent.first().map(|(_, k)| *k), Some(Trigger::Surge));
    }

    #[test]
    fn no_surge_is_called_before_a_rate_was_reported() {
        let mut s = scheduler();
        s.observe(100, arrivals(0));
        s.sent(100, Trigger::Periodic);
        assert_eq!(s.last_reported_rate(), None);
        s.observe(200, arrivals(100));
        assert_eq!(s.due(200, Some(100)), None);
    }

    #[test]
    fn a_surge_when_the_periodic_report_falls_due_is_flagged() {
        let mut s = scheduler();
        let mut schedule = None;
        let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 30, 3_000);
        // The periodic report is due at the next check (t + 100), just as the load steps up.
        let (_, _, sent) = run(&mut s, &mut schedule, t, total, 300, 100);
        assert_eq!(sent, [(t + 100, Trigger::PeriodicSurge)]);
        assert_eq!(schedule, Some(t + 100), "still advances the schedule");
    }

    #[test]
    fn a_report_from_another_vm_keeps_the_schedule() {
        let s = scheduler();
        assert_eq!(s.due(10_500, Some(10_000)), None);
        assert_eq!(s.due(11_000, Some(10_000)), Some(Trigger::Periodic));
    }

    #[test]
    fn recent_rate_needs_two_samples() {
        let mut s = scheduler();
        s.observe(100, arrivals(10));
        assert_eq!(s.recent_rate(), None);
        s.observe(300, arrivals(50));
        assert_eq!(s.recent_rate(), Some(200.0));
    }

    #[test]
    fn the_window_spans_from_the_last_sample_before_its_start() {
        let mut s = scheduler();
        for (t, n) in [(100, 0), (200, 10), (300, 30), (400, 60), (500, 100)] {
            s.observe(t, arrivals(n));
        }
        // Window 200 ms ending at 500: from the sample at 300.
        let recent = s.recent().unwrap();
        assert_eq!(recent.span_ms, 200);
        assert_eq!(recent.arrivals.total(), 70);
        assert_eq!(s.samples.len(), 3, "older samples are dropped");
    }

    #[test]
    fn the_window_is_counted_per_route_and_new_routes_count_from_zero() {
        let mut s = scheduler();
        s.observe(
            100,
            Arrivals {
                indexed: vec![5],
                other: 1,
            },
        );
        s.observe(
            300,
            Arrivals {
                indexed: vec![9, 4],
                other: 3,
            },
        );
        let recent = s.recent().unwrap();
        assert_eq!(recent.arrivals.indexed, [4, 4]);
        assert_eq!(recent.arrivals.other, 2);
    }

    #[test]
    fn a_count_read_below_its_base_counts_as_nothing() {
        let now = Arrivals {
            indexed: vec![7, 2],
            other: 0,
        };
        let base = Arrivals {
            indexed: vec![9, 1],
            other: 5,
        };
        assert_eq!(
            now.since(&base),
            Arrivals {
                indexed: vec![0, 1],
                other: 0
            }
        );
    }

    #[test]
    fn a_clock_step_back_is_ignored() {
        let mut s = scheduler();
        s.observe(1_000, arrivals(10));
        s.observe(900, arrivals(20));
        s.observe(1_100, arrivals(30));
        assert_eq!(s.recent_rate(), Some(200.0));
    }

    #[test]
    fn samples_stay_bounded_whatever_the_window() {
        let mut config = Config::default();
        config.surge.check_period_ms = 10;
        config.surge.window_ms = 640;
        let mut s = Scheduler::new(&config);
        for k in 0..1_000 {
            s.observe(k * 10, arrivals(k));
        }
        assert!(s.samples.len() <= MAX_SAMPLES);
        assert_eq!(s.recent().map(|r| r.span_ms), Some(640));
    }
}

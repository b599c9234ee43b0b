//! When to send a report: periodically, and early when the request rate surges.
//!
//! The reporter samples the proxy's total request count every check period. A report is due
//! when the report interval has passed since the last one (whichever VM sent it), or early when
//! the rate over the recent window is at least `min_rps` and exceeds the rate carried by the last
//! report times `factor`; early reports are at least `min_gap_ms` apart. Pure: time is an
//! argument.

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

/// Most samples kept; at a 10 ms check period this still covers more than the longest window
/// worth measuring early reports against.
const MAX_SAMPLES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at_ms: u64,
    total: u64,
}

/// Surge detector and report scheduler of the reporting VM.
#[derive(Debug, Clone)]
pub struct Scheduler {
    interval_ms: u64,
    surge: SurgeConfig,
    samples: VecDeque<Sample>,
    last_report: Option<Sample>,
    /// `None` until a report carried a measured rate (at start, or right after taking over with
    /// no history): without a baseline there is nothing to call a surge.
    last_reported_rate: Option<f64>,
    last_early_ms: Option<u64>,
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
        }
    }

    /// Records the total request count seen at `now_ms`.
    pub fn observe(&mut self, now_ms: u64, total: u64) {
        if self.samples.back().is_some_and(|last| now_ms <= last.at_ms) {
            // Same or earlier instant (clock step back): keep the series monotonic.
            return;
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_ms: now_ms,
            total,
        });
        let horizon = now_ms.saturating_sub(self.surge.window_ms.saturating_mul(4));
        while self.samples.len() > 2 && self.samples.front().is_some_and(|s| s.at_ms < horizon) {
            self.samples.pop_front();
        }
    }

    /// Requests per second over the recent window, once enough history exists.
    pub fn recent_rate(&self) -> Option<f64> {
        let last = self.samples.back()?;
        let start = last.at_ms.saturating_sub(self.surge.window_ms);
        // The newest sample at or before the window's start; else the oldest one we have.
        let base = self
            .samples
            .iter()
            .rev()
            .find(|s| s.at_ms <= start)
            .or_else(|| self.samples.front())?;
        rate(*base, *last)
    }

    /// Whether a report is due at `now_ms`. `schedule_ms` is the nominal time of the proxy's
    /// last periodic report (from shared data, whichever VM sent it), so a new reporter keeps
    /// the schedule.
    pub fn due(&self, now_ms: u64, schedule_ms: Option<u64>) -> Option<Trigger> {
        let periodic = match schedule_ms {
            None => true,
            Some(at) => now_ms >= at.saturating_add(self.interval_ms),
        };
        let surging = match (self.last_reported_rate, self.recent_rate()) {
            (Some(baseline), Some(recent)) => {
                recent >= self.surge.min_rps && recent > baseline * self.surge.factor
            }
            _ => false,
        };
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

    /// Records that a report was sent at `now_ms` with `total` requests.
    pub fn sent(&mut self, now_ms: u64, total: u64, trigger: Trigger) {
        let now = Sample {
            at_ms: now_ms,
            total,
        };
        self.last_reported_rate = if trigger.is_surge() {
            // The rate that triggered the report is what the scaler now acts on.
            self.recent_rate()
        } else {
            // The rate over the interval the report closes (the recent window when this VM
            // has no earlier report, e.g. it just took over).
            self.last_report
                .and_then(|prev| rate(prev, now))
                .or_else(|| self.recent_rate())
        };
        if trigger.is_surge() {
            self.last_early_ms = Some(now_ms);
        }
        self.last_report = Some(now);
    }

    /// The rate the last report carried, in requests per second, once known.
    pub fn last_reported_rate(&self) -> Option<f64> {
        self.last_reported_rate
    }
}

fn rate(from: Sample, to: Sample) -> Option<f64> {
    let dt = to.at_ms.checked_sub(from.at_ms).filter(|&dt| dt > 0)?;
    let dn = to.total.saturating_sub(from.total);
    Some(dn as f64 * 1000.0 / dt as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler() -> Scheduler {
        Scheduler::new(&Config::default())
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
            s.observe(t, total);
            if let Some(trigger) = s.due(t, *schedule) {
                s.sent(t, total, trigger);
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
    fn early_reports_are_rate_limited() {
        let mut s = scheduler();
        let mut last = None;
        let (mut t, mut total, _) = run(&mut s, &mut last, 0, 0, 20, 3_050);
        // Doubling every tick would trigger every tick without the gap.
        let mut rps = 40;
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
        s.observe(100, 0);
        s.sent(100, 0, Trigger::Periodic);
        assert_eq!(s.last_reported_rate(), None);
        s.observe(200, 100);
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
        s.observe(100, 10);
        assert_eq!(s.recent_rate(), None);
        s.observe(300, 50);
        assert_eq!(s.recent_rate(), Some(200.0));
    }

    #[test]
    fn a_clock_step_back_is_ignored() {
        let mut s = scheduler();
        s.observe(1_000, 10);
        s.observe(900, 20);
        s.observe(1_100, 30);
        assert_eq!(s.recent_rate(), Some(200.0));
    }
}

//! Prometheus as the classic chain uses it: a cumulative counter scraped at a fixed interval and
//! queried either with `rate(...[1m])` or, in the tutorial's variant, as the raw counter.
//!
//! `rate()` is computed from the scraped samples the way Prometheus' `extrapolatedRate` does:
//! the increase between the first and last sample in the range (counter resets added back),
//! extrapolated towards the range's edges when the samples stop short of them, and divided by
//! the range. Approximations, stated: one series (the sum over pods is modelled as one counter, as
//! the ingress gateway's `reporter="source"` series is; a new pod's own series, which needs two
//! samples before `rate()` sees it, would only slow the chain further); the range is left-open
//! `(t - range, t]` as in Prometheus 3 (2.x includes the left edge: with random phases this
//! changes nothing measurable); no ingestion or rule-evaluation delay.

use std::collections::VecDeque;

/// Prometheus' default `--query.lookback-delta` (Prometheus docs, querying basics: "5 minutes"):
/// how far back an instant query looks for the latest sample. Also bounds what we keep.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// A counter as Prometheus holds it: the samples of one series, scraped every `interval_ms` at a
/// fixed phase.
#[derive(Debug, Clone)]
pub struct ScrapedCounter {
    interval_ms: i64,
    phase_ms: i64,
    samples: VecDeque<(i64, f64)>,
}

impl ScrapedCounter {
    /// A series scraped at every `t` with `t ≡ phase_ms (mod interval_ms)`.
    pub fn new(interval_ms: i64, phase_ms: i64) -> Self {
        Self {
            interval_ms: interval_ms.max(1),
            phase_ms,
            samples: VecDeque::new(),
        }
    }

    /// Offers the counter's value at `now_ms`; it is stored only when a scrape falls at `now_ms`.
    pub fn observe(&mut self, now_ms: i64, value: f64) {
        if (now_ms - self.phase_ms).rem_euclid(self.interval_ms) != 0 {
            return;
        }
        self.samples.push_back((now_ms, value));
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| t <= now_ms - LOOKBACK_MS)
        {
            self.samples.pop_front();
        }
    }

    /// `rate(counter[range])` evaluated at `now_ms`, per second; `None` with fewer than two
    /// samples in the range (Prometheus returns no value then).
    pub fn rate(&self, now_ms: i64, range_ms: i64) -> Option<f64> {
        let start = now_ms - range_ms;
        let in_range: Vec<(i64, f64)> = self
            .samples
            .iter()
            .copied()
            .filter(|&(t, _)| t > start && t <= now_ms)
            .collect();
        extrapolated_rate(&in_range, start, now_ms)
    }

    /// The instant query `counter` at `now_ms`: the latest sample within the lookback.
    pub fn instant(&self, now_ms: i64) -> Option<f64> {
        self.samples
            .iter()
            .rev()
            .find(|&&(t, _)| t <= now_ms && t > now_ms - LOOKBACK_MS)
            .map(|&(_, v)| v)
    }
}

/// Prometheus' `rate()` over `samples` (time-ordered, inside `(range_start, range_end]`, times
/// in milliseconds), per second.
pub fn extrapolated_rate(samples: &[(i64, f64)], range_start: i64, range_end: i64) -> Option<f64> {
    let (&(first_t, first_v), &(last_t, last_v)) = (samples.first()?, samples.last()?);
    if samples.len() < 2 || last_t <= first_t || range_end <= range_start {
        return None;
    }
    // A counter that goes down was reset: what it had counted before still happened.
    let mut increase = last_v - first_v;
    for pair in samples.windows(2) {
        if pair[1].1 < pair[0].1 {
            increase += pair[0].1;
        }
    }
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let average_interval = sampled / (samples.len() - 1) as f64;
    // Extrapolate to an edge only if the gap to it is under 1.1 average intervals; otherwise
    // assume the series starts/ends half an interval beyond its samples
    // (Prometheus promql/functions.go, extrapolatedRate).
    let threshold = average_interval * 1.1;
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last_t) as f64 / 1000.0;
    if to_start >= threshold {
        to_start = average_interval / 2.0;
    }
    // A counter cannot be extrapolated below zero (same source).
    if increase > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / increase);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = average_interval / 2.0;
    }
    let factor = (sampled + to_start + to_end) / sampled;
    let range_s = (range_end - range_start) as f64 / 1000.0;
    Some(increase * factor / range_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape_constant_rate(
        rate: f64,
        interval_ms: i64,
        phase_ms: i64,
        until_ms: i64,
    ) -> ScrapedCounter {
        let mut c = ScrapedCounter::new(interval_ms, phase_ms);
        let mut t = 0;
        while t <= until_ms {
            c.observe(t, 1_000.0 + rate * t as f64 / 1000.0);
            t += 100;
        }
        c
    }

    #[test]
    fn rate_of_a_steady_counter_is_its_rate_at_any_phase() {
        for phase in [0, 100, 7_300, 14_900] {
            let c = scrape_constant_rate(60.0, 15_000, phase, 300_000);
            for now in [240_000, 250_100, 299_900] {
                let r = c.rate(now, 60_000);
                assert!(
                    r.is_some_and(|r| (r - 60.0).abs() < 1e-9),
                    "{phase} {now} {r:?}"
                );
            }
        }
    }

    #[test]
    fn rate_needs_two_samples_in_the_range() {
        let c = scrape_constant_rate(60.0, 15_000, 0, 20_000);
        assert!(c.rate(14_900, 60_000).is_none(), "only the sample at 0");
        assert!(c.rate(15_000, 60_000).is_some());
        let empty = ScrapedCounter::new(15_000, 0);
        assert!(empty.rate(1_000, 60_000).is_none());
        assert!(empty.instant(1_000).is_none());
    }

    #[test]
    fn rate_is_not_extrapolated_below_zero_for_a_new_counter() {
        // A counter born at 0 at t=30 s growing at 10/s, scraped at 30, 45, 60 s: over
        // (0, 60] the increase is 300 and it cannot be extrapolated to before its birth.
        let samples = [(30_000, 0.0), (45_000, 150.0), (60_000, 300.0)];
        let r = extrapolated_rate(&samples, 0, 60_000);
        assert!(r.is_some_and(|r| (r - 5.0).abs() < 1e-9), "{r:?}");
    }

    #[test]
    fn counter_resets_are_added_back() {
        let samples = [
            (15_000, 100.0),
            (30_000, 250.0),
            (45_000, 50.0),
            (60_000, 200.0),
        ];
        // Increase: 150 + 50 (after reset, the 250 counted before it is added back) + 150.
        let r = extrapolated_rate(&samples, 0, 60_000);
        let increase: f64 = 150.0 + 50.0 + 150.0;
        // Extrapolated by 15 s at the start (gap 15 s < 1.1 x 15 s), but not below zero: to_zero
        // = 45 x 100 / 350 = 12.86 s.
        let expected = increase * (45.0 + 45.0 * 100.0 / 350.0) / 45.0 / 60.0;
        assert!(
            r.is_some_and(|r| (r - expected).abs() < 1e-9),
            "{r:?} {expected}"
        );
    }

    #[test]
    fn instant_query_returns_the_latest_sample_within_the_lookback() {
        let mut c = ScrapedCounter::new(15_000, 0);
        c.observe(0, 5.0);
        c.observe(15_000, 9.0);
        assert_eq!(c.instant(20_000), Some(9.0));
        assert_eq!(c.instant(14_000), Some(5.0));
        assert_eq!(c.instant(15_000 + LOOKBACK_MS), None);
    }
}

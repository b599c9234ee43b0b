//! The ring of [`BUCKET_MS`] buckets behind a target's stable and panic averages. Pure.
//!
//! A report's traffic happened over its interval, not at the moment it arrived, so it is
//! spread over the buckets that interval covers, in proportion to their overlap. Placed whole
//! at its arrival, a report that straddled a window's start counted a whole interval from
//! before the window inside it: on the real control plane's 10x step the one pod that had
//! carried the whole load reported a second of it just after the panic window's start, and
//! the 6 s average read 317-330 rps where 300 arrived (one interval of a dominant source is a
//! sixth of that window).

use super::BUCKET_MS;
use crate::decision::Millis;

/// A report's traffic over its interval; a bucket holds the shares of its time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Traffic {
    /// Requests completed.
    pub(super) requests: u64,
    /// Their summed durations.
    pub(super) busy_us: u64,
    /// Change of the in-flight gauge since the previous report (in a bucket, summed over the
    /// sources: with the completions, the arrivals).
    pub(super) queue_change: i64,
}

/// Sums over a span; the bucket at the span's start counts in proportion to its overlap.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Totals {
    /// Requests completed.
    pub(super) requests: f64,
    /// Their summed durations.
    pub(super) busy_us: f64,
    /// Growth of the in-flight gauges.
    pub(super) queue_change: f64,
}

impl Totals {
    /// Requests that arrived: completions plus the growth of the queues. A queue that drains
    /// completes more than arrives (its backlog is served once; it is not load), and a
    /// saturated pod completes less.
    pub(super) fn arrivals(self) -> f64 {
        (self.requests + self.queue_change).max(0.0)
    }

    /// These less `other` (a sub-span of the same ring's sum).
    pub(super) fn minus(self, other: Totals) -> Totals {
        Totals {
            requests: self.requests - other.requests,
            busy_us: self.busy_us - other.busy_us,
            queue_change: self.queue_change - other.queue_change,
        }
    }

    /// These and `other`, added.
    pub(super) fn plus(self, other: Totals) -> Totals {
        Totals {
            requests: self.requests + other.requests,
            busy_us: self.busy_us + other.busy_us,
            queue_change: self.queue_change + other.queue_change,
        }
    }
}

/// Buckets of [`BUCKET_MS`], indexed by absolute time; the oldest are overwritten.
#[derive(Debug)]
pub(super) struct Ring {
    buckets: Vec<Traffic>,
    /// Absolute index (`time / BUCKET_MS`) of the newest bucket written.
    newest: u64,
}

impl Ring {
    /// A ring of `len` buckets (at least one).
    pub(super) fn new(len: usize) -> Self {
        Self {
            buckets: vec![Traffic::default(); len.max(1)],
            newest: 0,
        }
    }

    /// Adds `traffic` that happened over `[now - interval_ms, now]`, spread over the buckets
    /// of that span by overlap; the share of time older than the ring is dropped (it is
    /// older than any window). Integer shares are rounded cumulatively, so the shares of the
    /// buckets kept add up exactly.
    pub(super) fn add(&mut self, now: Millis, interval_ms: Millis, traffic: Traffic) {
        self.advance(now);
        let len = self.buckets.len() as u64;
        let oldest_kept = self.newest.saturating_sub(len - 1);
        let start = now.saturating_sub(interval_ms);
        let span = now - start;
        if span == 0 {
            if now / BUCKET_MS >= oldest_kept {
                let bucket = &mut self.buckets[((now / BUCKET_MS) % len) as usize];
                add_share(bucket, traffic, 1, 1, 0);
            }
            return;
        }
        // The time before the oldest bucket kept is skipped, not walked: an interval can be
        // long (a proxy's first report after a pause), the ring is not.
        let first = (start / BUCKET_MS).max(oldest_kept);
        let mut done = (first * BUCKET_MS).saturating_sub(start).min(span);
        for index in first..=now.saturating_sub(1) / BUCKET_MS {
            let from = (index * BUCKET_MS).max(start);
            let to = ((index + 1) * BUCKET_MS).min(now);
            let before = done;
            done += to.saturating_sub(from);
            let bucket = &mut self.buckets[(index % len) as usize];
            add_share(bucket, traffic, span, done, before);
        }
    }

    /// Sums over `[now - window_ms, now]`.
    pub(super) fn sum(&self, now: Millis, window_ms: Millis) -> Totals {
        let len = self.buckets.len() as u64;
        let start = now.saturating_sub(window_ms);
        let oldest_kept = self.newest.saturating_sub(len - 1);
        let mut total = Totals::default();
        for index in (start / BUCKET_MS).max(oldest_kept)..=(now / BUCKET_MS).min(self.newest) {
            let bucket = &self.buckets[(index % len) as usize];
            let begins = index * BUCKET_MS;
            // Only the span's first bucket can begin before it; a bucket's traffic is taken
            // as even over its time.
            let weight = if begins >= start {
                1.0
            } else {
                (begins + BUCKET_MS - start) as f64 / BUCKET_MS as f64
            };
            total.requests += weight * bucket.requests as f64;
            total.busy_us += weight * bucket.busy_us as f64;
            total.queue_change += weight * bucket.queue_change as f64;
        }
        total
    }

    fn advance(&mut self, now: Millis) {
        let index = now / BUCKET_MS;
        if index <= self.newest {
            return;
        }
        let len = self.buckets.len() as u64;
        let from = self.newest.max(index.saturating_sub(len)) + 1;
        for i in from..=index {
            self.buckets[(i % len) as usize] = Traffic::default();
        }
        self.newest = index;
    }
}

/// Adds to `bucket` the share of `traffic` between the cumulative fractions `before / span`
/// and `done / span`.
fn add_share(bucket: &mut Traffic, traffic: Traffic, span: Millis, done: Millis, before: Millis) {
    let cut = |total: i128, upto: Millis| total * i128::from(upto) / i128::from(span);
    let share = |total: i128| cut(total, done) - cut(total, before);
    let unsigned = |total: u64| u64::try_from(share(i128::from(total))).unwrap_or(0);
    bucket.requests = bucket.requests.saturating_add(unsigned(traffic.requests));
    bucket.busy_us = bucket.busy_us.saturating_add(unsigned(traffic.busy_us));
    let change = i64::try_from(share(i128::from(traffic.queue_change))).unwrap_or(0);
    bucket.queue_change = bucket.queue_change.saturating_add(change);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(requests: u64) -> Traffic {
        Traffic {
            requests,
            busy_us: 0,
            queue_change: 0,
        }
    }

    #[test]
    fn a_report_is_spread_over_the_time_its_interval_covers() {
        let mut ring = Ring::new(600);
        ring.add(10_000, 1_000, traffic(100));
        // The whole interval, then the half of it after 9.5 s, then none of it after 10 s.
        assert_eq!(ring.sum(10_000, 6_000).requests, 100.0);
        assert_eq!(ring.sum(10_000, 500).requests, 50.0);
        assert_eq!(ring.sum(16_000, 6_000).requests, 0.0);
        // A window starting inside a bucket counts the part of the bucket it covers.
        assert!((ring.sum(10_000, 450).requests - 45.0).abs() < 1e-9);
    }

    #[test]
    fn shares_add_up_exactly_and_keep_their_sign() {
        let mut ring = Ring::new(600);
        let odd = Traffic {
            requests: 7,
            busy_us: 1_000_003,
            queue_change: -13,
        };
        ring.add(10_050, 1_030, odd);
        let total = ring.sum(10_050, 60_000);
        assert_eq!(total.requests, 7.0);
        assert_eq!(total.busy_us, 1_000_003.0);
        assert_eq!(total.queue_change, -13.0);
        assert_eq!(total.arrivals(), 0.0);
    }

    #[test]
    fn time_older_than_the_ring_is_dropped_not_piled_into_its_oldest_bucket() {
        // A second's buckets, and the one `now` falls in.
        let mut ring = Ring::new(11);
        ring.add(5_000, 0, traffic(1));
        // A report covering 4 s keeps the last second's share.
        ring.add(5_000, 4_000, traffic(400));
        assert_eq!(ring.sum(5_000, 1_000).requests, 101.0);
        // A late report about time the ring no longer holds changes nothing.
        ring.add(2_000, 1_000, traffic(50));
        assert_eq!(ring.sum(5_000, 1_000).requests, 101.0);
        // An interval of days costs the ring's length, and keeps its last second's share.
        ring.add(6_000_000_000, 3_000_000_000, traffic(3_000_000_000));
        assert_eq!(ring.sum(6_000_000_000, 1_000).requests, 1_000.0);
    }

    #[test]
    fn a_report_without_an_interval_lands_in_its_own_bucket() {
        let mut ring = Ring::new(600);
        ring.add(10_050, 0, traffic(5));
        assert_eq!(ring.sum(10_050, 100).requests, 5.0);
        assert_eq!(ring.sum(9_999, 100).requests, 0.0);
    }
}

//! A source's rate during a rise: the arrivals since the report that first showed it.
//!
//! One recent window (200 ms) is a noisy reading of a rate that just rose. A proxy whose event
//! loop stalls (its CPU taken by pods starting beside it, or throttled by its limit in 100 ms
//! periods) takes the requests that waited in its socket at once, and the window after the
//! stall counts them: on the real control plane windows read 1.7-2.3x the offered rate in the
//! first second of a 10x step, while the arrivals over that second were exact. Sized on such
//! a window, a scale-up buys replicas that the scale-down window then keeps. The span since the
//! rise began holds the stall and the catch-up alike, and grows with every report.
//!
//! ```text
//!  no rise:   reading >= 2x the last one          -> a rise starts now; the reading stands
//!             (a source's first reading has no last one: not a rise)
//!  in a rise: span since it < the reading's span  -> the reading stands (too short yet)
//!             reading >= 3x the rise's rate       -> a further rise: starts anew
//!             otherwise                           -> arrivals since it began / its span
//!  a rise ends after `longest_ms`, or when a pod joins the traffic after it began (the span
//!  would hold the joiner's share: see the module docs of `window`)
//! ```

use super::evidence::Evidence;
use crate::decision::Millis;

/// How much above the rise's own rate a reading must be to start a rise anew. Windows after a
/// stall read up to 2.3x the rate on the real control plane; a further rise smaller than this
/// shows in the rise's rate as it lasts, and in the panic average.
pub(super) const RISE_AGAIN: f64 = 3.0;

/// A rise in progress: since when, and the arrivals counted since then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rise {
    since: Millis,
    count: f64,
}

impl Rise {
    /// Whether it began before `now` (rather than at the report read now).
    pub(super) fn began_before(&self, now: Millis) -> bool {
        self.since < now
    }

    /// A rise beginning at `now`: what arrives from then on counts.
    fn starting(now: Millis) -> Self {
        Self {
            since: now,
            count: 0.0,
        }
    }
}

/// What one report of a source gives.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reading {
    /// The report's own rate: its recent window, or the interval's arrivals without one.
    pub(super) measured: Evidence,
    /// Arrivals since the source's previous report (`None` for a baseline).
    pub(super) interval: Option<Evidence>,
    /// The rate the source's previous report read as; `None` when no report of it has been
    /// read yet (a new source, or every source at a replica that just started).
    pub(super) previous_rate: Option<f64>,
}

/// The rate a report reads as, and the rise it leaves. `last_join` is when a source last
/// joined the target's traffic; a rise older than `longest_ms` ends (the panic average covers
/// that span).
pub(super) fn read(
    rise: Option<Rise>,
    reading: Reading,
    now: Millis,
    last_join: Millis,
    longest_ms: Millis,
) -> (Evidence, Option<Rise>) {
    let measured = reading.measured;
    let ongoing =
        rise.filter(|r| r.since >= last_join && now.saturating_sub(r.since) <= longest_ms);
    let Some(mut rise) = ongoing else {
        // A first reading rose from nothing known: were it a rise, the source's next 6 s
        // would read as the average since it, and a step within them (up to 3x) would be
        // diluted by the calm before it. A replica that starts (a rollout) or takes a
        // target over sees every source for the first time.
        let rose = measured.count > 0.0
            && reading
                .previous_rate
                .is_some_and(|previous| measured.rate() >= 2.0 * previous);
        return (measured, rose.then(|| Rise::starting(now)));
    };
    let Some(interval) = reading.interval else {
        // A baseline: the proxy restarted, its arrivals since the rise are unknown.
        return (measured, None);
    };
    rise.count += interval.count;
    let since = Evidence {
        count: rise.count,
        span_ms: now.saturating_sub(rise.since),
    };
    if since.span_ms < measured.span_ms {
        return (measured, Some(rise));
    }
    if measured.rate() >= RISE_AGAIN * since.rate() {
        return (measured, Some(Rise::starting(now)));
    }
    (since, Some(rise))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(count: f64, span_ms: Millis) -> Evidence {
        Evidence { count, span_ms }
    }

    fn rise(since: Millis, count: f64) -> Option<Rise> {
        Some(Rise { since, count })
    }

    fn reading(window: f64, interval: (f64, Millis), previous_rate: f64) -> Reading {
        Reading {
            measured: evidence(window, 200),
            interval: Some(evidence(interval.0, interval.1)),
            previous_rate: Some(previous_rate),
        }
    }

    #[test]
    fn a_doubling_starts_a_rise_and_its_reading_stands() {
        let (read_as, left) = read(None, reading(25.0, (40.0, 700), 30.0), 1_000, 0, 6_000);
        assert_eq!(read_as, evidence(25.0, 200));
        assert_eq!(left, rise(1_000, 0.0));
        // Less than twice the last reading: no rise.
        let (_, left) = read(None, reading(11.0, (50.0, 1_000), 30.0), 1_000, 0, 6_000);
        assert_eq!(left, None);
    }

    #[test]
    fn a_first_reading_is_not_a_rise_but_one_from_idle_is() {
        let first = Reading {
            previous_rate: None,
            ..reading(10.0, (50.0, 1_000), 0.0)
        };
        assert_eq!(
            read(None, first, 1_000, 0, 6_000),
            (evidence(10.0, 200), None)
        );
        let (_, left) = read(None, reading(10.0, (50.0, 1_000), 0.0), 1_000, 0, 6_000);
        assert_eq!(left, rise(1_000, 0.0));
    }

    #[test]
    fn a_rise_reads_its_arrivals_once_it_spans_a_window() {
        // 100 ms in: too short, the window stands.
        let (read_as, left) = read(
            rise(1_000, 0.0),
            reading(52.0, (39.0, 100), 125.0),
            1_100,
            0,
            6_000,
        );
        assert_eq!(read_as, evidence(52.0, 200));
        // 400 ms in, after a window of twice the rate: the 120 arrivals of those 400 ms.
        let (read_as, _) = read(left, reading(120.0, (81.0, 300), 260.0), 1_400, 0, 6_000);
        assert_eq!(read_as, evidence(120.0, 400));
    }

    #[test]
    fn a_rise_ends_at_a_join_after_it_began_and_when_it_is_old() {
        let begun = rise(1_000, 100.0);
        let joined = read(
            begun,
            reading(20.0, (60.0, 1_000), 300.0),
            2_000,
            1_500,
            6_000,
        );
        assert_eq!(joined, (evidence(20.0, 200), None));
        let (_, left) = read(begun, reading(60.0, (300.0, 1_000), 300.0), 8_000, 0, 6_000);
        assert_eq!(left, None);
    }

    #[test]
    fn three_times_the_rise_starts_it_anew() {
        // 300 arrivals over 1 s, then a window at 1000 rps.
        let again = read(
            rise(1_000, 200.0),
            reading(200.0, (100.0, 100), 300.0),
            2_000,
            0,
            6_000,
        );
        assert_eq!(again, (evidence(200.0, 200), rise(2_000, 0.0)));
    }
}

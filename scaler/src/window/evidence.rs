//! A rate's evidence: requests counted over a span, and a source's newest intervals kept so
//! that its evidence spans a second whatever its report period. Pure.

use crate::decision::Millis;

/// A rate's evidence: requests counted over a span. Arrivals are close to a Poisson process
/// over short spans, so the rate's variance is about `count / span^2`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Evidence {
    pub(super) count: f64,
    pub(super) span_ms: Millis,
}

impl Evidence {
    pub(super) fn rate(self) -> f64 {
        if self.span_ms == 0 {
            0.0
        } else {
            self.count * 1000.0 / self.span_ms as f64
        }
    }

    pub(super) fn variance(self) -> f64 {
        if self.span_ms == 0 {
            0.0
        } else {
            let seconds = self.span_ms as f64 / 1000.0;
            self.count / (seconds * seconds)
        }
    }
}

/// How many of a source's newest intervals are kept: a second's worth at a report period of
/// 125 ms or more (the filter's default is 1000 ms).
const KEPT: usize = 8;

/// The span a source's evidence reaches back to, when its intervals are shorter: a step of
/// half again the rate stands four standard deviations clear over a second at a few hundred
/// requests per second, but not over one 250 ms interval. Without this, a proxy that reports
/// more often than the default would see its moderate steps noticed later, not sooner.
pub(super) const SPAN_MS: Millis = 1000;

/// A source's newest intervals' arrivals, newest last.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Recent {
    intervals: [Evidence; KEPT],
    /// Where the next interval goes.
    next: usize,
}

impl Recent {
    pub(super) fn push(&mut self, interval: Evidence) {
        self.intervals[self.next] = interval;
        self.next = (self.next + 1) % KEPT;
    }

    /// The newest interval (empty before the first).
    pub(super) fn last(&self) -> Evidence {
        self.intervals[(self.next + KEPT - 1) % KEPT]
    }

    /// The newest intervals summed back until they span `span_ms`, or all that are kept.
    pub(super) fn over(&self, span_ms: Millis) -> Evidence {
        let mut sum = Evidence::default();
        for back in 1..=KEPT {
            let interval = self.intervals[(self.next + KEPT - back) % KEPT];
            if interval.span_ms == 0 {
                break;
            }
            sum.count += interval.count;
            sum.span_ms += interval.span_ms;
            if sum.span_ms >= span_ms {
                break;
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(count: f64, span_ms: Millis) -> Evidence {
        Evidence { count, span_ms }
    }

    #[test]
    fn the_newest_intervals_are_summed_back_to_a_second() {
        let mut recent = Recent::default();
        assert_eq!(recent.over(SPAN_MS), Evidence::default());
        assert_eq!(recent.last(), Evidence::default());
        recent.push(evidence(5.0, 1_000));
        for count in [10.0, 20.0, 30.0, 40.0, 50.0] {
            recent.push(evidence(count, 250));
        }
        assert_eq!(recent.over(SPAN_MS), evidence(140.0, 1_000));
        assert_eq!(recent.last(), evidence(50.0, 250));
        // One long interval covers the second by itself.
        recent.push(evidence(70.0, 1_200));
        assert_eq!(recent.over(SPAN_MS), evidence(70.0, 1_200));
    }

    #[test]
    fn only_the_kept_intervals_count() {
        let mut recent = Recent::default();
        for _ in 0..KEPT + 3 {
            recent.push(evidence(1.0, 50));
        }
        assert_eq!(
            recent.over(SPAN_MS),
            evidence(KEPT as f64, 50 * KEPT as Millis)
        );
    }
}

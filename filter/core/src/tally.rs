//! Counts a VM has not yet added to the process-wide host metrics.
//!
//! Adding to an Envoy stat is a host call; doing four of them per request cost more than the
//! rest of the filter together. Each VM therefore tallies per route key in its own memory and
//! flushes the deltas at most every [`FLUSH_PERIOD_MS`] (checked when a request completes) and
//! on every tick, so the reporter sees counts at most one flush period old under load and one
//! check period old when idle.

/// Longest a VM under load keeps counts to itself.
pub const FLUSH_PERIOD_MS: u64 = 10;

/// Unflushed counts of one route key in one VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    /// Completed requests.
    pub requests: u64,
    /// Completed with an error.
    pub errors: u64,
    /// Sum of durations, in microseconds.
    pub duration_us: u64,
    /// Started minus ended (negative when more ended than started since the last flush).
    pub inflight: i64,
}

impl Delta {
    /// A request started (and raised the in-flight count).
    pub fn start(&mut self) {
        self.inflight = self.inflight.saturating_add(1);
    }

    /// A request that raised the in-flight count ended.
    pub fn end(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// A request completed.
    pub fn complete(&mut self, error: bool, duration_us: u64) {
        self.requests = self.requests.saturating_add(1);
        self.errors = self.errors.saturating_add(u64::from(error));
        self.duration_us = self.duration_us.saturating_add(duration_us);
    }

    /// Takes the counts, leaving zero; `None` when there is nothing to flush.
    pub fn take(&mut self) -> Option<Self> {
        if *self == Self::default() {
            None
        } else {
            Some(std::mem::take(self))
        }
    }
}

/// Decides when a VM flushes on the request path.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushClock {
    last_ms: u64,
}

impl FlushClock {
    /// True (and restarts the period) when the period has passed since the last flush, or the
    /// clock went backwards.
    pub fn due(&mut self, now_ms: u64) -> bool {
        if now_ms >= self.last_ms.saturating_add(FLUSH_PERIOD_MS) || now_ms < self.last_ms {
            self.last_ms = now_ms;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_adds_up_and_is_taken_once() {
        let mut d = Delta::default();
        d.start();
        d.start();
        d.end();
        d.complete(true, 5);
        d.complete(false, 7);
        assert_eq!(
            d.take(),
            Some(Delta {
                requests: 2,
                errors: 1,
                duration_us: 12,
                inflight: 1
            })
        );
        assert_eq!(d.take(), None);
    }

    #[test]
    fn an_end_without_a_start_in_the_same_period_is_negative() {
        let mut d = Delta::default();
        d.end();
        assert_eq!(d.take().map(|d| d.inflight), Some(-1));
    }

    #[test]
    fn flushes_at_most_once_per_period() {
        let mut clock = FlushClock::default();
        assert!(clock.due(1_000));
        assert!(!clock.due(1_005));
        assert!(clock.due(1_010));
        assert!(clock.due(900), "clock stepped back");
    }
}

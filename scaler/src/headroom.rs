//! How much node headroom a target keeps: room for as many spare pods as the largest burst
//! Surge scaled it for within a window, a burst being the rise of the replicas Surge wrote
//! within one minute (pure; the writes of the room are `controller::headroom`'s).
//!
//! The cluster autoscaler adds nodes only for pods that do not fit, and a node takes tens of
//! seconds to turn Ready: a burst's new replicas wait for it unless room was there before the
//! burst. A fixed reserve is either too small for the next burst or paid for all day. Surge
//! writes every scale of its target itself, so it knows the size of the bursts the target
//! actually gets; the largest recent one is the reserve that would have let it start at once.
//! A burst is usually written in a few steps a few hundred milliseconds apart (1 -> 2 -> 4 ->
//! 6), so its size is the rise over a minute (5), not the largest single write (2).

use std::collections::VecDeque;

use crate::crd::Headroom;
use crate::decision::Millis;

/// How long a rise of the replicas counts as one burst.
pub const BURST_SPAN_MS: Millis = 60_000;

/// The scale writes of one target, oldest first, as far back as the window (and one burst span
/// more) reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BurstMemory {
    /// (when, replicas before, replicas after).
    writes: VecDeque<(Millis, i32, i32)>,
}

/// The most writes remembered per target (a cap on memory; past it the oldest go, which only
/// shortens the window: one write a second for an hour is 3600).
const MAX_WRITES: usize = 4096;

impl BurstMemory {
    /// Notes that Surge scaled the target from `from` to `to` replicas at `now`.
    pub fn record(&mut self, now: Millis, from: i32, to: i32) {
        if to == from {
            return;
        }
        if self.writes.len() == MAX_WRITES {
            self.writes.pop_front();
        }
        self.writes.push_back((now, from, to));
    }

    /// The largest burst ending within `window_ms` before `now`: the most the replicas rose
    /// from a level they had within [`BURST_SPAN_MS`] before (0 when none). Forgets writes too
    /// old to matter.
    pub fn largest(&mut self, now: Millis, window_ms: Millis) -> i32 {
        let keep = window_ms.saturating_add(BURST_SPAN_MS);
        while self
            .writes
            .front()
            .is_some_and(|(at, _, _)| now.saturating_sub(*at) > keep)
        {
            self.writes.pop_front();
        }
        // The lowest level before any write of the last span: a deque of (when, level) whose
        // levels increase from the front.
        let mut lows: VecDeque<(Millis, i32)> = VecDeque::new();
        let mut largest = 0;
        for &(at, from, to) in &self.writes {
            while lows.back().is_some_and(|(_, level)| *level >= from) {
                lows.pop_back();
            }
            lows.push_back((at, from));
            while lows
                .front()
                .is_some_and(|(t, _)| at.saturating_sub(*t) > BURST_SPAN_MS)
            {
                lows.pop_front();
            }
            // Only a write that raised the replicas ends a burst.
            if to > from
                && now.saturating_sub(at) <= window_ms
                && let Some((_, low)) = lows.front()
            {
                largest = largest.max(to - low);
            }
        }
        largest
    }
}

/// The spare pods to ask for: the largest burst within the window, at least
/// `spec.minReplicas`, at most `spec.maxReplicas`, and no more than the target can still grow
/// (`max_replicas - current`, where `current` is its replicas now).
pub fn spare_replicas(
    spec: &Headroom,
    memory: &mut BurstMemory,
    now: Millis,
    current: i32,
    max_replicas: i32,
) -> i32 {
    let window_ms = Millis::from(spec.burst_window_seconds) * 1000;
    let wanted = memory.largest(now, window_ms).max(spec.min_replicas);
    let capped = spec.max_replicas.map_or(wanted, |max| wanted.min(max));
    capped.min(max_replicas.saturating_sub(current)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(window_s: u32, min: i32, max: Option<i32>) -> Headroom {
        Headroom {
            burst_window_seconds: window_s,
            min_replicas: min,
            max_replicas: max,
            placeholders: None,
        }
    }

    #[test]
    fn a_burst_written_in_steps_counts_whole_and_the_window_forgets_it() {
        let mut memory = BurstMemory::default();
        let spec = spec(60, 1, None);
        assert_eq!(
            spare_replicas(&spec, &mut memory, 0, 5, 50),
            1,
            "min before any burst"
        );
        // One burst in three writes: 5 -> 12 in all.
        memory.record(1_000, 5, 7);
        memory.record(1_200, 7, 10);
        memory.record(1_400, 10, 12);
        memory.record(30_000, 12, 9); // a scale-down is no burst
        assert_eq!(spare_replicas(&spec, &mut memory, 30_000, 9, 50), 7);
        // Still remembered at the window's edge, forgotten after it.
        assert_eq!(spare_replicas(&spec, &mut memory, 61_400, 9, 50), 7);
        assert_eq!(spare_replicas(&spec, &mut memory, 61_401, 9, 50), 1);
    }

    #[test]
    fn rises_more_than_a_burst_span_apart_are_separate_bursts() {
        let mut memory = BurstMemory::default();
        memory.record(0, 1, 3);
        memory.record(BURST_SPAN_MS + 1, 3, 6);
        assert_eq!(memory.largest(BURST_SPAN_MS + 1, 3_600_000), 3);
        // Within one span, down and up again: the rise is from the lowest level before.
        let mut memory = BurstMemory::default();
        memory.record(0, 6, 2);
        memory.record(10_000, 2, 4);
        memory.record(20_000, 4, 7);
        assert_eq!(memory.largest(20_000, 3_600_000), 5);
    }

    #[test]
    fn the_room_never_exceeds_the_cap_or_what_the_target_can_still_grow() {
        let mut memory = BurstMemory::default();
        memory.record(0, 2, 22);
        assert_eq!(
            spare_replicas(&spec(60, 1, Some(8)), &mut memory, 1, 22, 50),
            8
        );
        assert_eq!(
            spare_replicas(&spec(60, 1, None), &mut memory, 1, 45, 50),
            5
        );
        assert_eq!(
            spare_replicas(&spec(60, 1, None), &mut memory, 1, 50, 50),
            0
        );
        // A target above its maximum (lowered since) asks for nothing, not a negative count.
        assert_eq!(
            spare_replicas(&spec(60, 1, None), &mut memory, 1, 60, 50),
            0
        );
        assert_eq!(
            spare_replicas(&spec(60, 0, None), &mut BurstMemory::default(), 1, 5, 50),
            0
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut memory = BurstMemory::default();
        for i in 0..10_000u64 {
            memory.record(i, (i % 2) as i32, 1 - (i % 2) as i32);
        }
        assert_eq!(memory.writes.len(), MAX_WRITES);
        assert_eq!(memory.largest(10_000, 1_000_000), 1);
    }
}

//! How much node headroom a target keeps: room for as many spare pods as the largest scale-up
//! Surge made for it within a window (pure; the CapacityBuffer write is
//! `controller::headroom`'s).
//!
//! The cluster autoscaler adds nodes only for pods that do not fit, and a node takes tens of
//! seconds to turn Ready: a burst's new replicas wait for it unless room was there before the
//! burst. A fixed reserve is either too small for the next burst or paid for all day. Surge
//! writes every scale-up itself, so it knows the size of the bursts its target actually gets;
//! the largest recent one is the reserve that would have let the last burst start at once.

use std::collections::VecDeque;

use crate::crd::Headroom;
use crate::decision::Millis;

/// The scale-ups of one target within the window, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BurstMemory {
    /// (when, how many replicas it added).
    steps: VecDeque<(Millis, i32)>,
}

/// The most scale-ups remembered per target (a cap on memory; the window normally drops them
/// long before: one a second for an hour would be 3600).
const MAX_STEPS: usize = 4096;

impl BurstMemory {
    /// Notes that the target went from `from` to `to` replicas at `now` (only increases count).
    pub fn record(&mut self, now: Millis, from: i32, to: i32) {
        if to <= from {
            return;
        }
        if self.steps.len() == MAX_STEPS {
            // Keep the largest: drop the smallest of the oldest half rather than the oldest.
            let half = MAX_STEPS / 2;
            if let Some((at, _)) = self
                .steps
                .iter()
                .take(half)
                .enumerate()
                .min_by_key(|(_, (_, step))| *step)
            {
                self.steps.remove(at);
            }
        }
        self.steps.push_back((now, to - from));
    }

    /// The largest scale-up within `window_ms` before `now` (0 when none); forgets older ones.
    pub fn largest(&mut self, now: Millis, window_ms: Millis) -> i32 {
        while self
            .steps
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > window_ms)
        {
            self.steps.pop_front();
        }
        self.steps.iter().map(|(_, step)| *step).max().unwrap_or(0)
    }
}

/// The spare pods to ask for: the largest scale-up within the window, at least
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
    fn the_largest_scale_up_in_the_window_sets_the_room() {
        let mut memory = BurstMemory::default();
        let spec = spec(60, 1, None);
        assert_eq!(
            spare_replicas(&spec, &mut memory, 0, 5, 50),
            1,
            "min before any burst"
        );
        memory.record(1_000, 5, 12);
        memory.record(2_000, 12, 14);
        memory.record(3_000, 14, 10); // a scale-down is not a burst
        assert_eq!(spare_replicas(&spec, &mut memory, 3_000, 10, 50), 7);
        // Still remembered at the window's edge, forgotten after it.
        assert_eq!(spare_replicas(&spec, &mut memory, 61_000, 10, 50), 7);
        assert_eq!(spare_replicas(&spec, &mut memory, 61_001, 10, 50), 2);
        assert_eq!(spare_replicas(&spec, &mut memory, 62_001, 10, 50), 1);
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
    fn memory_is_bounded_and_keeps_the_largest_bursts() {
        let mut memory = BurstMemory::default();
        memory.record(0, 0, 100);
        for i in 1..10_000u64 {
            memory.record(i, 0, 1);
        }
        assert!(memory.steps.len() <= MAX_STEPS);
        assert_eq!(memory.largest(10_000, 1_000_000), 100);
    }
}

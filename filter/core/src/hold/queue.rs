//! The requests one VM holds, in arrival order, and the rules that end each hold.

use super::{ColdSet, HEAD_START_MS, MAX_HELD_PER_VM};
use crate::config::HoldConfig;

/// One held request of this VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRequest {
    /// The request's context id (what the host resumes or answers).
    pub context_id: u32,
    /// Its destination (one of the cold set's names).
    pub cluster: String,
    /// When it was held.
    pub since_ms: u64,
}

/// What [`HoldQueue::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Held: pause the request.
    Held,
    /// The destination (or this VM) holds the most allowed: answer `503` at once.
    Full,
}

/// How a held request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Its destination is warm: resume it (Envoy forwards it as usual).
    Resume,
    /// Held for the whole timeout (or the plugin shuts down): answer `503` with `Retry-After`.
    TimedOut,
}

/// The requests one VM holds, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct HoldQueue {
    /// Oldest first. A vector rather than a deque: removals from the front shift at most
    /// [`MAX_HELD_PER_VM`] small entries, on the cold path only, and save the deque's code.
    entries: Vec<HeldRequest>,
    /// Destinations that turned warm while this VM held requests for them, and when their
    /// oldest held request went on (the rest follow [`HEAD_START_MS`] later).
    opened: Vec<(String, u64)>,
}

impl HoldQueue {
    /// Requests this VM holds for `cluster`.
    pub fn held_for(&self, cluster: &str) -> u64 {
        self.entries.iter().filter(|e| e.cluster == cluster).count() as u64
    }

    /// Holds request `context_id` for `cluster` unless the destination already has
    /// `config.max_requests` held across the proxy (this VM's own plus `others`, what the other
    /// VMs publish) or this VM holds [`MAX_HELD_PER_VM`].
    pub fn admit(
        &mut self,
        context_id: u32,
        cluster: &str,
        now_ms: u64,
        others: u64,
        config: &HoldConfig,
    ) -> Admission {
        let held = self.held_for(cluster).saturating_add(others);
        if held >= config.max_requests || self.entries.len() >= MAX_HELD_PER_VM {
            return Admission::Full;
        }
        self.entries.push(HeldRequest {
            context_id,
            cluster: cluster.to_owned(),
            since_ms: now_ms,
        });
        Admission::Held
    }

    /// Whether request `context_id` is held.
    pub fn contains(&self, context_id: u32) -> bool {
        self.entries.iter().any(|e| e.context_id == context_id)
    }

    /// Forgets request `context_id` (it ended while held); true if it was held.
    pub fn remove(&mut self, context_id: u32) -> bool {
        match self.entries.iter().position(|e| e.context_id == context_id) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// Takes the requests whose hold ends at `now_ms`, in arrival order: those held for
    /// `timeout_ms` or longer while their destination is cold (a `503`), and those whose
    /// destination is no longer in `cold` (resumed, even when their timeout passed too).
    ///
    /// A destination that turns warm gets its oldest held request first, alone, and the rest
    /// [`HEAD_START_MS`] later: released together, they would reach the new pod as one crowd
    /// in whatever order the connections happen to open (measured: the first request landed
    /// up to 5 batches deep), and the request that waited longest would wait longest again.
    pub fn sweep(&mut self, now_ms: u64, cold: &ColdSet, timeout_ms: u64) -> Vec<(u32, Release)> {
        self.take(now_ms, cold, timeout_ms, HEAD_START_MS)
    }

    /// Takes every held request (the plugin shuts down): warm destinations resume, cold ones
    /// end with a `503`, in arrival order, with no head start (the VM is going away).
    pub fn drain(&mut self, cold: &ColdSet) -> Vec<(u32, Release)> {
        self.take(0, cold, 0, 0)
    }

    /// When the next held request of a destination that turned warm is due (the end of its
    /// head start): the glue ticks then rather than at its next check.
    pub fn next_release_ms(&self) -> Option<u64> {
        self.opened
            .iter()
            .map(|(_, at)| at.saturating_add(HEAD_START_MS))
            .min()
    }

    fn take(
        &mut self,
        now_ms: u64,
        cold: &ColdSet,
        timeout_ms: u64,
        head_start_ms: u64,
    ) -> Vec<(u32, Release)> {
        // A destination cold again starts over: its next warm turn has a head of its own.
        self.opened.retain(|(c, _)| !cold.contains(c.as_bytes()));
        let opened = &mut self.opened;
        let mut out = Vec::new();
        self.entries.retain(|e| {
            let release = if !cold.contains(e.cluster.as_bytes()) {
                match opened.iter().find(|(c, _)| *c == e.cluster) {
                    // The oldest held request of a destination just warm: it goes alone.
                    None => {
                        opened.push((e.cluster.clone(), now_ms));
                        Some(Release::Resume)
                    }
                    Some(&(_, at)) if now_ms >= at.saturating_add(head_start_ms) => {
                        Some(Release::Resume)
                    }
                    Some(_) => None,
                }
            } else if now_ms.saturating_sub(e.since_ms) >= timeout_ms {
                Some(Release::TimedOut)
            } else {
                None
            };
            match release {
                Some(release) => {
                    out.push((e.context_id, release));
                    false
                }
                None => true,
            }
        });
        let entries = &self.entries;
        self.opened
            .retain(|(c, _)| entries.iter().any(|e| e.cluster == *c));
        out
    }

    /// Held requests per destination, in order of each destination's first held request.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let mut counts: Vec<(String, u64)> = Vec::new();
        for e in &self.entries {
            match counts.iter_mut().find(|(c, _)| *c == e.cluster) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.cluster.clone(), 1)),
            }
        }
        counts
    }

    /// Requests held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::fixtures::{APP, WEB, cold};

    fn config(max_requests: u64) -> HoldConfig {
        HoldConfig {
            max_requests,
            ..HoldConfig::default()
        }
    }

    #[test]
    fn held_requests_resume_in_arrival_order_when_warm() {
        let mut queue = HoldQueue::default();
        for (id, cluster) in [(7, APP), (3, WEB), (9, APP), (4, APP)] {
            assert_eq!(
                queue.admit(id, cluster, 100, 0, &config(10)),
                Admission::Held
            );
        }
        assert_eq!(queue.counts(), [(APP.to_string(), 3), (WEB.to_string(), 1)]);
        // Still cold: nothing moves before the timeout.
        let both = cold(100, &[APP, WEB]);
        assert_eq!(queue.sweep(200, &both, 10_000), []);
        // APP warms: its oldest request resumes at once, the rest after the head start, in
        // arrival order; WEB's stays.
        let web = cold(300, &[WEB]);
        assert_eq!(queue.sweep(300, &web, 10_000), [(7, Release::Resume)]);
        assert_eq!(queue.next_release_ms(), Some(300 + HEAD_START_MS));
        assert_eq!(queue.sweep(300 + HEAD_START_MS - 1, &web, 10_000), []);
        assert_eq!(
            queue.sweep(300 + HEAD_START_MS, &web, 10_000),
            [(9, Release::Resume), (4, Release::Resume)]
        );
        assert_eq!(queue.next_release_ms(), None);
        assert_eq!(queue.counts(), [(WEB.to_string(), 1)]);
        assert!(queue.contains(3) && !queue.contains(7));
    }

    #[test]
    fn each_destination_warm_gets_a_head_of_its_own() {
        let mut queue = HoldQueue::default();
        for (id, cluster) in [(1, APP), (2, WEB), (3, APP), (4, WEB)] {
            queue.admit(id, cluster, 0, 0, &config(10));
        }
        // Both warm in one sweep: each destination's oldest goes at once.
        let none = ColdSet::default();
        assert_eq!(
            queue.sweep(50, &none, 10_000),
            [(1, Release::Resume), (2, Release::Resume)]
        );
        assert_eq!(
            queue.sweep(50 + HEAD_START_MS, &none, 10_000),
            [(3, Release::Resume), (4, Release::Resume)]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn a_destination_cold_again_within_its_head_start_keeps_the_rest_held() {
        let mut queue = HoldQueue::default();
        for id in 1..=3 {
            queue.admit(id, APP, 0, 0, &config(10));
        }
        assert_eq!(
            queue.sweep(50, &ColdSet::default(), 10_000),
            [(1, Release::Resume)]
        );
        // Cold again before the rest went: they stay held, and the next warm turn starts with
        // a head of its own.
        assert_eq!(queue.sweep(55, &cold(55, &[APP]), 10_000), []);
        assert_eq!(queue.next_release_ms(), None);
        assert_eq!(
            queue.sweep(500, &ColdSet::default(), 10_000),
            [(2, Release::Resume)]
        );
        assert_eq!(
            queue.sweep(500 + HEAD_START_MS, &ColdSet::default(), 10_000),
            [(3, Release::Resume)]
        );
    }

    #[test]
    fn held_requests_end_with_a_503_at_the_timeout_in_arrival_order() {
        let mut queue = HoldQueue::default();
        let set = cold(0, &[APP]);
        queue.admit(1, APP, 1_000, 0, &config(10));
        queue.admit(2, APP, 1_400, 0, &config(10));
        queue.admit(3, APP, 1_450, 0, &config(10));
        assert_eq!(queue.sweep(10_999, &set, 10_000), []);
        assert_eq!(queue.sweep(11_000, &set, 10_000), [(1, Release::TimedOut)]);
        assert_eq!(
            queue.sweep(11_500, &set, 10_000),
            [(2, Release::TimedOut), (3, Release::TimedOut)]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn a_destination_warm_at_its_timeout_resumes_rather_than_fails() {
        let mut queue = HoldQueue::default();
        queue.admit(1, APP, 0, 0, &config(10));
        assert_eq!(
            queue.sweep(50_000, &ColdSet::default(), 10_000),
            [(1, Release::Resume)]
        );
    }

    #[test]
    fn the_cap_per_destination_counts_the_other_vms() {
        let mut queue = HoldQueue::default();
        assert_eq!(queue.admit(1, APP, 0, 1, &config(3)), Admission::Held);
        assert_eq!(queue.admit(2, APP, 0, 1, &config(3)), Admission::Held);
        // Two here and one on another VM: the destination is full.
        assert_eq!(queue.admit(3, APP, 0, 1, &config(3)), Admission::Full);
        // Another destination has its own cap.
        assert_eq!(queue.admit(4, WEB, 0, 0, &config(3)), Admission::Held);
        assert_eq!(queue.len(), 3);
    }

    #[test]
    fn one_vm_never_holds_more_than_its_fixed_cap() {
        let mut queue = HoldQueue::default();
        let unbounded = config(u64::MAX);
        let mut held = 0;
        for id in 0..(MAX_HELD_PER_VM as u32 + 10) {
            let cluster = format!("outbound|80||s{}.ns.svc.cluster.local", id % 300);
            if queue.admit(id, &cluster, 0, 0, &unbounded) == Admission::Held {
                held += 1;
            }
        }
        assert_eq!(held, MAX_HELD_PER_VM);
        assert_eq!(queue.len(), MAX_HELD_PER_VM);
    }

    #[test]
    fn a_request_that_ends_while_held_leaves_the_queue() {
        let mut queue = HoldQueue::default();
        queue.admit(1, APP, 0, 0, &config(10));
        queue.admit(2, APP, 0, 0, &config(10));
        assert!(queue.remove(1));
        assert!(!queue.remove(1));
        assert_eq!(queue.counts(), [(APP.to_string(), 1)]);
    }

    #[test]
    fn at_shutdown_warm_requests_resume_and_cold_ones_end() {
        let mut queue = HoldQueue::default();
        queue.admit(1, APP, 0, 0, &config(10));
        queue.admit(2, WEB, 0, 0, &config(10));
        queue.admit(3, APP, 0, 0, &config(10));
        // No head start at shutdown: every warm request goes now.
        assert_eq!(
            queue.drain(&cold(0, &[WEB])),
            [
                (1, Release::Resume),
                (2, Release::TimedOut),
                (3, Release::Resume)
            ]
        );
        assert!(queue.is_empty());
    }
}

//! The requests one VM holds, in arrival order, and the rules that end each hold.

use super::{ColdSet, MAX_HELD_PER_VM};
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

    /// Takes the requests whose hold ends at `now_ms`, in arrival order: those whose destination
    /// is no longer in `cold` (resumed, even when their timeout passed too) and those held for
    /// `timeout_ms` or longer.
    pub fn sweep(&mut self, now_ms: u64, cold: &ColdSet, timeout_ms: u64) -> Vec<(u32, Release)> {
        let mut out = Vec::new();
        self.entries.retain(|e| {
            let release = if !cold.contains(e.cluster.as_bytes()) {
                Some(Release::Resume)
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
        out
    }

    /// Takes every held request (the plugin shuts down): warm destinations resume, cold ones
    /// end with a `503`, in arrival order.
    pub fn drain(&mut self, cold: &ColdSet) -> Vec<(u32, Release)> {
        self.sweep(0, cold, 0)
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
        // APP warms: its requests resume in arrival order; WEB's stays.
        let released = queue.sweep(300, &cold(300, &[WEB]), 10_000);
        assert_eq!(
            released,
            [
                (7, Release::Resume),
                (9, Release::Resume),
                (4, Release::Resume)
            ]
        );
        assert_eq!(queue.counts(), [(WEB.to_string(), 1)]);
        assert!(queue.contains(3) && !queue.contains(7));
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
        assert_eq!(
            queue.drain(&cold(0, &[WEB])),
            [(1, Release::Resume), (2, Release::TimedOut)]
        );
        assert!(queue.is_empty());
    }
}

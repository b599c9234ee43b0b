//! Who reports, and the report sequence: small records kept in Envoy's shared data, which every
//! VM of the proxy (one per worker thread plus the main thread) reads and writes with CAS.
//!
//! * The lease (`holder`, `expires_ms`) elects one reporting VM per proxy. The holder renews it
//!   on every check; any VM takes it over once it has expired, so reporting resumes when the
//!   holder's thread stalls or its VM is replaced.
//! * The sequence record (`seq`, `schedule_ms`) lives outside any VM, so `seq` keeps
//!   increasing and the report schedule holds across a change of reporter.
//!
//! Pure: the glue does the shared-data I/O and passes `now` in.

/// Shared-data key prefix: Istio leaves `vm_id` empty, so every plugin of a proxy shares one
/// key space.
pub const KEY_PREFIX: &str = "surge.v1.";

/// Key of the reporter lease.
pub const LEASE_KEY: &str = "surge.v1.lease";
/// Key of the sequence record.
pub const SEQ_KEY: &str = "surge.v1.seq";
/// Key of the instance id.
pub const INSTANCE_KEY: &str = "surge.v1.instance";
/// Key of the route table.
pub const ROUTES_KEY: &str = "surge.v1.routes";

/// The reporter lease as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Random id of the VM holding it.
    pub holder: u64,
    /// When it lapses unless renewed (ms since the Unix epoch).
    pub expires_ms: u64,
}

impl Lease {
    /// Decodes `holder:expires_ms` (decimal); `None` for anything else, which counts as no lease.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (holder, expires) = text.split_once(':')?;
        Some(Self {
            holder: holder.parse().ok()?,
            expires_ms: expires.parse().ok()?,
        })
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}:{}", self.holder, self.expires_ms).into_bytes()
    }
}

/// What a VM does with the lease at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// Write this record (CAS on the version read); on success this VM is the reporter.
    Claim(Lease),
    /// Another VM holds a live lease: do not report.
    Follow,
}

/// Decides the lease step for VM `me` at `now_ms`, given the stored lease (if any).
pub fn lease_step(current: Option<Lease>, me: u64, now_ms: u64, ttl_ms: u64) -> LeaseStep {
    match current {
        Some(lease) if lease.holder != me && lease.expires_ms > now_ms => LeaseStep::Follow,
        // Ours (renew), expired, or absent (take).
        _ => LeaseStep::Claim(Lease {
            holder: me,
            expires_ms: now_ms.saturating_add(ttl_ms),
        }),
    }
}

/// The sequence record as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqRecord {
    /// The `seq` of the last report sent (0: none yet).
    pub seq: u64,
    /// Nominal time of the last periodic report (ms since the Unix epoch), if any; see
    /// [`crate::surge::Scheduler::next_schedule`].
    pub schedule_ms: Option<u64>,
}

impl SeqRecord {
    /// Decodes `seq:schedule_ms` (`schedule_ms` 0 when none); garbage reads as a fresh record.
    pub fn decode(bytes: &[u8]) -> Self {
        let parsed = std::str::from_utf8(bytes).ok().and_then(|text| {
            let (seq, sent) = text.split_once(':')?;
            Some((seq.parse().ok()?, sent.parse().ok()?))
        });
        match parsed {
            Some((seq, sent)) => Self {
                seq,
                schedule_ms: (sent > 0).then_some(sent),
            },
            None => Self::default(),
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}:{}", self.seq, self.schedule_ms.unwrap_or(0)).into_bytes()
    }

    /// The record after sending one more report, with the new schedule.
    pub fn next(&self, schedule_ms: u64) -> Self {
        Self {
            seq: self.seq.saturating_add(1),
            schedule_ms: Some(schedule_ms),
        }
    }
}

/// Name of the process-wide gauge that marks whether the filter's stats survived a VM start.
///
/// Envoy frees a Wasm stat with the last VM that defined it. Every VM defines this gauge (and the
/// route metrics) at start: 0 means no live VM defined them before, so the route counters start
/// again from 0 and the report stream needs a new `instance` (the wire contract's "counters
/// restarted"); non-zero means they survived and the stored instance id still holds.
pub const STATS_EPOCH_METRIC: &str = "surge.stats_epoch";

/// Whether a starting VM mints a new instance id, given the stats epoch gauge it read right
/// after defining it. Several VMs starting together may all read 0 and all mint one; the last
/// write wins before any report goes out (reports start a tick later), and every report reads
/// the id from shared data, so all VMs converge on it.
pub fn stats_are_fresh(stats_epoch: u64) -> bool {
    stats_epoch == 0
}

/// An instance id from 64 random bits: lowercase hex, within the wire format's limits.
pub fn instance_id(random: u64) -> String {
    format!("{random:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_lease_is_claimed() {
        assert_eq!(
            lease_step(None, 7, 1_000, 500),
            LeaseStep::Claim(Lease {
                holder: 7,
                expires_ms: 1_500
            })
        );
    }

    #[test]
    fn a_live_lease_of_another_vm_is_followed() {
        let lease = Lease {
            holder: 1,
            expires_ms: 2_000,
        };
        assert_eq!(lease_step(Some(lease), 7, 1_999, 500), LeaseStep::Follow);
    }

    #[test]
    fn the_holder_renews_its_lease() {
        let lease = Lease {
            holder: 7,
            expires_ms: 2_000,
        };
        assert_eq!(
            lease_step(Some(lease), 7, 1_900, 500),
            LeaseStep::Claim(Lease {
                holder: 7,
                expires_ms: 2_400
            })
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let lease = Lease {
            holder: 1,
            expires_ms: 2_000,
        };
        assert!(matches!(
            lease_step(Some(lease), 7, 2_000, 500),
            LeaseStep::Claim(Lease { holder: 7, .. })
        ));
    }

    #[test]
    fn lease_round_trips_and_garbage_is_no_lease() {
        let lease = Lease {
            holder: u64::MAX,
            expires_ms: 123,
        };
        assert_eq!(Lease::decode(&lease.encode()), Some(lease));
        assert_eq!(Lease::decode(b""), None);
        assert_eq!(Lease::decode(b"x:1"), None);
    }

    #[test]
    fn seq_increases_and_remembers_the_schedule() {
        let first = SeqRecord::decode(b"");
        assert_eq!(first, SeqRecord::default());
        let next = first.next(1_000);
        assert_eq!(next.seq, 1);
        assert_eq!(next.schedule_ms, Some(1_000));
        assert_eq!(SeqRecord::decode(&next.encode()), next);
        assert_eq!(next.next(2_000).seq, 2);
    }

    #[test]
    fn instance_ids_are_fixed_width_hex() {
        assert_eq!(instance_id(255), "00000000000000ff");
        assert_eq!(instance_id(u64::MAX).len(), 16);
    }

    #[test]
    fn fresh_stats_rotate_the_instance_and_surviving_ones_keep_it() {
        assert!(stats_are_fresh(0));
        assert!(!stats_are_fresh(1));
        assert!(!stats_are_fresh(7));
    }

    #[test]
    fn every_key_carries_the_prefix() {
        for key in [LEASE_KEY, SEQ_KEY, INSTANCE_KEY, ROUTES_KEY] {
            assert!(key.starts_with(KEY_PREFIX));
        }
    }
}

//! Sharing the targets among scaler replicas: which replica decides and writes for a target.
//!
//! ```text
//!  target ns/name --hash--> shard s (of --shards, 8 by default)
//!  live members (their member Leases renewed within the Lease duration)
//!      --rendezvous hash (s, member), at most ceil(shards/members) each--> who should hold s
//!  shard Lease s: held by one replica at a time (optimistic concurrency on the Lease)
//! ```
//!
//! Each replica renews a member Lease of its own and the shard Leases it holds; [`plan`] says,
//! from what it last listed, which shard Leases to take, renew or give up. A replica decides and
//! writes for a target only while its shard Lease is valid ([`Ownership::owns`]), so a replica
//! that can no longer renew (cut from the API server) stops writing before another may take
//! the shard over. The I/O is in `leases.rs`; this file is pure.
//!
//! Expiry is judged as client-go's leader election judges it: by when *this* replica saw a
//! Lease last change, on its own monotonic clock, never by comparing another machine's
//! `renewTime` with its own wall clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::clock::Clock;
use crate::decision::Millis;
use crate::hub::TargetKey;

pub mod leases;

/// Default number of shards: enough for an even split among a few replicas (rendezvous
/// hashing moves only the shards of a replica that joins or leaves), few enough that renewing
/// them costs a handful of API writes a second.
pub const DEFAULT_SHARDS: u32 = 8;

/// FNV-1a (64 bit) over `parts`, then MurmurHash3's finalizer so that every input bit moves
/// every output bit: stable across builds, processes and versions, which the standard
/// library's hasher is not, and every replica must agree on it.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h = fnv1a(parts);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shard of a target, in `0..shards`.
pub fn shard_of(key: &TargetKey, shards: u32) -> u32 {
    let hash = hash(&[key.namespace.as_bytes(), key.name.as_bytes()]);
    u32::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

/// The member that should hold each shard, in shard order: rendezvous hashing (each shard
/// ranks the members by the hash of the shard and the member) with a capacity of
/// `ceil(shards / members)` each, filled in shard order. Plain rendezvous moves the fewest
/// shards when a member joins or leaves, but splits 8 shards 8/0 between two replicas in 1 of
/// 128 pairs of names (it did so in this repository's own test run); the capacity keeps the
/// split within one shard and still moves few. Every replica computes the same from the same
/// members, in whatever order it lists them.
pub fn assignment<'a>(shards: u32, members: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut members: Vec<&str> = members.into_iter().collect();
    members.sort_unstable();
    members.dedup();
    if members.is_empty() {
        return Vec::new();
    }
    let capacity = (shards as usize).div_ceil(members.len());
    let mut load = vec![0_usize; members.len()];
    (0..shards)
        .map(|shard| {
            let mut ranked: Vec<(u64, usize)> = members
                .iter()
                .enumerate()
                .map(|(i, m)| (hash(&[&shard.to_be_bytes(), m.as_bytes()]), i))
                .collect();
            ranked.sort_unstable_by(|a, b| b.cmp(a));
            let (_, chosen) = ranked
                .into_iter()
                .find(|(_, i)| load[*i] < capacity)
                .unwrap_or((0, 0));
            load[chosen] += 1;
            members[chosen]
        })
        .collect()
}

/// One Lease as this replica last listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `spec.holderIdentity`; `None` when released.
    pub holder: Option<String>,
    /// When this replica first saw the Lease as it is now (holder and renewal), on its clock.
    pub changed_at: Millis,
    /// The Lease duration its holder set, in milliseconds.
    pub duration_ms: Millis,
}

impl Seen {
    /// Whether the holder's claim has lapsed at `now`: not renewed within its duration, as far
    /// as this replica has seen.
    pub fn lapsed(&self, now: Millis) -> bool {
        now >= self.changed_at.saturating_add(self.duration_ms)
    }

    /// The holder, while its claim stands at `now`.
    pub fn held_by(&self, now: Millis) -> Option<&str> {
        self.holder.as_deref().filter(|_| !self.lapsed(now))
    }
}

/// What to do with one shard Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Take it: free, lapsed, or never created, and this replica is the one that should hold it.
    Acquire,
    /// Renew it: held by this replica, which should keep it.
    Renew,
    /// Give it up: held by this replica, but another live member should hold it (it joined).
    Release,
}

/// The members that shards are assigned to: those live for at least `warmup` (this replica's
/// own time alive is `me_since`, the others' from the `acquireTime` of their member Lease, which
/// each process sets when it starts, mapped onto this replica's clock), so that
/// a replica that just joined has had the others' mirrored reports for a while before it
/// decides for a target (a shard handed to it at once would go to an empty window and miss
/// the surge its predecessor was about to act on); and those that joined within a warm-up of
/// the oldest live member, who has no more history than they have (replicas started
/// together, or the survivors once the old ones died). Without that second rule, replicas
/// started together split the shards, then the first to turn warm took them all back for the
/// moment the others were not yet, then gave them out again: two handovers of half the
/// targets for nothing (seen in the two-replica benchmark as 0.5-1 s late writes).
/// Returns whether `me` is one of them, and the others that are.
pub fn candidates(
    me_since: Millis,
    others: &[(String, Millis)],
    now: Millis,
    warmup: Millis,
) -> (bool, Vec<String>) {
    let oldest = others
        .iter()
        .map(|(_, since)| *since)
        .fold(me_since, Millis::min);
    let counts = |since: Millis| {
        now >= since.saturating_add(warmup) || since < oldest.saturating_add(warmup)
    };
    let counted = others
        .iter()
        .filter(|(_, since)| counts(*since))
        .map(|(id, _)| id.clone())
        .collect();
    (counts(me_since), counted)
}

/// What this replica (`me`) should do with each shard Lease at `now`, given the members the
/// shards go to (`others`, and `me` when `include_me`) and the shard Leases as last listed (a
/// missing entry: never created). Shards another replica holds validly, or that another
/// member should take, are left alone.
pub fn plan(
    me: &str,
    include_me: bool,
    now: Millis,
    shards: u32,
    others: &[String],
    seen: &HashMap<u32, Seen>,
) -> Vec<(u32, Step)> {
    let owners = assignment(
        shards,
        include_me
            .then_some(me)
            .into_iter()
            .chain(others.iter().map(String::as_str)),
    );
    (0..shards)
        .filter_map(|shard| {
            let mine = owners.get(shard as usize) == Some(&me);
            let holder = seen.get(&shard).and_then(|s| s.held_by(now));
            let step = match holder {
                Some(holder) if holder == me => {
                    if mine {
                        Step::Renew
                    } else {
                        Step::Release
                    }
                }
                Some(_) => return None,
                None if mine => Step::Acquire,
                None => return None,
            };
            Some((shard, step))
        })
        .collect()
}

/// The live members at `now` from their member Leases as last listed (`me` excluded).
pub fn live_members(me: &str, now: Millis, members: &HashMap<String, Seen>) -> Vec<String> {
    let mut live: Vec<String> = members
        .iter()
        .filter(|(id, seen)| id.as_str() != me && seen.held_by(now).is_some())
        .map(|(id, _)| id.clone())
        .collect();
    live.sort();
    live
}

/// A replica this one mirrors reports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its replica id.
    pub id: String,
    /// Where it takes mirrored reports (`http://ip:port`).
    pub url: String,
}

/// Which targets this replica may decide and write for, shared by the Lease loop (which
/// updates it) and the target loops (which ask it before every write).
#[derive(Debug)]
pub struct Ownership {
    sharded: Option<Sharded>,
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct Sharded {
    /// This replica's id (its pod name), written to the status of the targets it owns.
    id: String,
    shards: u32,
    /// Writes stop this long before a shard Lease runs out: a write sent just before would
    /// otherwise land after another replica took the shard over.
    margin_ms: Millis,
    clock: Clock,
    state: Mutex<ShardState>,
}

#[derive(Debug, Default)]
struct ShardState {
    /// Per shard: until when this replica's hold is valid (its clock), if it holds it.
    valid_until: Vec<Option<Millis>>,
    /// Shared, so that the ingest path's look at it (every accepted report) copies a pointer.
    peers: Arc<[Peer]>,
}

impl Ownership {
    /// A single replica: it owns every target, always (no Leases).
    pub fn everything() -> Self {
        Self {
            sharded: None,
            changed: watch::channel(0).0,
        }
    }

    /// Targets split in `shards` among replicas, this one being `id`; none owned until
    /// [`Ownership::hold`] says so.
    pub fn sharded(id: &str, shards: u32, margin_ms: Millis, clock: Clock) -> Self {
        let shards = shards.max(1);
        Self {
            sharded: Some(Sharded {
                id: id.to_owned(),
                shards,
                margin_ms,
                clock,
                state: Mutex::new(ShardState {
                    valid_until: vec![None; shards as usize],
                    peers: Arc::from(Vec::new()),
                }),
            }),
            changed: watch::channel(0).0,
        }
    }

    /// The number of shards (1 when this replica runs alone).
    pub fn shards(&self) -> u32 {
        self.sharded.as_ref().map_or(1, |s| s.shards)
    }

    /// This replica's id when the targets are shared (`None` when it runs alone).
    pub fn replica_id(&self) -> Option<&str> {
        self.sharded.as_ref().map(|s| s.id.as_str())
    }

    fn state(sharded: &Sharded) -> std::sync::MutexGuard<'_, ShardState> {
        sharded.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this replica may write for `key` now.
    pub fn owns(&self, key: &TargetKey) -> bool {
        let Some(sharded) = &self.sharded else {
            return true;
        };
        let shard = shard_of(key, sharded.shards) as usize;
        let now = sharded.clock.now();
        Self::state(sharded).valid_until[shard]
            .is_some_and(|until| now.saturating_add(sharded.margin_ms) < until)
    }

    /// Whether the targets are shared among replicas.
    pub fn is_sharded(&self) -> bool {
        self.sharded.is_some()
    }

    /// The shards held now (empty when not sharded).
    pub fn held(&self) -> Vec<u32> {
        let Some(sharded) = &self.sharded else {
            return Vec::new();
        };
        let now = sharded.clock.now();
        Self::state(sharded)
            .valid_until
            .iter()
            .enumerate()
            .filter(|(_, until)| until.is_some_and(|u| now.saturating_add(sharded.margin_ms) < u))
            .filter_map(|(shard, _)| u32::try_from(shard).ok())
            .collect()
    }

    /// Records that `shard` is held until `until` (`None`: not held). Target loops are told
    /// when a shard is gained or lost.
    pub fn hold(&self, shard: u32, until: Option<Millis>) {
        let Some(sharded) = &self.sharded else {
            return;
        };
        let changed = {
            let mut state = Self::state(sharded);
            let Some(slot) = state.valid_until.get_mut(shard as usize) else {
                return;
            };
            let changed = slot.is_some() != until.is_some();
            *slot = until;
            changed
        };
        if changed {
            self.changed.send_modify(|generation| *generation += 1);
        }
    }

    /// The other live replicas.
    pub fn peers(&self) -> Arc<[Peer]> {
        self.sharded.as_ref().map_or_else(
            || Arc::from(Vec::new()),
            |s| Arc::clone(&Self::state(s).peers),
        )
    }

    /// Replaces the list of other live replicas.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        if let Some(sharded) = &self.sharded {
            let mut state = Self::state(sharded);
            if *state.peers != *peers {
                state.peers = Arc::from(peers);
            }
        }
    }

    /// Changes whenever a shard is gained or lost.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests;

//! Requests in flight, kept per VM in shared data so that a VM torn down mid-request leaves
//! nothing behind.
//!
//! A request's in-flight mark is raised and lowered by the VM that saw its headers. When Envoy
//! replaces every VM at once (a plugin config push with no drain), it cuts the requests held
//! on the old VMs without running their `on_log`: a process-wide gauge would keep their +1
//! forever, and the requests themselves would never be counted. So each VM publishes its own
//! in-flight counts, with the time it wrote them, under its own key, and lists itself in a
//! registry:
//!
//! ```text
//!  VM a: "surge.v1.vm.<a>" = w=<ms>;i=<n0>,<n1>,..;o=<other>   (rewritten on every flush / tick)
//!  VM b: "surge.v1.vm.<b>" = ...
//!  "surge.v1.vms" = <a>,<b>,...                                  (appended with CAS)
//!  reporter, each report: in flight = sum over the entries written in the last GONE_AFTER_MS;
//!            an older entry is a VM that is gone: its in-flight requests were cut, so they
//!            are counted once as completed errors, and the VM leaves the registry.
//! ```
//!
//! Pure: the glue does the shared-data I/O and passes `now` in.

use crate::surge::Arrivals;

/// Key of the registry of VMs that publish in-flight counts.
pub const VMS_KEY: &str = "surge.v1.vms";

/// Most VMs the registry holds (worker threads, the main thread, and VMs of earlier plugin
/// configurations until they are found gone).
pub const MAX_VMS: usize = 512;

/// A VM that has not rewritten its entry for this long is gone. Every VM rewrites it on every
/// tick (100 ms by default); a live worker thread that cannot tick for this long is stuck, and
/// so are the requests on it.
pub const GONE_AFTER_MS: u64 = 10_000;

/// The shared-data key of VM `vm`'s entry.
pub fn vm_key(vm: u64) -> String {
    format!("surge.v1.vm.{vm}")
}

/// The VMs that publish in-flight counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    vms: Vec<u64>,
}

impl Registry {
    /// Decodes comma-separated decimal ids, as the lease records are stored; anything
    /// unreadable is skipped.
    pub fn decode(bytes: &[u8]) -> Self {
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        Self {
            vms: text
                .split(',')
                .filter_map(|id| id.parse().ok())
                .take(MAX_VMS)
                .collect(),
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        join(&self.vms).into_bytes()
    }

    /// The VMs listed.
    pub fn vms(&self) -> &[u64] {
        &self.vms
    }

    /// The registry with `vm` added; `None` when it is listed already or the registry is full.
    pub fn with(&self, vm: u64) -> Option<Self> {
        if self.vms.contains(&vm) || self.vms.len() >= MAX_VMS {
            return None;
        }
        let mut vms = self.vms.clone();
        vms.push(vm);
        Some(Self { vms })
    }

    /// The registry without `gone`.
    pub fn without(&self, gone: &[u64]) -> Self {
        Self {
            vms: self
                .vms
                .iter()
                .copied()
                .filter(|vm| !gone.contains(vm))
                .collect(),
        }
    }
}

/// One VM's published in-flight counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// When the VM wrote it (ms since the Unix epoch).
    pub written_ms: u64,
    /// Requests in flight on this VM, by route slot (the shared route table's indexes, then
    /// `other`), in the same shape as arrivals.
    pub inflight: Arrivals,
}

impl Entry {
    /// Decodes `w=<ms>;i=<n>,<n>,...;o=<n>`; `None` for anything else (an empty value is a VM
    /// already found gone).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(';');
        let written_ms = parts.next()?.strip_prefix("w=")?.parse().ok()?;
        let indexed = parts.next()?.strip_prefix("i=")?;
        let other = parts.next()?.strip_prefix("o=")?.parse().ok()?;
        let indexed = if indexed.is_empty() {
            Vec::new()
        } else {
            indexed
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<u64>, _>>()
                .ok()?
        };
        parts.next().is_none().then_some(Self {
            written_ms,
            inflight: Arrivals { indexed, other },
        })
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "w={};i={};o={}",
            self.written_ms,
            join(&self.inflight.indexed),
            self.inflight.other
        )
        .into_bytes()
    }

    /// Whether the VM that wrote it is gone at `now_ms`.
    pub fn is_gone(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.written_ms) > GONE_AFTER_MS
    }
}

/// A VM's in-flight counts as it keeps them: signed, because a flush can carry an end whose
/// start was flushed by an earlier one, and clamped at zero when published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    indexed: Vec<i64>,
    other: i64,
}

impl Tally {
    /// Adds a change for one slot (`None`: `other`).
    pub fn add(&mut self, index: Option<usize>, delta: i64) {
        let counter = match index {
            None => &mut self.other,
            Some(i) => {
                if self.indexed.len() <= i {
                    self.indexed.resize(i + 1, 0);
                }
                match self.indexed.get_mut(i) {
                    Some(counter) => counter,
                    None => return,
                }
            }
        };
        *counter = counter.saturating_add(delta);
    }

    /// The entry to publish at `now_ms`.
    pub fn entry(&self, now_ms: u64) -> Entry {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Entry {
            written_ms: now_ms,
            inflight: Arrivals {
                indexed: self.indexed.iter().copied().map(count).collect(),
                other: count(self.other),
            },
        }
    }
}

/// What the reporter makes of the registry's entries at one report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Requests in flight on the live VMs, summed per slot.
    pub inflight: Arrivals,
    /// VMs found gone, with their last entry (requests it held that were cut), or `None` when
    /// the VM never published one (e.g. the canary VM Envoy throws away at load).
    pub gone: Vec<(u64, Option<Entry>)>,
}

/// Sums the live entries and lists the gone VMs. A VM lists itself only after writing its
/// entry, so a listed VM without a readable one was settled already (its entry emptied).
pub fn census(now_ms: u64, entries: &[(u64, Option<Entry>)]) -> Census {
    let mut census = Census::default();
    for (vm, entry) in entries {
        match entry {
            Some(entry) if !entry.is_gone(now_ms) => add(&mut census.inflight, &entry.inflight),
            Some(entry) => census.gone.push((*vm, Some(entry.clone()))),
            None => census.gone.push((*vm, None)),
        }
    }
    census
}

/// `ns` in decimal, comma-separated.
fn join(ns: &[u64]) -> String {
    ns.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn add(total: &mut Arrivals, more: &Arrivals) {
    if total.indexed.len() < more.indexed.len() {
        total.indexed.resize(more.indexed.len(), 0);
    }
    for (sum, n) in total.indexed.iter_mut().zip(&more.indexed) {
        *sum = sum.saturating_add(*n);
    }
    total.other = total.other.saturating_add(more.other);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(written_ms: u64, indexed: &[u64], other: u64) -> Entry {
        Entry {
            written_ms,
            inflight: Arrivals {
                indexed: indexed.to_vec(),
                other,
            },
        }
    }

    #[test]
    fn entries_round_trip_and_refuse_garbage() {
        for e in [entry(1_700_000_000_000, &[3, 0, 7], 2), entry(5, &[], 0)] {
            assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
        for bad in [
            &b""[..],
            b"w=1;i=1",
            b"w=x;i=;o=0",
            b"w=1;i=a;o=0",
            b"w=1;i=;o=0;z",
        ] {
            assert_eq!(Entry::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_registry_adds_each_vm_once_and_drops_the_gone() {
        let registry = Registry::decode(b"");
        let registry = registry.with(u64::MAX).unwrap().with(7).unwrap();
        assert_eq!(registry.with(7), None);
        let decoded = Registry::decode(&registry.encode());
        assert_eq!(decoded.vms(), [u64::MAX, 7]);
        assert_eq!(decoded.without(&[u64::MAX]).vms(), [7]);
        assert_eq!(
            Registry::decode(b"zz,5,,-1,99999999999999999999").vms(),
            [5]
        );
        assert_eq!(vm_key(42), "surge.v1.vm.42");
    }

    #[test]
    fn a_full_registry_takes_no_more() {
        let mut registry = Registry::default();
        for vm in 0..MAX_VMS as u64 {
            registry = registry.with(vm).unwrap();
        }
        assert_eq!(registry.with(u64::MAX), None);
    }

    #[test]
    fn the_census_sums_live_vms_and_lists_the_gone() {
        let now = 100_000;
        let census = census(
            now,
            &[
                (1, Some(entry(now - 100, &[2, 1], 0))),
                (2, Some(entry(now - 50, &[1], 3))),
                (3, Some(entry(now - GONE_AFTER_MS - 1, &[4], 0))),
                (4, None),
            ],
        );
        assert_eq!(census.inflight.indexed, [3, 1]);
        assert_eq!(census.inflight.other, 3);
        let gone: Vec<u64> = census.gone.iter().map(|(vm, _)| *vm).collect();
        assert_eq!(gone, [3, 4]);
    }

    #[test]
    fn a_tally_publishes_what_is_in_flight_never_below_zero() {
        let mut tally = Tally::default();
        tally.add(Some(2), 3);
        tally.add(None, 1);
        tally.add(Some(0), -1);
        let e = tally.entry(42);
        assert_eq!(e.written_ms, 42);
        assert_eq!(e.inflight.indexed, [0, 0, 3]);
        assert_eq!(e.inflight.other, 1);
    }
}

//! The held table: what every VM of the proxy holds per destination, in one shared record.

use surge_wire::Held;

use super::MAX_HELD_LINES;
use crate::inflight::GONE_AFTER_MS;

/// One VM's held requests for one destination, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLine {
    /// The VM's id.
    pub vm: u64,
    /// When the VM wrote it (it rewrites its lines every tick while it holds anything).
    pub written_ms: u64,
    /// Requests held.
    pub requests: u64,
    /// The destination.
    pub cluster: String,
}

impl HeldLine {
    fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.written_ms) <= GONE_AFTER_MS
    }
}

/// What every VM holds, per destination: one shared record, rewritten with CAS.
///
/// A VM that holds nothing has no line. A line not rewritten for
/// [`crate::inflight::GONE_AFTER_MS`] belongs to a VM that is gone (destroyed with the requests
/// it held, which Envoy cut): it no longer counts, and the VM that drops it counts its requests
/// as cancelled, once (the CAS write makes it once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldTable {
    lines: Vec<HeldLine>,
}

/// A held table to store, with the requests on the lines of gone VMs it dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldUpdate {
    /// The table to write back (CAS on the version read).
    pub table: HeldTable,
    /// Requests on dropped lines of gone VMs.
    pub cut: u64,
}

impl HeldTable {
    /// Decodes lines of `vm\twritten_ms\trequests\tcluster`; unreadable lines are skipped.
    pub fn decode(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut lines: Vec<HeldLine> = text
            .split('\n')
            .filter_map(|line| {
                let mut parts = line.splitn(4, '\t');
                Some(HeldLine {
                    vm: parts.next()?.parse().ok()?,
                    written_ms: parts.next()?.parse().ok()?,
                    requests: parts.next()?.parse().ok()?,
                    cluster: parts.next().filter(|c| !c.is_empty())?.to_owned(),
                })
            })
            .collect();
        lines.truncate(MAX_HELD_LINES);
        Self { lines }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for l in &self.lines {
            for n in [l.vm, l.written_ms, l.requests] {
                out.extend_from_slice(n.to_string().as_bytes());
                out.push(b'\t');
            }
            out.extend_from_slice(l.cluster.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// The lines.
    pub fn lines(&self) -> &[HeldLine] {
        &self.lines
    }

    /// Requests the other live VMs hold for `cluster`.
    pub fn others(&self, vm: u64, cluster: &str, now_ms: u64) -> u64 {
        self.lines
            .iter()
            .filter(|l| l.vm != vm && l.cluster == cluster && l.is_fresh(now_ms))
            .fold(0, |sum, l| sum.saturating_add(l.requests))
    }

    /// The table with VM `vm`'s lines replaced by `counts` (written at `now_ms`) and the lines
    /// of gone VMs dropped.
    pub fn update(&self, vm: u64, now_ms: u64, counts: &[(String, u64)]) -> HeldUpdate {
        self.rewrite(Some(vm), now_ms, counts)
    }

    fn rewrite(&self, vm: Option<u64>, now_ms: u64, counts: &[(String, u64)]) -> HeldUpdate {
        let mut cut = 0u64;
        let mut lines: Vec<HeldLine> = Vec::with_capacity(self.lines.len() + counts.len());
        for l in &self.lines {
            if Some(l.vm) == vm {
                continue;
            }
            if l.is_fresh(now_ms) {
                lines.push(l.clone());
            } else {
                cut = cut.saturating_add(l.requests);
            }
        }
        for (cluster, requests) in counts.iter().filter(|(_, n)| *n > 0) {
            let Some(vm) = vm else {
                break;
            };
            if lines.len() >= MAX_HELD_LINES {
                break;
            }
            lines.push(HeldLine {
                vm,
                written_ms: now_ms,
                requests: *requests,
                cluster: cluster.clone(),
            });
        }
        HeldUpdate {
            table: Self { lines },
            cut,
        }
    }

    /// The table without the lines of gone VMs, when there are any.
    pub fn prune(&self, now_ms: u64) -> Option<HeldUpdate> {
        if self.lines.iter().all(|l| l.is_fresh(now_ms)) {
            return None;
        }
        Some(self.rewrite(None, now_ms, &[]))
    }

    /// What the live VMs hold per destination (the report's `held`), in the order the table
    /// lists them, at most `max` destinations.
    pub fn totals(&self, now_ms: u64, max: usize) -> Vec<Held> {
        let mut held: Vec<Held> = Vec::new();
        for l in self
            .lines
            .iter()
            .filter(|l| l.is_fresh(now_ms) && l.requests > 0)
        {
            match held.iter_mut().find(|h| h.cluster == l.cluster) {
                Some(h) => h.requests = h.requests.saturating_add(l.requests),
                None => held.push(Held {
                    cluster: l.cluster.clone(),
                    requests: l.requests,
                }),
            }
        }
        held.truncate(max);
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::fixtures::{APP, WEB};

    #[test]
    fn the_held_table_sums_live_vms_and_settles_gone_ones_once() {
        let now = 100_000;
        let table = HeldTable::default()
            .update(1, now - 50, &[(APP.into(), 2), (WEB.into(), 1)])
            .table;
        let table = table.update(2, now, &[(APP.into(), 3)]).table;
        let decoded = HeldTable::decode(&table.encode());
        assert_eq!(decoded, table);
        assert_eq!(decoded.others(1, APP, now), 3);
        assert_eq!(decoded.others(3, APP, now), 5);
        assert_eq!(
            decoded.totals(now, 256),
            [
                Held {
                    cluster: APP.into(),
                    requests: 5
                },
                Held {
                    cluster: WEB.into(),
                    requests: 1
                }
            ]
        );
        assert_eq!(decoded.totals(now, 1).len(), 1);
        assert_eq!(decoded.prune(now), None);
        // VM 1 stops writing: once gone it no longer counts, and the next writer settles it.
        let later = now - 50 + GONE_AFTER_MS + 1;
        assert_eq!(decoded.others(3, APP, later), 3);
        let update = decoded.update(2, later, &[(APP.into(), 1)]);
        assert_eq!(update.cut, 3);
        assert_eq!(update.table.lines().len(), 1);
        assert_eq!(
            update.table.update(2, later, &[]).table,
            HeldTable::default()
        );
        // Pruning alone does the same.
        let pruned = decoded.prune(later).unwrap();
        assert_eq!(pruned.cut, 3);
        assert_eq!(pruned.table.totals(later, 256)[0].requests, 3);
    }

    #[test]
    fn the_held_table_skips_garbage_and_stays_bounded() {
        let table = HeldTable::decode(b"1\t2\t3\tc\nx\t2\t3\tc\n1\t2\t3\t\n\n4\t5\t6\ta\tb");
        assert_eq!(table.lines().len(), 2);
        assert_eq!(table.lines()[1].cluster, "a\tb");
        let counts: Vec<(String, u64)> = (0..2 * MAX_HELD_LINES)
            .map(|i| (format!("c{i}"), 1))
            .collect();
        let big = HeldTable::default().update(1, 0, &counts).table;
        assert_eq!(big.lines().len(), MAX_HELD_LINES);
        assert_eq!(
            HeldTable::decode(&big.encode()).lines().len(),
            MAX_HELD_LINES
        );
    }
}

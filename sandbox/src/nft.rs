//! Network faults injected by the kernel with nftables, on loopback, for one port only.
//!
//! Each [`NftTable`] is a table of the caller's own (`inet surge_nft_<pid>_<n>`) with one chain on
//! the `output` hook; every rule in it matches `127.0.0.1` and the one port under test, so no
//! other traffic on the machine is touched and no existing ruleset is read or changed. The table
//! is deleted when the guard drops, also when the test panics. A test killed outright (SIGKILL
//! by the test runner's timeout) cannot run its guard: the next table created deletes the
//! `surge_nft_*` tables of processes that no longer exist.
//!
//! On loopback both directions of a connection leave through `output`, so a rule on the
//! destination port sees what goes to the server, and one on the source port what it answers.
//! Every rule carries a counter, read back with [`NftTable::counters`]: a test asserts that the
//! fault hit packets, so it can never pass without having injected anything.
//!
//! Needs root and the `nft` binary (`scripts/tools.sh` installs Debian's `nftables`). Used by
//! the fault tests (`tests/tests/faults.rs`) and by the sandbox's `drop_reports` fault.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

const PREFIX: &str = "surge_nft_";
const CHAIN: &str = "output";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Packets the rules of a table matched, by what the rule does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets to or from the port seen by the counting rules (before any verdict).
    pub seen: u64,
    /// Packets answered with a TCP reset.
    pub reset: u64,
    /// Packets dropped.
    pub dropped: u64,
}

/// A table of the caller's own; deleted on drop.
#[derive(Debug)]
pub struct NftTable {
    name: String,
}

fn nft(args: &[&str]) -> Result<String> {
    let output = Command::new("nft")
        .args(args)
        .output()
        .context("cannot run `nft` (install Debian's nftables: scripts/tools.sh does it)")?;
    if !output.status.success() {
        bail!(
            "`nft {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes the `surge_nft_<pid>_*` tables whose process is gone (left by a killed test run).
fn delete_orphans() -> Result<()> {
    for line in nft(&["list", "tables"])?.lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            nft(&["delete", "table", "inet", name])?;
        }
    }
    Ok(())
}

impl NftTable {
    /// Creates an empty table with an `output` chain that accepts by default.
    pub fn create() -> Result<Self> {
        delete_orphans()?;
        let name = format!(
            "{PREFIX}{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        nft(&["add", "table", "inet", &name])?;
        let table = Self { name };
        nft(&[
            "add",
            "chain",
            "inet",
            &table.name,
            CHAIN,
            "{ type filter hook output priority 0; policy accept; }",
        ])?;
        Ok(table)
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn rule(&self, rule: &str) -> Result<()> {
        let mut args = vec!["add", "rule", "inet", self.name.as_str(), CHAIN];
        args.extend(rule.split(' '));
        nft(&args).map(|_| ())
    }

    /// Answers every packet sent to `127.0.0.1:port` with a TCP reset: new connections are
    /// refused at the SYN, open ones are torn down at their next segment.
    pub fn reset_to(&self, port: u16) -> Result<()> {
        let to = format!("ip daddr 127.0.0.1 tcp dport {port}");
        self.rule(&format!("{to} counter comment \"seen\""))?;
        self.rule(&format!(
            "{to} counter reject with tcp reset comment \"reset\""
        ))
    }

    /// Drops about `percent` % of the packets to and from `127.0.0.1:port`, each one drawn at
    /// random (`numgen random`): lost SYNs, segments and ACKs, so TCP retransmits and calls
    /// time out.
    pub fn drop_random(&self, port: u16, percent: u32) -> Result<()> {
        for side in [
            format!("ip daddr 127.0.0.1 tcp dport {port}"),
            format!("ip saddr 127.0.0.1 tcp sport {port}"),
        ] {
            self.rule(&format!("{side} counter comment \"seen\""))?;
            self.rule(&format!(
                "{side} numgen random mod 100 < {percent} counter drop comment \"dropped\""
            ))?;
        }
        Ok(())
    }

    /// Drops every packet to and from `127.0.0.1:port`: a black hole, where connections and
    /// calls hang until their own timeouts give up.
    pub fn drop_all(&self, port: u16) -> Result<()> {
        for side in [
            format!("ip daddr 127.0.0.1 tcp dport {port}"),
            format!("ip saddr 127.0.0.1 tcp sport {port}"),
        ] {
            self.rule(&format!("{side} counter comment \"seen\""))?;
            self.rule(&format!("{side} counter drop comment \"dropped\""))?;
        }
        Ok(())
    }

    /// What the rules matched so far.
    pub fn counters(&self) -> Result<Counters> {
        let listing: Value =
            serde_json::from_str(&nft(&["-j", "list", "table", "inet", &self.name])?)
                .context("nft -j output")?;
        let mut counters = Counters::default();
        let items = listing
            .get("nftables")
            .and_then(Value::as_array)
            .context("nft -j output without `nftables`")?;
        for rule in items.iter().filter_map(|item| item.get("rule")) {
            let comment = rule.get("comment").and_then(Value::as_str).unwrap_or("");
            let packets: u64 = rule
                .get("expr")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.pointer("/counter/packets").and_then(Value::as_u64))
                .sum();
            match comment {
                "seen" => counters.seen += packets,
                "reset" => counters.reset += packets,
                "dropped" => counters.dropped += packets,
                _ => {}
            }
        }
        Ok(counters)
    }

    /// Removes every rule (the fault ends) and returns what they had matched.
    pub fn clear(&self) -> Result<Counters> {
        let counters = self.counters()?;
        nft(&["flush", "chain", "inet", &self.name, CHAIN])?;
        Ok(counters)
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        // Nothing to do on failure: the next table created deletes it as an orphan once this
        // process has exited.
        let _ = nft(&["delete", "table", "inet", &self.name]);
    }
}

//! Holding requests for cold destinations, so that a destination scaled to zero can be woken by
//! its first request instead of failing it.
//!
//! The scaler's answer to every report names the destinations that are cold (`surge_wire::Answer`,
//! by the Envoy cluster a caller's route sends to). Whichever VM sent the report stores that
//! list in shared data; every VM of a gateway or client plugin reads it on its tick and keeps a
//! copy ([`ColdSet`]). A request whose cluster is in the copy is paused at its request headers
//! and queued in its VM ([`HoldQueue`], arrival order); each VM publishes how many it holds per
//! destination in one shared record ([`HeldTable`]), which bounds the proxy-wide count per
//! destination and gives the reporter the report's `held`.
//!
//! ```text
//!  reporter VM: answer {"cold": [...]} --parse_answer--> ColdSet --> "surge.v1.cold"
//!  every VM, each tick: "surge.v1.cold" --> its ColdSet copy (none cold: the request path
//!                       makes no host call for holding at all)
//!  request to a cold cluster: HoldQueue::admit (cap per destination, proxy-wide via
//!                       "surge.v1.held") --> Held: pause | Full: 503 + Retry-After
//!  every VM, each tick: HoldQueue::sweep: warm again -> resume, in arrival order;
//!                       past the timeout -> 503 + Retry-After; HeldTable line refreshed
//!  reporter: "surge.v1.held" --> report `held` (an activation report, every check period
//!            while anything is held)
//! ```
//!
//! Pure: the glue does the shared-data I/O and the host calls, and passes `now` in.

use surge_wire::{Answer, Held, Limits, cold_entry_covers};

use crate::config::HoldConfig;
use crate::inflight::GONE_AFTER_MS;
use crate::json::{self, Json, JsonError};

/// Shared-data key of the cold set.
pub const COLD_KEY: &str = "surge.v1.cold";

/// Shared-data key of the held table.
pub const HELD_KEY: &str = "surge.v1.held";

/// The name of VM `vm`'s wake-up queue: another VM enqueues to it so that this one acts now
/// rather than at its next tick (the reporter on a first held request: the activation report;
/// a VM holding requests when the cold set changed: their release).
pub fn wake_queue(vm: u64) -> String {
    format!("surge.v1.wake.{vm}")
}

/// A cold set that no answer has confirmed for this long is dropped: the scaler has been
/// unreachable for that long, and holding every request to those destinations for the hold
/// timeout would turn a scaler outage into an outage of the destinations. Without it, requests
/// go to Envoy as they would without Surge.
pub const COLD_TTL_MS: u64 = 30_000;

/// Most requests one VM holds, all destinations together: with `hold.max_requests` (at most
/// [`crate::config::MAX_HOLD_REQUESTS`] per destination) and the cold set's cap it bounds the
/// memory holding takes, whatever the traffic.
pub const MAX_HELD_PER_VM: usize = 4096;

/// Most lines of the held table (VMs times destinations with held requests).
pub const MAX_HELD_LINES: usize = 1024;

/// The destinations the scaler last said are cold, with the time an answer last confirmed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColdSet {
    confirmed_ms: u64,
    clusters: Vec<String>,
}

impl ColdSet {
    /// The cold set an answer gave at `now_ms` (the answer validated: bounded, no duplicates,
    /// no control characters).
    pub fn new(now_ms: u64, answer: Answer) -> Self {
        let mut clusters = answer.cold;
        clusters.truncate(Limits::default().max_cold);
        Self {
            confirmed_ms: now_ms,
            clusters,
        }
    }

    /// Decodes `<confirmed_ms>\n<cluster>\n...`; anything unreadable is an empty set (nothing
    /// held: fail open).
    pub fn decode(bytes: &[u8]) -> Self {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Self::default();
        };
        let mut lines = text.split('\n');
        let Some(confirmed_ms) = lines.next().and_then(|l| l.parse().ok()) else {
            return Self::default();
        };
        let mut clusters: Vec<String> =
            lines.filter(|l| !l.is_empty()).map(str::to_owned).collect();
        clusters.truncate(Limits::default().max_cold);
        Self {
            confirmed_ms,
            clusters,
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.confirmed_ms.to_string().into_bytes();
        for cluster in &self.clusters {
            out.push(b'\n');
            out.extend_from_slice(cluster.as_bytes());
        }
        out
    }

    /// Whether `cluster` (the raw `xds.cluster_name`) is cold: listed as is, or the same Service
    /// port as a listed `outbound|<port>||<host>` under another name: a subset
    /// (`outbound|<port>|<subset>|<host>`), since a Service port with no ready endpoint has none
    /// in any of its subsets, or a waypoint's `inbound-vip|<port>|http[/<subset>]|<host>`.
    pub fn contains(&self, cluster: &[u8]) -> bool {
        if self.clusters.iter().any(|c| c.as_bytes() == cluster) {
            return true;
        }
        let Ok(cluster) = std::str::from_utf8(cluster) else {
            return false;
        };
        self.clusters.iter().any(|c| cold_entry_covers(c, cluster))
    }

    /// True when nothing is cold.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// The cold destinations.
    pub fn clusters(&self) -> &[String] {
        &self.clusters
    }

    /// When an answer last confirmed the set.
    pub fn confirmed_ms(&self) -> u64 {
        self.confirmed_ms
    }

    /// The set as it holds at `now_ms`: empty once [`COLD_TTL_MS`] passed without an answer
    /// confirming it.
    pub fn live(self, now_ms: u64) -> Self {
        if now_ms.saturating_sub(self.confirmed_ms) > COLD_TTL_MS {
            Self::default()
        } else {
            self
        }
    }

    /// Whether storing `self` over `stored` changes anything a VM acts on: the destinations, or
    /// (for a non-empty set) a confirmation old enough that VMs could soon take it for stale.
    pub fn worth_storing(&self, stored: &Self) -> bool {
        if self.clusters != stored.clusters {
            return true;
        }
        !self.clusters.is_empty()
            && self.confirmed_ms.saturating_sub(stored.confirmed_ms) >= COLD_TTL_MS / 10
    }
}

/// Why an answer was not used. The cold set is then left as it was (and the answer counted as
/// malformed): a bad answer neither holds nor releases anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Body over `Limits::max_answer_bytes`.
    #[error("answer: {len} bytes, larger than the limit of {max}")]
    TooLarge {
        /// The body's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON.
    #[error("answer: {0}")]
    Json(#[from] JsonError),
    /// JSON, but not an object.
    #[error("answer: expected a JSON object, found {0}")]
    NotObject(&'static str),
    /// `cold` is not an array of strings, or is given twice.
    #[error("answer: cold: {0}")]
    ColdShape(&'static str),
    /// `cold` has more entries than `Limits::max_cold`.
    #[error("answer: cold: {count} entries, more than the limit of {max}")]
    TooMany {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An entry of `cold` breaks a rule of `surge_wire::Answer::validate` (checked here with
    /// the same limits, without building the field paths that validation names: their code
    /// would be in every VM's module).
    #[error("answer: cold[{index}]: {problem}")]
    Entry {
        /// The entry's index.
        index: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

/// Reads the scaler's answer. An empty body, a body without `cold` and `"cold": null` all mean
/// nothing is cold (every answer of a scaler older than holding). Other fields are ignored.
pub fn parse_answer(body: &[u8], limits: &Limits) -> Result<Answer, AnswerError> {
    if body.len() > limits.max_answer_bytes {
        return Err(AnswerError::TooLarge {
            len: body.len(),
            max: limits.max_answer_bytes,
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer::default());
    }
    let members = match json::parse(body)? {
        Json::Object(members) => members,
        other => return Err(AnswerError::NotObject(other.kind())),
    };
    let mut cold: Option<Vec<String>> = None;
    for (key, value) in members {
        if key != "cold" {
            continue;
        }
        if cold.is_some() {
            return Err(AnswerError::ColdShape("given twice"));
        }
        let mut names = Vec::new();
        match value {
            Json::Null => {}
            Json::Array(items) => {
                if items.len() > limits.max_cold {
                    return Err(AnswerError::TooMany {
                        count: items.len(),
                        max: limits.max_cold,
                    });
                }
                for (index, item) in items.into_iter().enumerate() {
                    let Json::String(name) = item else {
                        return Err(AnswerError::ColdShape("expected an array of strings"));
                    };
                    let problem = if name.is_empty() {
                        Some("must not be empty")
                    } else if name.len() > limits.max_cluster_len {
                        Some("longer than the cluster limit")
                    } else if name.chars().any(char::is_control) {
                        Some("contains a control character")
                    } else if names.contains(&name) {
                        Some("repeats an earlier destination")
                    } else {
                        None
                    };
                    if let Some(problem) = problem {
                        return Err(AnswerError::Entry { index, problem });
                    }
                    names.push(name);
                }
            }
            _ => return Err(AnswerError::ColdShape("expected an array of strings")),
        }
        cold = Some(names);
    }
    Ok(Answer {
        cold: cold.unwrap_or_default(),
    })
}

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

    const APP: &str = "outbound|8080||app.default.svc.cluster.local";
    const WEB: &str = "outbound|80||web.shop.svc.cluster.local";

    fn cold(now_ms: u64, clusters: &[&str]) -> ColdSet {
        ColdSet::new(
            now_ms,
            Answer {
                cold: clusters.iter().map(|c| c.to_string()).collect(),
            },
        )
    }

    fn config(max_requests: u64) -> HoldConfig {
        HoldConfig {
            max_requests,
            ..HoldConfig::default()
        }
    }

    #[test]
    fn the_cold_set_round_trips_and_garbage_is_nothing_cold() {
        let set = cold(1_700_000_000_000, &[APP, WEB]);
        assert_eq!(ColdSet::decode(&set.encode()), set);
        assert!(set.contains(APP.as_bytes()));
        assert!(!set.contains(b"outbound|8080||other.default.svc.cluster.local"));
        assert!(!set.contains(b""));
        let empty = cold(5, &[]);
        assert_eq!(ColdSet::decode(&empty.encode()), empty);
        for garbage in [&b""[..], b"x\nabc", b"\xff\xfe", b"\n\n"] {
            assert!(ColdSet::decode(garbage).is_empty(), "{garbage:?}");
        }
    }

    #[test]
    fn a_cold_service_port_covers_its_subsets_and_nothing_else() {
        let set = cold(0, &[APP, "outbound|9090|v1|api.default.svc.cluster.local"]);
        assert!(set.contains(b"outbound|8080|v1|app.default.svc.cluster.local"));
        assert!(set.contains(b"outbound|8080|canary|app.default.svc.cluster.local"));
        // Another port, another host, another direction: not covered.
        assert!(!set.contains(b"outbound|8081|v1|app.default.svc.cluster.local"));
        assert!(!set.contains(b"outbound|8080|v1|app.other.svc.cluster.local"));
        assert!(!set.contains(b"inbound|8080|v1|app.default.svc.cluster.local"));
        // A listed subset covers only itself.
        assert!(set.contains(b"outbound|9090|v1|api.default.svc.cluster.local"));
        assert!(!set.contains(b"outbound|9090|v2|api.default.svc.cluster.local"));
        assert!(!set.contains(b"outbound|9090||api.default.svc.cluster.local"));
    }

    #[test]
    fn a_cold_service_port_covers_a_waypoints_cluster_for_it() {
        let set = cold(0, &[APP, "outbound|9090|v1|api.default.svc.cluster.local"]);
        assert!(set.contains(b"inbound-vip|8080|http|app.default.svc.cluster.local"));
        assert!(set.contains(b"inbound-vip|8080|http/v1|app.default.svc.cluster.local"));
        assert!(!set.contains(b"inbound-vip|8081|http|app.default.svc.cluster.local"));
        assert!(!set.contains(b"inbound-vip|8080|http|app.other.svc.cluster.local"));
        assert!(!set.contains(b"inbound-pod|8080||10.0.0.7"));
        // A listed subset covers only itself, under its own name.
        assert!(!set.contains(b"inbound-vip|9090|http/v1|api.default.svc.cluster.local"));
    }

    #[test]
    fn a_cold_set_no_answer_confirmed_for_the_ttl_is_dropped() {
        let set = cold(1_000, &[APP]);
        assert!(!set.clone().live(1_000 + COLD_TTL_MS).is_empty());
        assert!(set.live(1_001 + COLD_TTL_MS).is_empty());
    }

    #[test]
    fn the_cold_set_is_stored_on_a_change_or_an_ageing_confirmation_only() {
        let stored = cold(1_000, &[APP]);
        assert!(!cold(1_500, &[APP]).worth_storing(&stored));
        assert!(cold(1_000 + COLD_TTL_MS / 10, &[APP]).worth_storing(&stored));
        assert!(cold(1_500, &[APP, WEB]).worth_storing(&stored));
        assert!(cold(1_500, &[]).worth_storing(&stored));
        assert!(!cold(99_000, &[]).worth_storing(&cold(1_000, &[])));
    }

    #[test]
    fn answers_of_older_scalers_and_empty_bodies_mean_nothing_cold() {
        let limits = Limits::default();
        for body in [
            &b""[..],
            b"  \n",
            br#"{"outcome":"accepted","targets":1}"#,
            br#"{"cold":null}"#,
            br#"{"cold":[]}"#,
        ] {
            assert_eq!(
                parse_answer(body, &limits),
                Ok(Answer::default()),
                "{body:?}"
            );
        }
        let answer = parse_answer(
            br#"{"outcome":"accepted","cold":["outbound|8080||app.default.svc.cluster.local"],"x":{"y":[1]}}"#,
            &limits,
        )
        .unwrap();
        assert_eq!(answer.cold, [APP]);
    }

    #[test]
    fn malformed_answers_are_refused_with_a_reason() {
        let limits = Limits {
            max_answer_bytes: 64,
            max_cluster_len: 32,
            ..Limits::default()
        };
        let cases: &[(&[u8], &str)] = &[
            (b"ok", "not valid JSON"),
            (b"[1]", "expected a JSON object, found an array"),
            (br#"{"cold":"a"}"#, "cold: expected an array of strings"),
            (br#"{"cold":[1]}"#, "cold: expected an array of strings"),
            (br#"{"cold":["a"],"cold":[]}"#, "cold: given twice"),
            (br#"{"cold":["a","a"]}"#, "cold[1]: repeats"),
            (br#"{"cold":[""]}"#, "cold[0]: must not be empty"),
            (
                br#"{"cold":["a\nb"]}"#,
                "cold[0]: contains a control character",
            ),
            (&[b' '; 65], "65 bytes, larger than the limit of 64"),
            (
                br#"{"cold":["0123456789012345678901234567890123456789"]}"#,
                "cold[0]: longer than the cluster limit",
            ),
        ];
        for (body, expected) in cases {
            let message = parse_answer(body, &limits).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
        let many = format!(
            r#"{{"cold":[{}]}}"#,
            (0..257)
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let message = parse_answer(many.as_bytes(), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("cold: 257 entries"), "{message}");
    }

    /// The filter checks answers itself (see [`AnswerError::Entry`]); it must accept exactly
    /// what the wire contract's validation accepts.
    #[test]
    fn the_filter_reads_answers_by_the_wire_contract_rules() {
        let limits = Limits::default();
        let long = "c".repeat(limits.max_cluster_len);
        let too_long = "c".repeat(limits.max_cluster_len + 1);
        let cases: Vec<Vec<String>> = vec![
            vec![APP.into(), WEB.into()],
            vec![long],
            vec![too_long],
            vec![String::new()],
            vec!["a\u{1}".into()],
            vec!["tab\tin".into()],
            vec!["é😀 spaces ok".into()],
            vec![APP.into(), APP.into()],
            (0..256).map(|i| i.to_string()).collect(),
            (0..257).map(|i| i.to_string()).collect(),
        ];
        for cold in cases {
            let answer = Answer { cold };
            let body = format!(
                "{{\"cold\":[{}]}}",
                answer
                    .cold
                    .iter()
                    .map(|c| format!("\"{}\"", c.replace('\t', "\\t").replace('\u{1}', "\\u0001")))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let wire = answer.validate(&limits);
            let filter = parse_answer(body.as_bytes(), &limits);
            assert_eq!(
                wire.is_ok(),
                filter.is_ok(),
                "{body}: {wire:?} / {filter:?}"
            );
            if let Ok(parsed) = filter {
                assert_eq!(parsed, answer);
            }
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

    #[test]
    fn keys_carry_the_shared_prefix() {
        for key in [COLD_KEY, HELD_KEY, &wake_queue(7)] {
            assert!(key.starts_with(crate::lease::KEY_PREFIX));
        }
    }
}

//! The cold set: the destinations the scaler's last answer said are cold, as stored in shared
//! data and copied by every VM, and the reading of that answer.

use surge_wire::{Answer, Limits, cold_entry_covers};

use super::COLD_TTL_MS;
use crate::json::{self, Json, JsonError};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::fixtures::{APP, WEB, cold};

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
}

//! Route keys and the process-wide route table.
//!
//! A request is counted under the key (route, cluster): the route is `xds.route_name`, or the
//! virtual host's name when the route is unnamed; the cluster is `xds.cluster_name`. Names come
//! from configuration the filter does not control, so they are sanitised (valid UTF-8, no control
//! characters, bounded length) before they become part of a report.
//!
//! Every key gets a small index, the same in every VM of the proxy, through a table kept in
//! shared data; the index names the key's host metrics. The table is capped: once full, new keys
//! are counted under the single overflow key [`OTHER_ROUTE`], so nothing grows with traffic.

use crate::config::RouteKeyConfig;

/// The overflow key's route name.
pub const OTHER_ROUTE: &str = "other";

/// Longest route name kept (the wire format's limit).
pub const MAX_ROUTE_LEN: usize = 256;

/// Longest cluster name kept (the wire format's limit).
pub const MAX_CLUSTER_LEN: usize = 512;

/// The (route, cluster) a request is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// Route name (sanitised).
    pub route: String,
    /// Upstream cluster (sanitised; empty when the config leaves clusters out).
    pub cluster: String,
}

impl RouteKey {
    /// Builds the key from raw property values (`None` when a property is absent).
    pub fn from_properties(
        route_name: Option<&[u8]>,
        virtual_host: Option<&[u8]>,
        cluster: Option<&[u8]>,
        options: &RouteKeyConfig,
    ) -> Self {
        let route = match route_name {
            Some(name) if !name.is_empty() => name,
            _ if options.virtual_host_fallback => virtual_host.unwrap_or_default(),
            _ => &[],
        };
        let cluster = if options.include_cluster {
            cluster.unwrap_or_default()
        } else {
            &[]
        };
        Self {
            route: sanitize(route, MAX_ROUTE_LEN),
            cluster: sanitize(cluster, MAX_CLUSTER_LEN),
        }
    }

    /// The overflow key.
    pub fn other() -> Self {
        Self {
            route: OTHER_ROUTE.into(),
            cluster: String::new(),
        }
    }

    /// True for the overflow key.
    pub fn is_other(&self) -> bool {
        self.route == OTHER_ROUTE && self.cluster.is_empty()
    }
}

/// Turns arbitrary bytes into a bounded, printable string: invalid UTF-8 and control
/// characters become `_`; the result is cut at a character boundary within `max_len` bytes.
pub fn sanitize(raw: &[u8], max_len: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max_len));
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            let c = if c.is_control() { '_' } else { c };
            if out.len() + c.len_utf8() > max_len {
                return out;
            }
            out.push(c);
        }
        if !chunk.invalid().is_empty() {
            if out.len() + 1 > max_len {
                return out;
            }
            out.push('_');
        }
    }
    out
}

/// Where a key is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The key's index in the table.
    Index(usize),
    /// The overflow key (table full, or the key is `other` itself).
    Other,
}

/// What [`RouteTable::register`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The key is already in the table.
    Existing(Slot),
    /// The key was appended; the new encoded table must be written back (with CAS).
    Appended {
        /// The key's slot.
        slot: Slot,
        /// The table to store.
        encoded: Vec<u8>,
    },
}

/// The shared list of route keys; a key's position is its index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    keys: Vec<RouteKey>,
}

impl RouteTable {
    /// Decodes the stored form: one `route\tcluster` per line (sanitised names hold neither tab
    /// nor newline). Malformed lines are skipped rather than failing the whole table.
    pub fn decode(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let keys = text
            .split('\n')
            .filter_map(|line| {
                let (route, cluster) = line.split_once('\t')?;
                Some(RouteKey {
                    route: route.into(),
                    cluster: cluster.into(),
                })
            })
            .collect();
        Self { keys }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for key in &self.keys {
            out.extend_from_slice(key.route.as_bytes());
            out.push(b'\t');
            out.extend_from_slice(key.cluster.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// The keys in index order.
    pub fn keys(&self) -> &[RouteKey] {
        &self.keys
    }

    /// The slot of `key` if it is known.
    pub fn find(&self, key: &RouteKey) -> Option<Slot> {
        if key.is_other() {
            return Some(Slot::Other);
        }
        self.keys.iter().position(|k| k == key).map(Slot::Index)
    }

    /// Finds `key` or appends it when fewer than `cap` keys are known; a full table sends new
    /// keys to [`Slot::Other`].
    pub fn register(&mut self, key: &RouteKey, cap: usize) -> Registration {
        if let Some(slot) = self.find(key) {
            return Registration::Existing(slot);
        }
        if self.keys.len() >= cap {
            return Registration::Existing(Slot::Other);
        }
        self.keys.push(key.clone());
        Registration::Appended {
            slot: Slot::Index(self.keys.len() - 1),
            encoded: self.encode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(route: &str, cluster: &str) -> RouteKey {
        RouteKey {
            route: route.into(),
            cluster: cluster.into(),
        }
    }

    /// A gateway's defaults: the cluster is part of the key.
    fn gateway() -> RouteKeyConfig {
        RouteKeyConfig {
            include_cluster: true,
            ..RouteKeyConfig::default()
        }
    }

    #[test]
    fn a_sidecar_key_leaves_the_cluster_out_by_default() {
        let k = RouteKey::from_properties(
            Some(b"default"),
            None,
            Some(b"inbound|8080||"),
            &RouteKeyConfig::default(),
        );
        assert_eq!(k, key("default", ""));
    }

    #[test]
    fn route_name_wins_over_virtual_host() {
        let k = RouteKey::from_properties(
            Some(b"checkout"),
            Some(b"vh"),
            Some(b"inbound|8080||"),
            &gateway(),
        );
        assert_eq!(k, key("checkout", "inbound|8080||"));
    }

    #[test]
    fn unnamed_route_falls_back_to_virtual_host() {
        let options = gateway();
        let k = RouteKey::from_properties(Some(b""), Some(b"vh"), Some(b"c"), &options);
        assert_eq!(k, key("vh", "c"));
        let k = RouteKey::from_properties(None, Some(b"vh"), None, &options);
        assert_eq!(k, key("vh", ""));
    }

    #[test]
    fn fallback_and_cluster_can_be_turned_off() {
        let options = RouteKeyConfig {
            virtual_host_fallback: false,
            include_cluster: false,
        };
        let k = RouteKey::from_properties(None, Some(b"vh"), Some(b"c"), &options);
        assert_eq!(k, key("", ""));
    }

    #[test]
    fn sanitize_replaces_control_characters_and_invalid_utf8() {
        assert_eq!(sanitize(b"a\tb\nc", 100), "a_b_c");
        assert_eq!(sanitize(b"a\xffb", 100), "a_b");
        assert_eq!(sanitize("caf\u{e9}".as_bytes(), 100), "caf\u{e9}");
    }

    #[test]
    fn sanitize_cuts_at_a_character_boundary() {
        assert_eq!(sanitize("\u{e9}\u{e9}".as_bytes(), 3), "\u{e9}");
        assert_eq!(sanitize(&[b'x'; 600], MAX_ROUTE_LEN).len(), MAX_ROUTE_LEN);
    }

    #[test]
    fn table_round_trips_through_its_encoding() {
        let mut table = RouteTable::default();
        table.register(&key("a", "inbound|80||"), 10);
        table.register(&key("b", ""), 10);
        assert_eq!(RouteTable::decode(&table.encode()), table);
    }

    #[test]
    fn registering_a_known_key_changes_nothing() {
        let mut table = RouteTable::default();
        assert!(matches!(
            table.register(&key("a", "c"), 10),
            Registration::Appended {
                slot: Slot::Index(0),
                ..
            }
        ));
        assert_eq!(
            table.register(&key("a", "c"), 10),
            Registration::Existing(Slot::Index(0))
        );
        assert_eq!(table.keys().len(), 1);
    }

    #[test]
    fn a_full_table_sends_new_keys_to_other() {
        let mut table = RouteTable::default();
        table.register(&key("a", ""), 2);
        table.register(&key("b", ""), 2);
        assert_eq!(
            table.register(&key("c", ""), 2),
            Registration::Existing(Slot::Other)
        );
        assert_eq!(table.keys().len(), 2);
        // Keys registered before the table filled keep their index.
        assert_eq!(table.find(&key("b", "")), Some(Slot::Index(1)));
    }

    #[test]
    fn the_other_key_is_never_registered() {
        let mut table = RouteTable::default();
        assert_eq!(
            table.register(&RouteKey::other(), 10),
            Registration::Existing(Slot::Other)
        );
    }

    #[test]
    fn malformed_table_lines_are_skipped() {
        let table = RouteTable::decode(b"a\tc\nbroken\n\nb\t\n");
        assert_eq!(table.keys(), &[key("a", "c"), key("b", "")]);
    }
}

//! What must hold for ANY pluginConfig and ANY property bytes given to the filter's pure code.
//!
//! The filter crate is built as a cdylib only (with an rlib beside it, LTO leaves the .wasm
//! about 25 % larger), so nothing can link against it; instead the fuzz targets and the corpus
//! replay test (`tests/tests/fuzz_corpus.rs`) compile the filter's pure modules themselves with
//! `#[path]` and this file beside them, which expects `crate::config` and `crate::route`.

#![allow(dead_code)]

use crate::config::{Config, RouteKeyConfig};
use crate::route::{MAX_CLUSTER_LEN, MAX_ROUTE_LEN, Registration, RouteKey, RouteTable};

/// Any pluginConfig is either refused with an error naming a field, or yields a config that
/// validates (the filter only ever runs with one).
pub fn filter_config(data: &[u8]) {
    match Config::parse(data) {
        Ok(config) => assert!(config.validate().is_ok()),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

/// Route keys built from arbitrary property bytes stay bounded and printable; the shared route
/// table decodes any bytes and never grows past its cap.
pub fn route_key(data: &[u8]) {
    // Split the input into the three properties; the first two bytes choose the cuts.
    let (cut_a, cut_b) = match data {
        [a, b, ..] => (usize::from(*a), usize::from(*b)),
        _ => (0, 0),
    };
    let rest = data.get(2..).unwrap_or_default();
    let (route, rest) = rest.split_at(cut_a.min(rest.len()));
    let (virtual_host, cluster) = rest.split_at(cut_b.min(rest.len()));
    for (virtual_host_fallback, include_cluster) in [(true, true), (false, false)] {
        let options = RouteKeyConfig {
            virtual_host_fallback,
            include_cluster,
            ..RouteKeyConfig::default()
        };
        let key =
            RouteKey::from_properties(Some(route), Some(virtual_host), Some(cluster), &options);
        assert!(key.route.len() <= MAX_ROUTE_LEN && key.cluster.len() <= MAX_CLUSTER_LEN);
        assert!(
            !key.route
                .chars()
                .chain(key.cluster.chars())
                .any(char::is_control)
        );
    }

    let mut table = RouteTable::decode(data);
    let cap = usize::from(data.first().copied().unwrap_or(4) % 8);
    let key =
        RouteKey::from_properties(Some(route), None, Some(cluster), &RouteKeyConfig::default());
    let before = table.keys().len();
    match table.register(&key, cap) {
        Registration::Appended { encoded, .. } => {
            assert!(table.keys().len() == before + 1 && before < cap);
            assert_eq!(RouteTable::decode(&encoded).keys(), table.keys());
        }
        Registration::Existing(_) => assert!(table.keys().len() == before),
    }
    let again = RouteTable::decode(&table.encode());
    assert_eq!(again.keys(), table.keys());
}


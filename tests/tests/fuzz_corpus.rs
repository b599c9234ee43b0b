//! Replays the committed fuzz corpus of every target (the wire decoder, the scaler's ingest
//! handler, the filter's pluginConfig parser and route keys; `fuzz/corpus/<target>/`) through
//! the same checks the fuzz targets run, so every input a fuzzer kept, and every crash it found,
//! is re-checked on each `make test` without a fuzzer.

use std::path::PathBuf;

use surge_e2e::fuzz_checks;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 3,
        "{}: the corpus should hold at least the seeds",
        dir.display()
    );
    inputs
}

fn replay(target: &str, check: impl Fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
    }
}

#[test]
fn the_wire_corpus_decodes_and_validates_without_surprises() {
    replay("wire_report", fuzz_checks::wire_report);
}

#[test]
fn the_ingest_corpus_gets_documented_answers() {
    replay("ingest", |data| fuzz_checks::Ingest::shared().post(data));
}

#[test]
fn the_filter_config_corpus_is_parsed_or_refused_naming_a_field() {
    replay("filter_config", fuzz_checks::filter_config);
}

#[test]
fn the_route_key_corpus_gives_bounded_printable_keys() {
    replay("route_key", fuzz_checks::route_key);
}

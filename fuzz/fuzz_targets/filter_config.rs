//! Fuzz target: see `surge_e2e::fuzz_checks::filter_config` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| surge_e2e::fuzz_checks::filter_config(data));

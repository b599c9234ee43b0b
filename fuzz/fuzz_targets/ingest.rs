//! Fuzz target: the scaler's `POST /v1/reports` handler; see `surge_e2e::fuzz_checks::Ingest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| surge_e2e::fuzz_checks::Ingest::shared().post(data));

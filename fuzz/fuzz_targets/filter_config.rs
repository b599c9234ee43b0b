//! Fuzz target: see `fuzz/checks/filter.rs` (`filter_config`) for the properties checked.
#![no_main]

// Each target uses part of the filter's pure modules; the rest is dead code here.
#[path = "../../filter/src/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../../filter/src/json.rs"]
#[allow(dead_code)]
mod json;
#[path = "../../filter/src/route.rs"]
#[allow(dead_code)]
mod route;
#[path = "../checks/filter.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::filter_config(data));

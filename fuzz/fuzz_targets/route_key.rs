//! Fuzz target: see `fuzz/checks/filter.rs` (`route_key`) for the properties checked.
#![no_main]

#[path = "../../filter/src/config.rs"]
mod config;
#[path = "../../filter/src/json.rs"]
mod json;
#[path = "../../filter/src/route.rs"]
mod route;
#[path = "../checks/filter.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::route_key(data));

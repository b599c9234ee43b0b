//! `surge-e2e`: shared harness for Surge's end-to-end tests (placeholder).

pub mod capture;
pub mod upstream;

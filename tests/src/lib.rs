//! `surge-e2e`: shared harness for Surge's end-to-end tests (placeholder).

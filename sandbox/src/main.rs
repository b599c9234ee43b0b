//! The `surge-sandbox` binary (placeholder).
fn main() {}

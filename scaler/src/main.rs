//! The `surge-scaler` binary (placeholder).
fn main() {}

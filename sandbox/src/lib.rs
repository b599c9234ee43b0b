//! `surge-sandbox`: placeholder, replaced by the sandbox work.

pub mod envoy;
pub mod process;

//! `surge-e2e`: the shared harness of Surge's end-to-end tests (a capture server standing in
//! for the scaler, a loopback upstream, nftables faults on one port) and the properties the
//! fuzz targets check.

pub mod capture;
pub mod fuzz_checks;
pub mod nft;
pub mod scaler;
pub mod upstream;

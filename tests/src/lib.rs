//! `surge-e2e`: the shared harness of Surge's end-to-end tests (a capture server standing in
//! for the scaler, a loopback upstream, the scaler binary, and faults: nftables rules on one
//! port, a delaying TCP proxy) and the properties the fuzz targets check.

pub mod capture;
pub mod cold_scaler;
pub mod delay_proxy;
pub mod fuzz_checks;
pub mod ha;
pub mod installed;
pub mod sandbox_run;
/// nftables faults on one loopback port (the sandbox uses them too).
pub use surge_sandbox::nft;
pub mod scaler;
pub mod upstream;
pub mod waypoint;
pub mod zero_proxy;

//! Where Karpenter is, as `cluster/build-karpenter.sh` builds the version pinned in
//! `cluster/versions.env`: `.tools/karpenter/<version>/{bin,crds}`.

use std::path::{Path, PathBuf};

use surge_cluster::components::{tools_dir, version};

use crate::{NodesError, Result};

/// The pinned Karpenter version (`v1.14.1`).
pub fn karpenter_version() -> &'static str {
    version("KARPENTER_VERSION").unwrap_or("unknown")
}

fn karpenter_dir() -> PathBuf {
    tools_dir().join("karpenter").join(karpenter_version())
}

fn missing(what: &str, path: &Path) -> NodesError {
    NodesError::Missing(format!(
        "{what} is not built (looked at {}); run `make node-tools` (cluster/build-karpenter.sh, \
         about 2 minutes the first time on 2 cores)",
        path.display()
    ))
}

/// Karpenter with its kwok cloud provider (`karpenter-kwok`).
pub fn karpenter() -> Result<PathBuf> {
    let path = karpenter_dir().join("bin").join("karpenter-kwok");
    // The stamp is written only once the binary built and started.
    let stamped = std::fs::read_to_string(karpenter_dir().join("bin").join("version"))
        .is_ok_and(|v| v.trim() == karpenter_version());
    if path.is_file() && stamped {
        Ok(path)
    } else {
        Err(missing(
            &format!("Karpenter {} (kwok provider)", karpenter_version()),
            &path,
        ))
    }
}

/// The folder of Karpenter's CRDs (NodePool, NodeClaim, NodeOverlay, CapacityBuffer,
/// KWOKNodeClass).
pub fn karpenter_crds() -> Result<PathBuf> {
    let dir = karpenter_dir().join("crds");
    if dir.join(".complete").is_file() {
        Ok(dir)
    } else {
        Err(missing(
            &format!("Karpenter {}'s CRDs", karpenter_version()),
            &dir,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_version_is_read_from_versions_env() {
        assert!(
            karpenter_version().starts_with("v1."),
            "{}",
            karpenter_version()
        );
    }
}

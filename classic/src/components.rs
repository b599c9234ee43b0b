//! Where the classic chain's components are, as `cluster/build-classic.sh` builds the versions
//! pinned in `cluster/versions.env`: KEDA in `.tools/keda/<version>/{bin,crds}`, Prometheus in
//! `.tools/prometheus/<version>/bin`.

use std::path::PathBuf;

use surge_cluster::components::{tools_dir, version};

use crate::{ClassicError, Result};

/// The pinned KEDA version (`v2.21.0`).
pub fn keda_version() -> &'static str {
    version("KEDA_VERSION").unwrap_or("unknown")
}

fn keda_dir() -> PathBuf {
    tools_dir().join("keda").join(keda_version())
}

fn missing(what: &str, path: &std::path::Path) -> ClassicError {
    ClassicError::Missing(format!(
        "{what} is not built (looked at {}); run `make classic-tools` (cluster/build-classic.sh, \
         about 12 minutes the first time on 2 cores)",
        path.display()
    ))
}

/// A KEDA binary (`keda`, the operator, or `keda-adapter`, the metrics API server).
pub fn keda(name: &str) -> Result<PathBuf> {
    let path = keda_dir().join("bin").join(name);
    // The stamp is written only once both binaries built and started.
    let stamp = keda_dir().join("bin").join("version");
    let stamped = std::fs::read_to_string(&stamp).is_ok_and(|v| v.trim() == keda_version());
    if path.is_file() && stamped {
        Ok(path)
    } else {
        Err(missing(&format!("KEDA {} ({name})", keda_version()), &path))
    }
}

/// The folder of KEDA's CRDs.
pub fn keda_crds() -> Result<PathBuf> {
    let dir = keda_dir().join("crds");
    if dir.join(".complete").is_file() {
        Ok(dir)
    } else {
        Err(missing(&format!("KEDA {}'s CRDs", keda_version()), &dir))
    }
}

/// The pinned Prometheus module version (`v0.316.0`, which is Prometheus 3.16.0).
pub fn prometheus_version() -> &'static str {
    version("PROMETHEUS_VERSION").unwrap_or("unknown")
}

/// Prometheus as `cluster/build-classic.sh` builds it (or `$SURGE_PROMETHEUS`).
pub fn prometheus() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SURGE_PROMETHEUS") {
        return Ok(PathBuf::from(path));
    }
    let path = tools_dir()
        .join("prometheus")
        .join(prometheus_version())
        .join("bin")
        .join("prometheus");
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(
            &format!("Prometheus {}", prometheus_version()),
            &path,
        ))
    }
}

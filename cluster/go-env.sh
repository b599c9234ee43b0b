# Sourced by build-components.sh and build-classic.sh: the pinned versions and one Go
# environment for both (caches under .tools/go, never the user's). Sets `root`, `tools`, exports
# the Go settings and defines go_caches_drop.
# shellcheck shell=bash
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.env
. "$root/cluster/versions.env"
tools=$root/.tools
# -modcacherw: the module cache stays deletable (rm -rf .tools, git clean -fdx). GOTMPDIR: a build
# that is killed leaves its work folder (~1 GB) here, where go_caches_drop finds it, not in /tmp.
export GOMODCACHE=$tools/go/mod GOCACHE=$tools/go/cache GOTMPDIR=$tools/go/tmp \
  GOFLAGS="-buildvcs=false -modcacherw" GOTOOLCHAIN=local CGO_ENABLED=0 \
  GOPROXY=${GOPROXY:-https://proxy.golang.org} GONOSUMDB= GOPRIVATE=
mkdir -p "$GOTMPDIR"
# One Go build at a time. Every script drops the shared caches when it is done, and
# build-components.sh does so even when it finds everything built (validate-manifests.sh runs it
# that way): beside a running build that pulled the module cache from under it ("open
# .tools/go/mod/...: no such file or directory" in `make classic-tools`). The lock is held
# until the sourcing script exits; two builds at once gain nothing on 2 cores anyway.
# (flock is util-linux's; a machine without it runs unlocked, as before.)
if command -v flock >/dev/null; then
  exec 9>"$tools/go/.lock"
  if ! flock -n 9; then
    echo "go-env: another Go build holds .tools/go; waiting for it" >&2
    flock 9
  fi
fi

# Called once a script's binaries are in place: drops the module and build caches. They reach
# ~13 GB after Kubernetes, etcd, helm, Prometheus and KEDA, and nothing reads them again (the
# binaries are kept by version under .tools/); a CI run failed with "no space left on device"
# in the Prometheus build on a machine that had ~9 GB free. The price: a script that builds
# again (a version bump) downloads its modules again.
go_caches_drop() { rm -rf "$GOMODCACHE" "$GOCACHE" "$GOTMPDIR"; }

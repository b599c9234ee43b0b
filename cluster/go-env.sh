# Sourced by build-components.sh and build-classic.sh: the pinned versions and one Go
# environment for both, so that they share .tools/go's module and build caches. Sets `root`,
# `tools` and exports the Go settings.
# shellcheck shell=bash
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.env
. "$root/cluster/versions.env"
tools=$root/.tools
# -modcacherw: the module cache stays deletable (rm -rf .tools, git clean -fdx).
export GOMODCACHE=$tools/go/mod GOCACHE=$tools/go/cache GOFLAGS="-buildvcs=false -modcacherw" \
  GOTOOLCHAIN=local CGO_ENABLED=0 GOPROXY=${GOPROXY:-https://proxy.golang.org} GONOSUMDB= GOPRIVATE=

#!/usr/bin/env bash
# Builds the real Kubernetes control plane from its published Go modules (the module proxy only)
# into .tools/, keyed by version; a second run only checks. Called by scripts/tools.sh.
#
#   .tools/kube/<K8S_VERSION>/bin/   kube-apiserver kube-controller-manager kube-scheduler kubectl
#   .tools/etcd/<ETCD_VERSION>/bin/  etcd
#   .tools/helm/<HELM_VERSION>/bin/  helm
#   .tools/go/{mod,cache,tmp}        the Go caches, dropped once the binaries are in place
#
# k8s.io/kubernetes cannot be built with `go install pkg@version`: its go.mod replaces its ~31
# staging modules (k8s.io/api, k8s.io/client-go, ...) with folders of its own tree, and the module
# proxy serves no such folders. So each component is built from a scratch wrapper module that
# requires k8s.io/kubernetes and replaces every staging module, as read from that go.mod (never a
# hard-coded list), with its published v0.<minor>.<patch>. etcd's server module does the same
# with ../api and friends; its wrapper needs no replace, since a dependency's replaces are ignored
# and its requirements name published versions. helm's module has no replaces: `go install` works.
set -euo pipefail
# shellcheck source=go-env.sh
. "$(dirname "$0")/go-env.sh"
kube_bin=$tools/kube/$K8S_VERSION/bin
etcd_bin=$tools/etcd/$ETCD_VERSION/bin
helm_bin=$tools/helm/$HELM_VERSION/bin
kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
start=$(date +%s)

say() { printf 'components: [%4ds] %s\n' "$(($(date +%s) - start))" "$*"; }

# built NAME DIR EXPECT: true when DIR/NAME runs and prints a version containing EXPECT.
built() {
  local out
  out=$("$2/$1" --version 2>/dev/null || "$2/$1" version --client 2>/dev/null ||
    "$2/$1" version --short 2>/dev/null) || return 1
  [[ $out == *"$3"* ]]
}

kube_ok=true
for c in "${kube_cmds[@]}"; do built "$c" "$kube_bin" "$K8S_VERSION" || kube_ok=false; done
etcd_ok=true
built etcd "$etcd_bin" "${ETCD_VERSION#v}" || etcd_ok=false
helm_ok=true
# helm's default Kubernetes version (for `helm template` and lint without a cluster) is set at
# link time, as helm's own Makefile does it; the stamp records that this build has it.
built helm "$helm_bin" "$HELM_VERSION" && [ -f "$helm_bin/kube-version" ] || helm_ok=false
if $kube_ok && $etcd_ok && $helm_ok; then
  say "Kubernetes $K8S_VERSION, etcd $ETCD_VERSION and helm $HELM_VERSION already built (.tools/)"
  go_caches_drop
  exit 0
fi

command -v go >/dev/null || { echo "components: go is not installed (Go >= 1.26 is needed)" >&2; exit 1; }
# etcd 3.6 and helm 3.22 need Go 1.26 (Kubernetes 1.35 needs 1.25); GOTOOLCHAIN=local keeps the
# build on the machine's Go rather than downloading another.
if ! go version | grep -Eq 'go1\.(2[6-9]|[3-9][0-9])'; then
  echo "components: $(go version) is too old: install Go >= 1.26, or run with GOTOOLCHAIN=auto" \
    "(Go >= 1.21 then fetches the toolchain through the module proxy)" >&2
  exit 1
fi
say "$(go version); building into .tools/ (cold: about 8 minutes on 2 cores)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! $kube_ok; then
  minor=${K8S_VERSION#v1.}          # 35.4
  staging_version=v0.$minor         # v0.35.4
  mkdir -p "$work/kube"
  cd "$work/kube"
  go mod init surge.local/kube-components 2>/dev/null
  say "k8s.io/kubernetes@$K8S_VERSION: reading its go.mod"
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["GoMod"])')
  mapfile -t staging < <(sed -n '/^replace (/,/^)/s/^[[:space:]]*\([^[:space:]]*\) => \.\/staging\/.*/\1/p' "$gomod")
  [ "${#staging[@]}" -gt 20 ] || { echo "components: found only ${#staging[@]} staging modules in $gomod" >&2; exit 1; }
  edits=()
  for m in "${staging[@]}"; do edits+=(-replace "$m=$m@$staging_version"); done
  go mod edit "${edits[@]}"
  # The same GODEBUG defaults as the release build (kubernetes' go.mod sets them).
  godebug=$(sed -n 's/^godebug //p' "$gomod")
  [ -z "$godebug" ] || go mod edit -godebug "$godebug"
  say "replacing ${#staging[@]} staging modules with $staging_version; resolving (downloads ~1 GB the first time)"
  pkgs=()
  for c in "${kube_cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  # Only grep's "no line left" is forgiven, not a failure of go get (pipefail).
  go get "${pkgs[@]/%/@$K8S_VERSION}" 2>&1 | { grep -v '^go: \(downloading\|added\|upgraded\)' || true; }
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$kube_bin"
  for c in "${kube_cmds[@]}"; do
    say "building $c $K8S_VERSION"
    go build -trimpath -ldflags "$ldflags" -o "$kube_bin/$c" "k8s.io/kubernetes/cmd/$c"
  done
  for c in "${kube_cmds[@]}"; do built "$c" "$kube_bin" "$K8S_VERSION" ||
    { echo "components: $kube_bin/$c does not report $K8S_VERSION" >&2; exit 1; }; done
fi

if ! $etcd_ok; then
  mkdir -p "$work/etcd"
  cd "$work/etcd"
  go mod init surge.local/etcd-component 2>/dev/null
  say "go.etcd.io/etcd/server/v3@$ETCD_VERSION: resolving"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" 2>&1 | { grep -v '^go: \(downloading\|added\|upgraded\)' || true; }
  say "building etcd $ETCD_VERSION"
  mkdir -p "$etcd_bin"
  go build -trimpath -ldflags "-s -w" -o "$etcd_bin/etcd" go.etcd.io/etcd/server/v3
  built etcd "$etcd_bin" "${ETCD_VERSION#v}" ||
    { echo "components: $etcd_bin/etcd does not report $ETCD_VERSION" >&2; exit 1; }
fi
if ! $helm_ok; then
  say "building helm $HELM_VERSION"
  helm_mod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["GoMod"])')
  # k8s.io/client-go v0.N.x is Kubernetes 1.N.
  client_minor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$helm_mod" | head -n 1)
  [ -n "$client_minor" ] || { echo "components: no k8s.io/client-go in $helm_mod" >&2; exit 1; }
  helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_minor"
  done
  GOBIN=$helm_bin go install -trimpath -ldflags "$helm_ldflags" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" 2>&1 | { grep -v '^go: downloading' || true; }
  echo "1.$client_minor" >"$helm_bin/kube-version"
  built helm "$helm_bin" "$HELM_VERSION" ||
    { echo "components: $helm_bin/helm does not report $HELM_VERSION" >&2; exit 1; }
fi
go_caches_drop
say "done: $kube_bin, $etcd_bin, $helm_bin"

#!/usr/bin/env bash
# Builds Karpenter with its kwok cloud provider (node elasticity for real, issue 16) into
# .tools/, keyed by version; a second run only checks. `make node-tools` runs it.
#
#   .tools/karpenter/<KARPENTER_VERSION>/bin/karpenter-kwok   sigs.k8s.io/karpenter/kwok: the whole
#                                     of Karpenter (provisioning, disruption, NodeClaim
#                                     lifecycle) over a cloud provider whose "instances" are Node
#                                     objects it creates itself
#   .tools/karpenter/<KARPENTER_VERSION>/crds/   its CRDs: pkg/apis/crds/ (NodePool, NodeClaim,
#                                     NodeOverlay, CapacityBuffer) and kwok/apis/crds/
#                                     (KWOKNodeClass)
#
# The module has no replace directives, so `go install pkg@version` works. Its main package is
# named kwok, as is kwok's own binary: the result is renamed so that the two cannot be confused.
# Karpenter's Makefile stamps the version into sigs.k8s.io/karpenter/pkg/operator.Version.
set -euo pipefail
# shellcheck source=go-env.sh
. "$(dirname "$0")/go-env.sh"
mod=sigs.k8s.io/karpenter
out=$tools/karpenter/$KARPENTER_VERSION
start=$(date +%s)

say() { printf 'karpenter: [%4ds] %s\n' "$(($(date +%s) - start))" "$*"; }

if [ -x "$out/bin/karpenter-kwok" ] && [ -f "$out/crds/.complete" ] &&
  [ "$(cat "$out/bin/version" 2>/dev/null)" = "$KARPENTER_VERSION" ]; then
  say "Karpenter $KARPENTER_VERSION (kwok provider) already built ($out)"
  go_caches_drop
  exit 0
fi

command -v go >/dev/null || { echo "karpenter: go is not installed (Go >= 1.26.6 is needed)" >&2; exit 1; }
say "$mod@$KARPENTER_VERSION: downloading"
dir=$(go mod download -json "$mod@$KARPENTER_VERSION" |
  python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["Dir"])')
rm -rf "$out"
mkdir -p "$out/bin" "$out/crds"
cp "$dir"/pkg/apis/crds/*.yaml "$dir"/kwok/apis/crds/*.yaml "$out/crds/"
chmod u+w "$out"/crds/*.yaml
for crd in nodepools.karpenter.sh nodeclaims.karpenter.sh kwoknodeclasses.karpenter.kwok.sh; do
  grep -qx "  name: $crd" "$out"/crds/*.yaml ||
    { echo "karpenter: no $crd CRD in $mod@$KARPENTER_VERSION (did the CRDs move?)" >&2; exit 1; }
done
echo "$mod@$KARPENTER_VERSION pkg/apis/crds kwok/apis/crds" >"$out/crds/.complete"
say "CRDs: $(find "$out/crds" -name "*.yaml" | wc -l) files in $out/crds"

say "building $mod/kwok@$KARPENTER_VERSION (cold, on 2 cores: several minutes)"
GOBIN=$out/bin go install -trimpath \
  -ldflags "-s -w -X $mod/pkg/operator.Version=$KARPENTER_VERSION" \
  "$mod/kwok@$KARPENTER_VERSION" 2>&1 | { grep -v '^go: downloading' || true; }
mv "$out/bin/kwok" "$out/bin/karpenter-kwok"
# It reads its flags from the environment as well; --help answers without a cluster.
"$out/bin/karpenter-kwok" --help >/dev/null 2>&1 ||
  { echo "karpenter: $out/bin/karpenter-kwok does not start" >&2; exit 1; }
echo "$KARPENTER_VERSION" >"$out/bin/version"
go_caches_drop
say "done: $out"

#!/usr/bin/env bash
# Builds the classic chain's own components (what Surge is compared with) into .tools/, keyed by
# version; a second run only checks. `make classic-tools` runs it.
#
#   .tools/keda/<KEDA_VERSION>/bin/   keda (the operator) and keda-adapter (the metrics API server)
#   .tools/keda/<KEDA_VERSION>/crds/  its CRDs (config/crd/bases/ of the module: ScaledObject, ...)
#   .tools/prometheus/<PROMETHEUS_VERSION>/bin/prometheus   Prometheus (its module has no replaces:
#                                     `go install` works; the web UI's assets are not built in, the
#                                     API is all the chain uses)
#
# KEDA's go.mod carries replace and exclude directives, which `go install pkg@version` refuses
# (and which a dependency's go.mod does not pass on). As for Kubernetes in build-components.sh, a
# scratch wrapper module requires github.com/kedacore/keda/v2 and copies them, read from that
# go.mod (never a hard-coded list); a replace into a folder of KEDA's own tree could not be served
# by the module proxy and stops the build with the line that asks for it. Cold, on 2 cores: about
# 12 minutes and +1.5 GB of modules, +3.1 GB of build cache (the operator links every scaler's SDK).
set -euo pipefail
# shellcheck source=go-env.sh
. "$(dirname "$0")/go-env.sh"
keda_bin=$tools/keda/$KEDA_VERSION/bin
mod=github.com/kedacore/keda/v2
start=$(date +%s)

say() { printf 'classic: [%4ds] %s\n' "$(($(date +%s) - start))" "$*"; }

prom_bin=$tools/prometheus/$PROMETHEUS_VERSION/bin
# v0.3XX.Y is Prometheus 3.XX.Y.
prom_release=$(echo "${PROMETHEUS_VERSION#v0.}" | sed -E 's/^3([0-9]{2})\./3.\1./; s/^3\.0([0-9])\./3.\1./')
if "$prom_bin/prometheus" --version 2>/dev/null | grep -q "version $prom_release "; then
  say "Prometheus $prom_release already built ($prom_bin)"
else
  command -v go >/dev/null || { echo "classic: go is not installed (Go >= 1.26.7 is needed)" >&2; exit 1; }
  say "building Prometheus $prom_release (github.com/prometheus/prometheus@$PROMETHEUS_VERSION)"
  common=github.com/prometheus/common/version
  GOBIN=$prom_bin go install -trimpath \
    -ldflags "-s -w -X $common.Version=$prom_release -X $common.Revision=$PROMETHEUS_VERSION -X $common.Branch=$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" 2>&1 | { grep -v '^go: downloading' || true; }
  "$prom_bin/prometheus" --version 2>/dev/null | grep -q "version $prom_release " ||
    { echo "classic: $prom_bin/prometheus does not report $prom_release" >&2; exit 1; }
fi

# The CRDs the operator needs before it starts (it exits without them), from the module's zip.
keda_crds=$tools/keda/$KEDA_VERSION/crds
if [ ! -f "$keda_crds/.complete" ]; then
  command -v go >/dev/null || { echo "classic: go is not installed (Go >= 1.26 is needed)" >&2; exit 1; }
  dir=$(go mod download -json "$mod@$KEDA_VERSION" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["Dir"])')
  rm -rf "$keda_crds"
  mkdir -p "$keda_crds"
  cp "$dir"/config/crd/bases/*.yaml "$keda_crds/"
  chmod u+w "$keda_crds"/*.yaml
  grep -qx "  name: scaledobjects.keda.sh" "$keda_crds"/*.yaml ||
    { echo "classic: no ScaledObject CRD in $mod@$KEDA_VERSION config/crd/bases" >&2; exit 1; }
  echo "$mod@$KEDA_VERSION config/crd/bases" >"$keda_crds/.complete"
  say "KEDA's CRDs: $(find "$keda_crds" -name "*.yaml" | wc -l) files in $keda_crds"
fi

# KEDA's binaries have no --version flag (they log it at start-up): a stamp written after both
# built and answered --help says this folder holds that version.
if [ -x "$keda_bin/keda" ] && [ -x "$keda_bin/keda-adapter" ] &&
  [ "$(cat "$keda_bin/version" 2>/dev/null)" = "$KEDA_VERSION" ]; then
  say "KEDA $KEDA_VERSION already built ($keda_bin)"
  go_caches_drop
  exit 0
fi

command -v go >/dev/null || { echo "classic: go is not installed (Go >= 1.26 is needed)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init surge.local/keda-components 2>/dev/null
say "$mod@$KEDA_VERSION: reading its go.mod"
gomod=$(go mod download -json "$mod@$KEDA_VERSION" |
  python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["GoMod"])')
mapfile -t edits < <(python3 - "$gomod" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def entries(keyword):
    """The directive's entries, from its block form and its one-line form."""
    found = []
    for block in re.finditer(r'^%s\s*\((.*?)^\)' % keyword, text, re.M | re.S):
        found += [line.split('//')[0].strip() for line in block.group(1).splitlines()]
    found += [m.group(1).split('//')[0].strip()
              for m in re.finditer(r'^%s\s+([^(\s].*)$' % keyword, text, re.M)]
    return [e for e in found if e]
for entry in entries('replace'):
    old, new = (side.split() for side in entry.split('=>'))
    if len(new) != 2:
        sys.exit('classic: KEDA replaces a module with a folder of its tree, which the module '
                 'proxy cannot serve: ' + entry)
    print('-replace=%s=%s' % ('@'.join(old), '@'.join(new)))
for entry in entries('exclude'):
    print('-exclude=%s' % '@'.join(entry.split()))
PY
)
[ "${#edits[@]}" -eq 0 ] || go mod edit "${edits[@]}"
say "carrying over ${#edits[@]} replace/exclude directives; resolving"
go get "$mod/cmd/operator@$KEDA_VERSION" "$mod/cmd/adapter@$KEDA_VERSION" 2>&1 |
  { grep -v '^go: \(downloading\|added\|upgraded\)' || true; }
# As KEDA's Makefile stamps its release builds (the module's .info names no commit: the tag).
ldflags="-s -w -X=$mod/version.Version=${KEDA_VERSION#v} -X=$mod/version.GitCommit=$KEDA_VERSION"
mkdir -p "$keda_bin"
rm -f "$keda_bin/version"
say "building keda (the operator) $KEDA_VERSION"
go build -trimpath -ldflags "$ldflags" -o "$keda_bin/keda" "$mod/cmd/operator"
say "building keda-adapter (the metrics API server) $KEDA_VERSION"
go build -trimpath -ldflags "$ldflags" -o "$keda_bin/keda-adapter" "$mod/cmd/adapter"
"$keda_bin/keda" --help >/dev/null 2>&1 || { echo "classic: $keda_bin/keda does not start" >&2; exit 1; }
"$keda_bin/keda-adapter" --help >/dev/null 2>&1 ||
  { echo "classic: $keda_bin/keda-adapter does not start" >&2; exit 1; }
echo "$KEDA_VERSION" >"$keda_bin/version"
go_caches_drop
say "done: $keda_bin"

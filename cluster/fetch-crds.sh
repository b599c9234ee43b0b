#!/usr/bin/env bash
# Fetches the CRDs of the projects whose resources Surge ships (Istio, Karpenter and its AWS
# provider, prometheus-operator) from their published Go modules, through the Go module proxy
# only, into .tools/crds/<project>-<version>/ (versions: cluster/versions.env); a second run only
# checks. Called by scripts/tools.sh; scripts/validate-manifests.sh applies them to a real
# kube-apiserver, which then judges Surge's manifests against them (CEL rules included).
#
#   istio-<v>                   istio.io/api: kubernetes/customresourcedefinitions.gen.yaml
#   karpenter-<v>               sigs.k8s.io/karpenter: pkg/apis/crds/ (NodePool, NodeClaim,
#                               NodeOverlay, CapacityBuffer autoscaling.x-k8s.io)
#   karpenter-provider-aws-<v>  github.com/aws/karpenter-provider-aws: EC2NodeClass
#   prometheus-operator-<v>     github.com/prometheus-operator/prometheus-operator:
#                               example/prometheus-operator-crd/: ServiceMonitor, PodMonitor
#
# Each module is `go mod download`ed into the module cache .tools/go/mod (zips of 1.3-4.6 MB) and
# only its CRD files are copied. `.complete` marks a finished copy (it names what was copied).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
. "$root/cluster/versions.env"
tools=$root/.tools
export GOMODCACHE=$tools/go/mod GOFLAGS=-modcacherw GOTOOLCHAIN=local \
  GOPROXY=${GOPROXY:-https://proxy.golang.org} GONOSUMDB= GOPRIVATE=
# The module cache is the Go builds' (cluster/go-env.sh), which drop it when done: take their lock.
if command -v flock >/dev/null; then
  mkdir -p "$tools/go"
  exec 9>"$tools/go/.lock"
  flock 9
fi
start=$(date +%s)

say() { printf 'crds: [%4ds] %s\n' "$(($(date +%s) - start))" "$*"; }

# fetch PROJECT MODULE VERSION PATH... -- CRD...: copy PATHs (files, or folders whose *.yaml are
# taken) of MODULE@VERSION into .tools/crds/PROJECT-VERSION and check that the named CRDs are there.
fetch() {
  local project=$1 module=$2 version=$3; shift 3
  local paths=() crds=()
  while [ "$1" != "--" ]; do paths+=("$1"); shift; done
  shift
  crds=("$@")
  local out=$tools/crds/$project-$version
  local stamp="$module@$version ${paths[*]}"
  if [ -f "$out/.complete" ] && [ "$(cat "$out/.complete")" = "$stamp" ]; then
    say "$project $version: already in .tools/crds/$project-$version ($(find "$out" -name "*.yaml" | wc -l) CRD files)"
    return
  fi
  command -v go >/dev/null || { echo "crds: go is not installed (needed once, to fetch the CRDs)" >&2; exit 1; }
  say "$project $version: go mod download $module@$version"
  local info dir
  info=$(go mod download -json "$module@$version") || { echo "crds: $info" >&2; exit 1; }
  dir=$(python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit("crds: " + d["Error"]) if d.get("Error") else print(d["Dir"])' <<<"$info")
  rm -rf "$out"
  mkdir -p "$out"
  local p
  for p in "${paths[@]}"; do
    if [ -d "$dir/$p" ]; then
      cp "$dir/$p"/*.yaml "$out/"
    elif [ -f "$dir/$p" ]; then
      cp "$dir/$p" "$out/"
    else
      echo "crds: $module@$version has no $p (did the CRDs move?)" >&2
      exit 1
    fi
  done
  chmod u+w "$out"/*.yaml
  local crd
  for crd in "${crds[@]}"; do
    grep -qx "  name: $crd" "$out"/*.yaml ||
      { echo "crds: no CustomResourceDefinition $crd in $module@$version ${paths[*]}" >&2; exit 1; }
  done
  echo "$stamp" >"$out/.complete"
  say "$project $version: $(find "$out" -name "*.yaml" | wc -l) CRD files, $(du -sh "$out" | cut -f1), from a module of $(du -sh "$dir" | cut -f1)"
}

fetch istio istio.io/api "$ISTIO_API_VERSION" kubernetes/customresourcedefinitions.gen.yaml -- \
  wasmplugins.extensions.istio.io gateways.networking.istio.io virtualservices.networking.istio.io \
  authorizationpolicies.security.istio.io peerauthentications.security.istio.io
fetch karpenter sigs.k8s.io/karpenter "$KARPENTER_VERSION" pkg/apis/crds -- \
  nodepools.karpenter.sh nodeclaims.karpenter.sh capacitybuffers.autoscaling.x-k8s.io
fetch karpenter-provider-aws github.com/aws/karpenter-provider-aws "$KARPENTER_AWS_VERSION" \
  pkg/apis/crds/karpenter.k8s.aws_ec2nodeclasses.yaml -- ec2nodeclasses.karpenter.k8s.aws
# Of its ten CRDs, the two that scrape targets (the chart's ServiceMonitor, and PodMonitor): the
# other eight (Prometheus, Alertmanager, ...: 4.3 MB) would add about 5 s to every validation.
crds=example/prometheus-operator-crd/monitoring.coreos.com
fetch prometheus-operator github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
  "${crds}_servicemonitors.yaml" "${crds}_podmonitors.yaml" -- \
  podmonitors.monitoring.coreos.com servicemonitors.monitoring.coreos.com

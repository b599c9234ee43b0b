#!/usr/bin/env bash
# Render and validate everything Surge installs on a cluster, offline, against the real schemas.
#
#   scripts/validate-manifests.sh            check (CI: `make test` calls this)
#   scripts/validate-manifests.sh --update   regenerate deploy/manifests/surge.yaml and copy
#                                            deploy/crds/surgescaler.yaml into the chart, then check
#
# Self-contained on a fresh machine: helm + kubectl into .tools/helm (../shared/tools/get-helm),
# kubernetes-validate + PyYAML + jsonschema into the venv .tools/validate. The shared folder is
# ${SURGE_SHARED:-<repo>/../shared} (CI has a copy of it beside the clone).
#
# Checks: helm lint; helm template (defaults and every option); the chart's CRD equals the
# generated one; deploy/manifests/surge.yaml equals `helm template`; every YAML under istio/ and
# deploy/ (and each kustomization) validated: core kinds with `kubernetes-validate --strict` for
# the oldest and newest supported Kubernetes, custom resources with validate-crs (Istio,
# Karpenter, prometheus-operator and Surge's own CRD); the filter's scaler cluster matches the
# chart's Service; the Grafana dashboard queries metrics the scaler registers; the filter image
# builder's tests; and broken copies of examples that must FAIL (a test of the test).
# Prints a summary; exits non-zero on any failure.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${SURGE_SHARED:-$repo/../shared}
# Oldest and newest Kubernetes Surge supports (INSTALL.md); kubernetes-validate 1.37.0 knows 1.25-1.37.
k8s_versions=(1.29.0 1.37.0)
chart=$repo/deploy/chart/surge
release=surge
namespace=surge-system
crd=$repo/deploy/crds/surgescaler.yaml
chart_crd=$chart/crds/surgescaler.yaml
manifest=$repo/deploy/manifests/surge.yaml
# The kubectl manifest: namespace included, token from a Secret the user creates (INSTALL.md), so
# that the output is deterministic (a generated token would differ on every render).
manifest_args=(--namespace "$namespace" --include-crds --skip-tests --set namespace.create=true
  --set token.existingSecret=surge-scaler-token)

update=false
case "${1:-}" in
  --update) update=true ;;
  "") ;;
  *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

cd "$repo"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=()
failed=0

# run NAME CMD...: run a check, keep its output in the log, show it only when it fails.
run() {
  local name=$1; shift
  local log=$work/log.$((${#results[@]}))
  if "$@" >"$log" 2>&1; then
    results+=("PASS  $name")
  else
    results+=("FAIL  $name")
    failed=$((failed + 1))
    echo "---- FAIL: $name"
    sed -e 's/^/    /' "$log" | tail -n 60
  fi
}

# must_fail NAME PATTERN CMD...: a check that has to reject its input (test of the test), and for
# the expected reason: its output must match the extended regex PATTERN.
must_fail() {
  local name=$1 pattern=$2; shift 2
  local log=$work/log.$((${#results[@]}))
  if "$@" >"$log" 2>&1; then
    results+=("FAIL  $name (the broken input was accepted)")
    failed=$((failed + 1))
    echo "---- FAIL: $name: the validator accepted a broken input"
    sed -e 's/^/    /' "$log" | tail -n 20
  elif ! grep -Eq -- "$pattern" "$log"; then
    results+=("FAIL  $name (rejected, but not for the expected reason /$pattern/)")
    failed=$((failed + 1))
    echo "---- FAIL: $name: rejected without the expected message /$pattern/"
    sed -e 's/^/    /' "$log" | tail -n 20
  else
    results+=("PASS  $name (rejected as it must be)")
  fi
}

# ---------------------------------------------------------------------------------------------
echo "== tools"
if [ ! -x "$shared/tools/get-helm" ] || [ ! -x "$shared/tools/validate-crs" ]; then
  echo "FAIL: $shared/tools/{get-helm,validate-crs} not found; set SURGE_SHARED to the shared folder" >&2
  exit 1
fi
"$shared/tools/get-helm" "$repo/.tools/helm" >/dev/null || { echo "FAIL: get-helm" >&2; exit 1; }
helm=$repo/.tools/helm/bin/helm
kubectl=$repo/.tools/helm/bin/kubectl
venv=$repo/.tools/validate
if ! "$venv/bin/python" -c 'import yaml, jsonschema, kubernetes_validate' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q 'kubernetes-validate==1.37.0' pyyaml jsonschema \
    || { echo "FAIL: could not install the validators into $venv" >&2; exit 1; }
fi
py=$venv/bin/python
kv=$venv/bin/kubernetes-validate
checks=$repo/deploy/validate/checks.py
echo "helm $("$helm" version --short), kubectl $("$kubectl" version --client -o json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), kubernetes-validate $("$kv" --version)"

if $update; then
  echo "== update"
  mkdir -p "$chart/crds" "$(dirname "$manifest")"
  if [ -f "$crd" ]; then cp "$crd" "$chart_crd"; else echo "no $crd yet: run make crd" >&2; fi
  "$helm" template "$release" "$chart" "${manifest_args[@]}" >"$manifest"
  echo "wrote $manifest"
fi

# validate_files OUTDIR FILES...: core kinds with kubernetes-validate for each Kubernetes version,
# custom resources with validate-crs; prints what it checked; non-zero on any failure.
validate_files() {
  local out=$1; shift
  local status=0 v
  "$py" "$checks" split "$out" "$@" || status=1
  local core=() custom=()
  mapfile -t core < <(find "$out/core" -type f 2>/dev/null | sort)
  mapfile -t custom < <(find "$out/custom" -type f 2>/dev/null | sort)
  if [ ${#core[@]} -gt 0 ]; then
    for v in "${k8s_versions[@]}"; do
      echo "-- kubernetes-validate --strict -k $v: ${#core[@]} files"
      "$kv" -k "$v" --strict --quiet "${core[@]}" >"$out/kv.$v.log" 2>&1 || status=1
      # A core kind without a schema (a typo in kind or apiVersion) is only a warning there.
      "$py" "$checks" kv-output "$out/kv.$v.log" || status=1
    done
  fi
  if [ ${#custom[@]} -gt 0 ]; then
    local crd_args=()
    [ -f "$crd" ] && crd_args=("$crd")
    echo "-- validate-crs: ${#custom[@]} files"
    "$py" "$shared/tools/validate-crs" --schemas "$shared/schemas" "${crd_args[@]}" "${custom[@]}" || status=1
  fi
  return $status
}

# ---------------------------------------------------------------------------------------------
echo "== chart"
run "helm lint --strict" "$helm" lint --strict "$chart"
run "helm lint --strict (all options on)" "$helm" lint --strict "$chart" --namespace "$namespace" \
  --set serviceMonitor.enabled=true --set namespace.create=true --set token.value=example
mkdir -p "$work/render"
render() { # render NAME ARGS...: helm template into $work/render/NAME.yaml
  local name=$1; shift
  run "helm template ($name)" bash -c '"$0" template "$1" "$2" "${@:4}" >"$3"' \
    "$helm" "$release" "$chart" "$work/render/$name.yaml" --namespace "$namespace" "$@"
}
render defaults
render all-options --include-crds --set namespace.create=true --set serviceMonitor.enabled=true \
  --set token.value=example --set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
  --set priorityClassName=system-cluster-critical --set 'scaler.gatewayNamespaces={istio-system,istio-ingress}'
render no-token --set token.enabled=false --set networkPolicy.egress.enabled=false --set podDisruptionBudget.enabled=false
render existing-secret --set token.existingSecret=my-token --set scaler.identity=required
render watch-namespaces --set 'scaler.watchNamespaces={web,shop}'
must_fail "helm template refuses replicaCount=2 (no leader election yet)" "replicaCount (must be 1|does not match)" \
  "$helm" template "$release" "$chart" --namespace "$namespace" --set replicaCount=2
must_fail "helm template refuses scaler.identity=sometimes" "scaler.identity must be" \
  "$helm" template "$release" "$chart" --namespace "$namespace" --set scaler.identity=sometimes
must_fail "helm template refuses a misspelled value (values.schema.json)" "Additional property replicaCont is not allowed" \
  "$helm" template "$release" "$chart" --namespace "$namespace" --set replicaCont=1
must_fail "helm template refuses scaler.limits.reportBurst=0 (the flag takes 1..1000)" \
  "scaler.limits.reportBurst: Must be greater than or equal to 1" \
  "$helm" template "$release" "$chart" --namespace "$namespace" --set scaler.limits.reportBurst=0
must_fail "helm template refuses a gateway namespace with a comma (the flag would split it)" \
  "scaler.gatewayNamespaces.0: Does not match pattern" \
  "$helm" template "$release" "$chart" --namespace "$namespace" --set-json 'scaler.gatewayNamespaces=["istio-system,web"]'
must_fail "helm template refuses a watch namespace that is not a namespace name" \
  "scaler.watchNamespaces.0: Does not match pattern" \
  "$helm" template "$release" "$chart" --namespace "$namespace" --set 'scaler.watchNamespaces={Web}'
# Helm reads numbers in a values file as floats: a large limit must still render as an integer.
printf 'scaler:\n  limits:\n    maxInstanceRoutes: 5000000\n' >"$work/large-limit.yaml"
run "a large limit from a values file renders as an integer flag, not 5e+06" \
  bash -c '"$0" template "$1" "$2" --namespace "$3" -f "$4" | grep -q -- "- --max-instance-routes=5000000$"' \
  "$helm" "$release" "$chart" "$namespace" "$work/large-limit.yaml"
run "chart renders: schemas (Kubernetes ${k8s_versions[*]}, CRDs)" validate_files "$work/v-chart" "$work"/render/*.yaml

echo "== generated files in sync"
run "chart crds/surgescaler.yaml is a regular file equal to deploy/crds/surgescaler.yaml" \
  bash -c '[ -f "$0" ] || { echo "missing $0 (the scaler generates it: make crd)"; exit 1; }
           [ -f "$1" ] && [ ! -L "$1" ] || { echo "$1 must be a copy, not a symlink or missing (run $2 --update)"; exit 1; }
           diff -u "$0" "$1" || { echo "differs: run $2 --update"; exit 1; }' "$crd" "$chart_crd" "scripts/validate-manifests.sh"
run "helm package carries the CRD as a regular file" \
  bash -c '"$0" package -d "$1" "$2" >/dev/null && tar -xzOf "$1"/surge-*.tgz surge/crds/surgescaler.yaml | diff -q - "$3"' \
  "$helm" "$work/package" "$chart" "$crd"
run "deploy/manifests/surge.yaml equals helm template" \
  bash -c '"$0" template "$1" "$2" "${@:5}" >"$3" && diff -u "$4" "$3" || { echo "differs: run scripts/validate-manifests.sh --update"; exit 1; }' \
  "$helm" "$release" "$chart" "$work/manifest.yaml" "$manifest" "${manifest_args[@]}"

# ---------------------------------------------------------------------------------------------
echo "== every YAML under istio/ and deploy/"
mapfile -t yamls < <(find istio deploy -type f \( -name '*.yaml' -o -name '*.yml' \) \
  -not -path 'deploy/chart/*' -not -name 'kustomization.yaml' | sort)
run "${#yamls[@]} files: schemas (Kubernetes ${k8s_versions[*]}, CRDs)" validate_files "$work/v-files" "${yamls[@]}"
mapfile -t kustomizations < <(find istio deploy -name kustomization.yaml -not -path 'deploy/chart/*' -printf '%h\n' | sort)
for dir in "${kustomizations[@]}"; do
  mkdir -p "$work/kust"
  out=$work/kust/$(echo "$dir" | tr / _).yaml
  run "kubectl kustomize $dir" bash -c '"$0" kustomize "$1" >"$2"' "$kubectl" "$dir" "$out"
done
if [ ${#kustomizations[@]} -gt 0 ]; then
  run "kustomize output: schemas (Kubernetes ${k8s_versions[*]}, CRDs)" validate_files "$work/v-kust" "$work"/kust/*.yaml
fi

echo "== wiring, security and dashboard"
run "scaler and headroom pods meet the restricted Pod Security profile" \
  "$py" "$checks" restricted "$work/render/defaults.yaml" "$work/render/all-options.yaml" deploy/karpenter/headroom.yaml
run "RBAC grants exactly the scaler's least-privilege list" "$py" "$checks" rbac "$work/render/defaults.yaml"
run "RBAC with watchNamespaces: a Role in each, nothing cluster-wide" "$py" "$checks" rbac "$work/render/watch-namespaces.yaml" web,shop
run "filter's scaler cluster, PeerAuthentication and AuthorizationPolicy match the chart" \
  "$py" "$checks" wiring "$work/render/defaults.yaml" istio
for board in deploy/grafana/*.json; do
  [ -e "$board" ] || continue
  run "dashboard $board queries only metrics the scaler registers" "$py" "$checks" dashboard "$board" scaler/src
done

echo "== filter image builder"
wasm=${SURGE_FILTER_WASM:-$repo/target/wasm32-wasip1/release/surge_filter.wasm}
if [ -f "$wasm" ]; then
  run "OCI image layout and digests (synthetic module and $(basename "$wasm"))" \
    env SURGE_FILTER_WASM="$wasm" SURGE_REQUIRE_REAL_WASM=1 python3 deploy/image/test_build_filter_image.py
else
  run "OCI image layout and digests (synthetic module only; $wasm not built: make wasm)" \
    python3 deploy/image/test_build_filter_image.py
fi

# Informational, not a check: the .wasm embeds toolchain and CARGO_HOME paths, so a build on
# another machine differs from the release build the WasmPlugins pin.
pin_note="filter image pin: no local .wasm to compare"
if [ -f "$wasm" ]; then
  pinned=$(sed -n 's/^ *sha256: *\([a-f0-9]\{64\}\).*/\1/p' istio/wasmplugin-sidecar.yaml | head -n 1)
  local_digest=$(python3 deploy/image/build_filter_image.py --wasm "$wasm" --out "$work/oci" | sed -n 's/^WasmPlugin spec.sha256: //p')
  if [ "$pinned" = "$local_digest" ]; then
    pin_note="filter image pin: istio/ pins sha256 $pinned, the image of this .wasm"
  else
    pin_note="filter image pin: istio/ pins $pinned; this .wasm gives $local_digest (re-pin for a release: istio/README.md)"
  fi
fi

# ---------------------------------------------------------------------------------------------
echo "== broken copies must fail (test of the test)"
broken=$work/broken
mkdir -p "$broken"
# 1. A misspelled field in a core kind: --strict must reject it.
sed 's/readinessProbe:/readinesProbe:/' deploy/examples/nginx/deployment.yaml >"$broken/deployment.yaml"
must_fail "nginx Deployment with a misspelled field" "deployment/nginx .*'readinesProbe' was unexpected" validate_files "$work/v-b1" "$broken/deployment.yaml"
# 2. A SurgeScaler with a misspelled field: Surge's CRD must reject it.
sed 's/maxReplicas: 10/maxReplica: 10/' deploy/examples/nginx/surgescaler.yaml >"$broken/surgescaler.yaml"
must_fail "SurgeScaler with a misspelled field" "FAIL .*SurgeScaler nginx .*'maxReplica' was unexpected" validate_files "$work/v-b2" "$broken/surgescaler.yaml"
# 3. A Gateway with a field of the wrong type: Istio's CRD must reject it.
sed 's/number: 80/number: "eighty"/' deploy/examples/nginx/gateway.yaml >"$broken/gateway.yaml"
must_fail "Istio Gateway with a port number that is not a number" "FAIL .*Gateway nginx .*'eighty' is not of type 'integer'" validate_files "$work/v-b3" "$broken/gateway.yaml"
# 4. A core kind misspelled: kubernetes-validate only warns; our check must fail.
sed 's/^kind: Service$/kind: Servic/' deploy/examples/nginx/service.yaml >"$broken/service.yaml"
must_fail "a misspelled core kind" "Couldn't find schema for kind Servic " validate_files "$work/v-b4" "$broken/service.yaml"
# 5. The WasmPlugins pointing at another cluster: the wiring check must fail.
mkdir -p "$broken/istio"
cp istio/*.yaml "$broken/istio/"
sed -i 's/surge-scaler\.surge-system\.svc/surge-scaler.default.svc/' "$broken/istio/"wasmplugin-*.yaml
must_fail "WasmPlugins sending to a cluster the chart does not serve" "pluginConfig.cluster is .*surge-scaler.default.svc" \
  "$py" "$checks" wiring "$work/render/defaults.yaml" "$broken/istio"

# 6. A privileged copy of the chart's pod, and an RBAC rule too broad: the policy checks must fail.
sed -e 's/allowPrivilegeEscalation: false/allowPrivilegeEscalation: true/' -e 's/verbs: \["get", "patch"\]/verbs: ["get", "patch", "update"]/' \
  "$work/render/defaults.yaml" >"$broken/chart.yaml"
must_fail "scaler pod allowing privilege escalation" "allowPrivilegeEscalation must be false" \
  "$py" "$checks" restricted "$broken/chart.yaml"
must_fail "ClusterRole granting update on the scale subresource" "deployments/scale grants \['update'\]" \
  "$py" "$checks" rbac "$broken/chart.yaml"
must_fail "watchNamespaces render lacking the Role of one namespace" "Roles in namespaces \[.shop., .web.\], expected one in each of" \
  "$py" "$checks" rbac "$work/render/watch-namespaces.yaml" web,shop,jobs
# 7. A dashboard querying a metric the scaler does not have: the dashboard check must fail.
sed 's/surge_panic_mode/surge_no_such_metric/g' deploy/grafana/surge-scaler.json >"$broken/dashboard.json"
must_fail "dashboard querying a metric the scaler does not register" "surge_no_such_metric is not registered" \
  "$py" "$checks" dashboard "$broken/dashboard.json" scaler/src
# ---------------------------------------------------------------------------------------------
echo
echo "== summary"
printf '%s\n' "${results[@]}"
total=${#results[@]}
echo "NOTE  $pin_note"
echo "$((total - failed)) of $total checks passed"
if [ "$failed" -ne 0 ]; then
  echo "validate-manifests: $failed FAILED"
  exit 1
fi
echo "validate-manifests: all passed"

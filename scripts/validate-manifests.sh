#!/usr/bin/env bash
# Validate everything Surge installs on a cluster, judged by a real Kubernetes API server.
#
#   scripts/validate-manifests.sh            check (CI: `make test` calls this)
#   scripts/validate-manifests.sh --update   regenerate deploy/manifests/surge.yaml and copy
#                                            deploy/crds/surgescaler.yaml into the chart, then check
#
# The judge is `surge-sandbox cluster --api-only` (etcd + kube-apiserver with RBAC, admission and
# audit, on loopback, for this run only), given for real the CRDs of Istio, Karpenter (with
# CapacityBuffer and the AWS provider's EC2NodeClass) and prometheus-operator, and Surge's own; all
# versions are those of cluster/versions.env. Every chart render, every YAML under istio/ and deploy/
# and each kustomization goes through `kubectl apply --dry-run=server --validate=strict`: full
# validation (CRD structural schemas, CEL rules, defaulting, admission with Pod Security), unknown
# fields are errors, and so is any warning. The chart is also installed, upgraded and uninstalled
# with helm. The oldest Kubernetes supported (1.29) is checked offline: `kubernetes-validate --strict`.
# Also: helm lint and the values it must refuse, generated files in sync, wiring, RBAC, restricted
# pods, the dashboard, the filter image builder, and broken copies that must FAIL for the expected
# reason (a test of the test). Prints a summary; exits non-zero on any failure; leaves no process.
#
# Tools: cluster/build-components.sh and cluster/fetch-crds.sh (`make tools`; run here too, they
# only check when done), target/debug/surge-sandbox, kubernetes-validate in the venv .tools/validate.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../cluster/versions.env
. "$repo/cluster/versions.env"
# The oldest Kubernetes Surge supports (INSTALL.md), for kubernetes-validate; the server is newer.
k8s_oldest=1.29.0
chart=$repo/deploy/chart/surge
release=surge
namespace=surge-system
crd=$repo/deploy/crds/surgescaler.yaml
chart_crd=$chart/crds/surgescaler.yaml
manifest=$repo/deploy/manifests/surge.yaml
# The kubectl manifest: namespace included, token from a Secret the user creates (INSTALL.md), so
# that the output is deterministic (a generated token would differ on every render).
manifest_args=(--include-crds --skip-tests --set namespace.create=true
  --set token.existingSecret=surge-scaler-token --set sharing.peerToken.existingSecret=surge-scaler-peer-token)
crd_dirs=("istio-$ISTIO_API_VERSION" "karpenter-$KARPENTER_VERSION"
  "karpenter-provider-aws-$KARPENTER_AWS_VERSION" "prometheus-operator-$PROMETHEUS_OPERATOR_VERSION")

update=false
case "${1:-}" in
  --update) update=true ;;
  "") ;;
  *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

cd "$repo"
work=$(mktemp -d)
server_pid=
# The API server goes with this script, however it ends (surge-sandbox also dies with its parent).
cleanup() {
  if [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT; trap 'exit 143' TERM
results=()
failed=0

# fail NAME REASON LOG: count a failed check and show the end of its log.
fail() {
  results+=("FAIL  $1${2:+ ($2)}")
  failed=$((failed + 1))
  echo "---- FAIL: $1${2:+: $2}"
  sed -e 's/^/    /' "$3" | tail -n 60
}

# run NAME CMD...: run a check, keep its output in the log, show it only when it fails.
run() {
  local name=$1; shift
  local log=$work/log.$((${#results[@]}))
  if "$@" >"$log" 2>&1; then results+=("PASS  $name"); else fail "$name" "" "$log"; fi
}

# must_fail NAME PATTERN CMD...: a check that has to reject its input (test of the test), and for
# the expected reason: its output must match the extended regex PATTERN.
must_fail() {
  local name=$1 pattern=$2; shift 2
  local log=$work/log.$((${#results[@]}))
  if "$@" >"$log" 2>&1; then
    fail "$name" "the broken input was accepted" "$log"
  elif ! grep -Eq -- "$pattern" "$log"; then
    fail "$name" "rejected, but not for the expected reason /$pattern/" "$log"
  else
    results+=("PASS  $name (rejected as it must be)")
  fi
}

# ---------------------------------------------------------------------------------------------
echo "== tools"
"$repo/cluster/build-components.sh" && "$repo/cluster/fetch-crds.sh" || { echo "FAIL: make tools" >&2; exit 1; }
helm=$repo/.tools/helm/$HELM_VERSION/bin/helm
kubectl=$repo/.tools/kube/$K8S_VERSION/bin/kubectl
sandbox=$repo/target/debug/surge-sandbox
if [ ! -x "$sandbox" ]; then
  echo "building surge-sandbox (it runs the API server)"
  cargo build -p surge-sandbox --bin surge-sandbox || { echo "FAIL: cannot build $sandbox" >&2; exit 1; }
fi
venv=$repo/.tools/validate
if ! "$venv/bin/python" -c 'import yaml, kubernetes_validate' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q 'kubernetes-validate==1.37.0' pyyaml \
    || { echo "FAIL: could not install the validators into $venv" >&2; exit 1; }
fi
py=$venv/bin/python
kv=$venv/bin/kubernetes-validate
checks=$repo/deploy/validate/checks.py
# helm and kubectl keep their caches and settings here, and talk to this run's API server only.
export HELM_CACHE_HOME=$work/helm/cache HELM_CONFIG_HOME=$work/helm/config HELM_DATA_HOME=$work/helm/data
export KUBECACHEDIR=$work/kube-cache KUBECONFIG=$work/cluster/admin.kubeconfig
echo "helm $("$helm" version --short), kubectl $("$kubectl" version --client | sed -n 's/^Client Version: //p'), kubernetes-validate $("$kv" --version)"

# template ARGS...: helm template of the chart, for the API server's Kubernetes version (helm's
# default would be v1.20, below the chart's kubeVersion).
template() { "$helm" template "$release" "$chart" --namespace "$namespace" --kube-version "$K8S_VERSION" "$@"; }

if $update; then
  echo "== update"
  mkdir -p "$chart/crds" "$(dirname "$manifest")"
  if [ -f "$crd" ]; then cp "$crd" "$chart_crd"; else echo "no $crd yet: run make crd" >&2; fi
  template "${manifest_args[@]}" >"$manifest"
  echo "wrote $manifest"
fi

# The API server starts now, while the offline checks below run.
SURGE_TOOLS=$repo/.tools "$sandbox" cluster --dir "$work/cluster" --api-only >"$work/server.log" 2>&1 &
server_pid=$!

# die WHAT LOG: the API server cannot judge; no check can run.
die() { echo "FAIL: $1" >&2; sed -e 's/^/    /' "$2" | tail -n 40 >&2; exit 1; }

# api_server: wait (60 s at most) until it is ready, give it the CRDs, wait until they are served.
api_server() {
  local i state dirs=() d
  for i in $(seq 600); do
    grep -q '^ready in' "$work/server.log" && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  grep -q '^ready in' "$work/server.log" || die "the API server did not start ($sandbox cluster --api-only):" \
    <(cat "$work/server.log" "$work"/cluster/logs/* 2>/dev/null)
  echo "API server $K8S_VERSION: $(sed -n 's/^ready in \([0-9.]* s\).*/ready in \1/p' "$work/server.log")"
  # Too large for client-side apply's annotation: server-side. Surge's own CRD (and later the
  # namespaces) client-side, so that dry runs of the same objects patch them without a warning.
  for d in "${crd_dirs[@]}"; do dirs+=(-f "$repo/.tools/crds/$d"); done
  { "$kubectl" apply --server-side "${dirs[@]}" && "$kubectl" apply -f "$crd"; } >"$work/crds.log" 2>&1 ||
    die "applying the CRDs to the API server:" "$work/crds.log"
  # A poll, 60 s at most: `kubectl wait` takes 0.1 s per CRD.
  for i in $(seq 300); do
    state=$("$kubectl" get crd -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Established")].status}{"\n"}{end}')
    grep -qv ' True$' <<<"$state" || break
    sleep 0.2
  done
  grep -v ' True$' <<<"$state" >"$work/pending.log" && die "these CRDs are not Established after 60 s:" "$work/pending.log"
  echo "CRDs established: $(wc -l <<<"$state") (${crd_dirs[*]}, surgescalers.surge.dev)"
}

# validate_files OUTDIR FILES...: every file through the API server's strict dry run, and its
# core objects through kubernetes-validate for the oldest Kubernetes; non-zero on any failure.
validate_files() {
  local out=$1; shift
  local status=0 f args=() core=()
  mkdir -p "$out"
  # A dry run of a namespaced object needs its namespace: create them for real first.
  "$py" "$checks" namespaces "$out/namespaces.yaml" "$@" || status=1
  [ ! -s "$out/namespaces.yaml" ] || "$kubectl" apply -f "$out/namespaces.yaml" >/dev/null || status=1
  for f in "$@"; do args+=(-f "$f"); done
  echo "-- kubectl apply --dry-run=server --validate=strict: $# files"
  "$kubectl" apply --dry-run=server --validate=strict "${args[@]}" 2>&1 | tee "$out/server.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  # A warning is a finding too: Pod Security ("would violate PodSecurity"), a deprecated API.
  if grep -q '^Warning:' "$out/server.log"; then echo "FAIL: the API server returned warnings"; status=1; fi
  "$py" "$checks" core "$out/core" "$@" || status=1
  mapfile -t core < <(find "$out/core" -type f | sort)
  if [ ${#core[@]} -gt 0 ]; then
    echo "-- kubernetes-validate --strict -k $k8s_oldest: ${#core[@]} files"
    "$kv" -k "$k8s_oldest" --strict --quiet "${core[@]}" >"$out/kv.log" 2>&1 || status=1
    # A core kind without a schema (a typo in kind or apiVersion) is only a warning there.
    "$py" "$checks" kv-output "$out/kv.log" || status=1
  fi
  return $status
}

# ---------------------------------------------------------------------------------------------
echo "== chart"
render() { template "${@:2}" >"$work/render/$1.yaml"; } # render NAME ARGS...
run "helm lint --strict" "$helm" lint --strict "$chart"
run "helm lint --strict (all options on)" "$helm" lint --strict "$chart" --namespace "$namespace" \
  --set serviceMonitor.enabled=true --set namespace.create=true --set token.value=example
mkdir -p "$work/render"
all_options=(--set serviceMonitor.enabled=true --set priorityClassName=system-cluster-critical
  --set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  --set 'scaler.gatewayNamespaces={istio-system,istio-ingress}')
run "helm template (defaults)" render defaults
run "helm template (all-options)" render all-options --include-crds --set namespace.create=true --set token.value=example "${all_options[@]}"
run "helm template (no-token)" render no-token --set token.enabled=false --set networkPolicy.egress.enabled=false \
  --set podDisruptionBudget.enabled=false
run "helm template (existing-secret)" render existing-secret --set token.existingSecret=my-token --set scaler.identity=required
run "helm template (watch-namespaces)" render watch-namespaces --set 'scaler.watchNamespaces={web,shop}'
must_fail "helm template refuses replicaCount=0 (a scaler that scales nothing)" "'/replicaCount': minimum: got 0, want 1" \
  template --set replicaCount=0
must_fail "helm template refuses a Lease duration under 2 s (the flag takes 2..60)" \
  "'/sharing/leaseDurationSeconds': minimum: got 1, want 2" template --set sharing.leaseDurationSeconds=1
must_fail "helm template refuses scaler.identity=sometimes" "'/scaler/identity': value must be one of 'off', 'when-present', 'required'" \
  template --set scaler.identity=sometimes
must_fail "helm template refuses a misspelled value (values.schema.json)" "additional properties 'replicaCont' not allowed" \
  template --set replicaCont=1
must_fail "helm template refuses scaler.limits.reportBurst=0 (the flag takes 1..1000)" \
  "'/scaler/limits/reportBurst': minimum: got 0, want 1" template --set scaler.limits.reportBurst=0
must_fail "helm template refuses a gateway namespace with a comma (the flag would split it)" \
  "'/scaler/gatewayNamespaces/0': 'istio-system,web' does not match pattern" \
  template --set-json 'scaler.gatewayNamespaces=["istio-system,web"]'
must_fail "helm template refuses a watch namespace that is not a namespace name" \
  "'/scaler/watchNamespaces/0': 'Web' does not match pattern" template --set 'scaler.watchNamespaces={Web}'
# Helm reads numbers in a values file as floats: a large limit must still render as an integer.
printf 'scaler:\n  limits:\n    maxInstanceRoutes: 5000000\n' >"$work/large-limit.yaml"
large_limit_renders() { template -f "$work/large-limit.yaml" | grep -q -- "- --max-instance-routes=5000000$"; }
run "a large limit from a values file renders as an integer flag, not 5e+06" large_limit_renders

echo "== generated files in sync"
run "chart crds/surgescaler.yaml is a regular file equal to deploy/crds/surgescaler.yaml" \
  bash -c '[ -f "$0" ] || { echo "missing $0 (the scaler generates it: make crd)"; exit 1; }
           [ -f "$1" ] && [ ! -L "$1" ] || { echo "$1 must be a copy, not a symlink or missing (run $2 --update)"; exit 1; }
           diff -u "$0" "$1" || { echo "differs: run $2 --update"; exit 1; }' "$crd" "$chart_crd" "scripts/validate-manifests.sh"
run "helm package carries the CRD as a regular file" \
  bash -c '"$0" package -d "$1" "$2" >/dev/null && tar -xzOf "$1"/surge-*.tgz surge/crds/surgescaler.yaml | diff -q - "$3"' \
  "$helm" "$work/package" "$chart" "$crd"
manifest_in_sync() {
  template "${manifest_args[@]}" >"$work/manifest.yaml" && diff -u "$manifest" "$work/manifest.yaml" ||
    { echo "differs: run scripts/validate-manifests.sh --update"; return 1; }
}
run "deploy/manifests/surge.yaml equals helm template" manifest_in_sync
mapfile -t kustomizations < <(find istio deploy -name kustomization.yaml -not -path 'deploy/chart/*' -printf '%h\n' | sort)
mkdir -p "$work/kust"
for dir in "${kustomizations[@]}"; do
  run "kubectl kustomize $dir" bash -c '"$0" kustomize "$1" >"$2"' "$kubectl" "$dir" "$work/kust/$(echo "$dir" | tr / _).yaml"
done

# ---------------------------------------------------------------------------------------------
echo "== the API server judges: dry runs (Kubernetes $K8S_VERSION) and kubernetes-validate ($k8s_oldest)"
api_server
run "chart renders: API server dry run, kubernetes-validate $k8s_oldest" validate_files "$work/v-chart" "$work"/render/*.yaml
mapfile -t yamls < <(find istio deploy -type f \( -name '*.yaml' -o -name '*.yml' \) \
  -not -path 'deploy/chart/*' -not -name 'kustomization.yaml' | sort)
run "${#yamls[@]} files under istio/ and deploy/: API server dry run, kubernetes-validate $k8s_oldest" \
  validate_files "$work/v-files" "${yamls[@]}"
if [ ${#kustomizations[@]} -gt 0 ]; then
  run "kustomize output: API server dry run, kubernetes-validate $k8s_oldest" validate_files "$work/v-kust" "$work"/kust/*.yaml
fi

echo "== helm install, upgrade and uninstall on the API server (objects stored; no kubelet runs pods)"
token() { "$kubectl" get secret -n "$namespace" surge-scaler-token -o jsonpath='{.data.token}'; }
# The Secret's `lookup` only works against a cluster: an upgrade must keep the generated token.
upgrade_keeps_token() {
  local before
  before=$(token) && [ -n "$before" ] || { echo "no generated token after the install"; return 1; }
  "$helm" upgrade "$release" "$chart" --namespace "$namespace" "${all_options[@]}" || return 1
  [ "$(token)" = "$before" ] || { echo "the upgrade changed the generated token"; return 1; }
}
uninstall_leaves_nothing() {
  local left
  "$helm" uninstall "$release" --namespace "$namespace" --wait --timeout 60s || return 1
  left=$("$kubectl" get all,secrets,serviceaccounts,networkpolicies,poddisruptionbudgets,servicemonitors,clusterroles,clusterrolebindings \
    --all-namespaces -l "app.kubernetes.io/instance=$release" -o name) || return 1
  [ -z "$left" ] || { echo "left behind: $left"; return 1; }
}
run "helm install (defaults)" "$helm" install "$release" "$chart" --namespace "$namespace"
run "helm upgrade (all options) keeps the generated token" upgrade_keeps_token
run "helm uninstall leaves none of the release's objects" uninstall_leaves_nothing

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
wasm=${SURGE_FILTER_WASM:-$repo/target/wasm/surge_filter.wasm}
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
# 1. A misspelled field in a core kind: strict field validation must reject it.
sed 's/readinessProbe:/readinesProbe:/' deploy/examples/nginx/deployment.yaml >"$broken/deployment.yaml"
must_fail "nginx Deployment with a misspelled field" 'unknown field "spec.template.spec.containers\[0\].readinesProbe"' \
  validate_files "$work/v-b1" "$broken/deployment.yaml"
# 2. A SurgeScaler with a misspelled field: Surge's CRD must reject it.
sed 's/maxReplicas: 10/maxReplica: 10/' deploy/examples/nginx/surgescaler.yaml >"$broken/surgescaler.yaml"
must_fail "SurgeScaler with a misspelled field" 'SurgeScaler: strict decoding error: unknown field "spec.maxReplica"' \
  validate_files "$work/v-b2" "$broken/surgescaler.yaml"
# 3. A Gateway with a field of the wrong type: Istio's CRD must reject it.
sed 's/number: 80/number: "eighty"/' deploy/examples/nginx/gateway.yaml >"$broken/gateway.yaml"
must_fail "Istio Gateway with a port number that is not a number" \
  'Gateway.networking.istio.io "nginx" is invalid: .*spec.servers\[0\].port.number in body must be of type integer' \
  validate_files "$work/v-b3" "$broken/gateway.yaml"
# 4. A core kind misspelled: the API server has no such kind.
sed 's/^kind: Service$/kind: Servic/' deploy/examples/nginx/service.yaml >"$broken/service.yaml"
must_fail "a misspelled core kind" 'no matches for kind "Servic" in version "v1"' validate_files "$work/v-b4" "$broken/service.yaml"
# 5. A NodePool breaking one of Karpenter's CEL rules (x-kubernetes-validations).
sed 's/values: \["5"\]/values: ["5", "6"]/' deploy/karpenter/nodepool.yaml >"$broken/nodepool.yaml"
must_fail "Karpenter NodePool breaking a CEL rule of its CRD" \
  "NodePool \"surge-burst\" is invalid: .*operator 'Gt', 'Lt', 'Gte', or 'Lte' must have a single positive integer value" \
  validate_files "$work/v-b5" "$broken/nodepool.yaml"
# 6. Headroom pods allowed to escalate, in their namespace that enforces `restricted`: the API
#    server's Pod Security admission warns about the Deployment (and would refuse its pods).
sed 's/allowPrivilegeEscalation: false/allowPrivilegeEscalation: true/' deploy/karpenter/headroom.yaml >"$broken/headroom.yaml"
must_fail "headroom Deployment violating the restricted Pod Security profile" \
  'Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false' \
  validate_files "$work/v-b6" "$broken/headroom.yaml"
# 7. The WasmPlugins pointing at another cluster: the wiring check must fail.
mkdir -p "$broken/istio"
cp istio/*.yaml "$broken/istio/"
sed -i 's/surge-scaler\.surge-system\.svc/surge-scaler.default.svc/' "$broken/istio/"wasmplugin-*.yaml
must_fail "WasmPlugins sending to a cluster the chart does not serve" "pluginConfig.cluster is .*surge-scaler.default.svc" \
  "$py" "$checks" wiring "$work/render/defaults.yaml" "$broken/istio"
# 8. A privileged copy of the chart's pod, and an RBAC rule too broad: the policy checks must fail.
sed -e 's/allowPrivilegeEscalation: false/allowPrivilegeEscalation: true/' -e 's/verbs: \["get", "patch"\]/verbs: ["get", "patch", "update"]/' \
  "$work/render/defaults.yaml" >"$broken/chart.yaml"
must_fail "scaler pod allowing privilege escalation" "allowPrivilegeEscalation must be false" \
  "$py" "$checks" restricted "$broken/chart.yaml"
must_fail "ClusterRole granting update on the scale subresource" "deployments/scale grants \['update'\]" \
  "$py" "$checks" rbac "$broken/chart.yaml"
must_fail "watchNamespaces render lacking the Role of one namespace" "Roles in namespaces \[.shop., .web.\], expected one in each of" \
  "$py" "$checks" rbac "$work/render/watch-namespaces.yaml" web,shop,jobs
# 9. A dashboard querying a metric the scaler does not have: the dashboard check must fail.
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

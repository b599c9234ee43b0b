#!/usr/bin/env bash
# Filter benchmark: requests/s and p50/p99 latency through one Envoy (V8) with no filter, with an
# empty proxy-wasm filter, with the floor filter twice (only the route name: the least any filter
# keyed by route must ask; and route name, :status and two clock reads: what exact per-route
# errors and latency need) and with surge-filter, measured side by side in one run.
#
#   filter/bench/run.sh            # defaults: 30 rounds of 4 s each, interleaved
#   ROUNDS=3 DURATION=5 filter/bench/run.sh
#   SURGE_PLUGIN_CONFIG='{"route_key":{"include_cluster":false}}' filter/bench/run.sh
#
# Layout (2 cores): the Envoy under test runs on core $ENVOY_CPU with one worker (--concurrency
# 1); wrk and the upstream (an Envoy answering 200 from a direct_response, which also accepts
# the filter's reports with 202) share core $LOAD_CPU. The five Envoys under test run at the
# same time but only the one under load is busy; rounds interleave the variants so drift on a
# noisy machine hits all of them alike. Besides wrk's requests/s and latency, the script reads the
# Envoy process's CPU time (utime+stime from /proc) around each run and reports CPU microseconds
# per request: on a shared machine this is far steadier than throughput, and on a dedicated core
# throughput is its inverse. Medians over the rounds are printed as a Markdown table and written
# to target/bench/filter/results.md.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
envoy=${SURGE_ENVOY:-$repo/.tools/envoy/bin/envoy}
surge_wasm=${SURGE_FILTER_WASM:-$repo/target/wasm/surge_filter.wasm}
empty_wasm=${SURGE_EMPTY_WASM:-$repo/target/wasm/empty_filter.wasm}
floor_wasm=${SURGE_FLOOR_WASM:-$repo/target/wasm/floor_filter.wasm}
plugin_config=${SURGE_PLUGIN_CONFIG:-'{}'}
rounds=${ROUNDS:-30}
duration=${DURATION:-4}
connections=${CONNECTIONS:-32}
envoy_cpu=${ENVOY_CPU:-0}
load_cpu=${LOAD_CPU:-1}
out=$repo/target/bench/filter
mkdir -p "$out"

for f in "$envoy" "$surge_wasm" "$empty_wasm" "$floor_wasm"; do
  if [ ! -f "$f" ]; then
    echo "bench: missing $f (run \`make wasm\` / \`make tools\`, or \`make bench-filter\`)" >&2
    exit 1
  fi
done
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install -y wrk)" >&2; exit 1; }

# shellcheck source=filter/bench/lib.sh
. "$(dirname "$0")/lib.sh"

# Writes an Envoy bootstrap (JSON) for one variant: none | empty | floor | surge | upstream.
bootstrap() {
  python3 - "$@" <<'PY'
import json, sys
variant, listen, admin, upstream, surge_wasm, empty_wasm, floor_wasm, plugin_config = sys.argv[1:9]
listen, admin, upstream = int(listen), int(admin), int(upstream)
def sock(port): return {"socket_address": {"address": "127.0.0.1", "port_value": port}}
def cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": sock(port)}}]}]}}
router = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
def wasm(path, root_id, config):
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": root_id, "root_id": root_id, "failure_policy": "FAIL_OPEN",
                   "vm_config": {"vm_id": "", "runtime": "envoy.wasm.runtime.v8",
                                 "code": {"local": {"filename": path}}},
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                     "value": config}}}}
if variant == "upstream":
    routes = [{"name": "reports", "match": {"prefix": "/v1/reports"},
               "direct_response": {"status": 202}},
              {"name": "ok", "match": {"prefix": "/"},
               "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
    filters, clusters = [router], []
else:
    routes = [{"name": "bench", "match": {"prefix": "/"},
               "route": {"cluster": "inbound|8080||"}}]
    clusters = [cluster("inbound|8080||", upstream),
                cluster("outbound|8080||surge-scaler.surge-system.svc.cluster.local", upstream)]
    filters = {"none": [], "empty": [wasm(empty_wasm, "empty", "")],
               "route": [wasm(floor_wasm, "route", "route")],
               "floor": [wasm(floor_wasm, "floor", "")],
               "surge": [wasm(surge_wasm, "surge", plugin_config)]}[variant] + [router]
print(json.dumps({
    "node": {"id": "sidecar~127.0.0.1~bench-0.bench~bench.svc.cluster.local", "cluster": "bench",
             "metadata": {"NAME": "bench-0", "NAMESPACE": "bench", "WORKLOAD_NAME": "bench",
                          "OWNER": "kubernetes://apis/apps/v1/namespaces/bench/deployments/bench"}},
    "admin": {"address": sock(admin)},
    "static_resources": {"listeners": [{"name": "main", "address": sock(listen),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "bench", "http_filters": filters,
                "route_config": {"virtual_hosts": [{"name": "bench", "domains": ["*"],
                                                    "routes": routes}]}}}]}]}],
        "clusters": clusters}}, indent=1))
PY
}

start_envoy() { # name cpu listen admin concurrency
  local name=$1 cpu=$2 listen=$3 admin=$4 conc=$5
  bootstrap "$name" "$listen" "$admin" "$upstream_port" "$surge_wasm" "$empty_wasm" "$floor_wasm" "$plugin_config" >"$out/$name.json"
  run_envoy "$name" "$cpu" "$out/$name.json" "$admin" "$conc"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)
upstream_port=$(free_port)
start_envoy upstream "$load_cpu" "$upstream_port" "$(free_port)" 1
declare -A port
for v in none empty route floor surge; do
  port[$v]=$(free_port)
  start_envoy "$v" "$envoy_cpu" "${port[$v]}" "$(free_port)" 1
done

: >"$out/raw.tsv"
for v in none empty route floor surge; do  # warm-up: JIT, connection pools
  taskset -c "$load_cpu" wrk -t1 -c"$connections" -d2s "http://127.0.0.1:${port[$v]}/" >/dev/null
done
for r in $(seq 1 "$rounds"); do
  for v in none empty route floor surge; do
    before=$(cpu_ticks "${envoy_pid[$v]}")
    taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${duration}s" --latency \
      "http://127.0.0.1:${port[$v]}/" >"$out/wrk-$v-$r.txt"
    after=$(cpu_ticks "${envoy_pid[$v]}")
    python3 - "$v" "$r" "$out/wrk-$v-$r.txt" "$((after - before))" "$clk_tck" >>"$out/raw.tsv" <<'PY'
import re, sys
variant, rnd, path, ticks, clk = sys.argv[1:6]
text = open(path).read()
def ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errors = re.search(r"Socket errors:.*", text)
total = int(re.search(r"(\d+) requests in", text).group(1))
cpu_us = int(ticks) * 1e6 / int(clk) / max(total, 1)
print(f"{variant}\t{rnd}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{non2xx.group(1) if non2xx else 0}\t{cpu_us:.2f}\t{errors.group(0) if errors else ''}")
PY
    tail -1 "$out/raw.tsv" >&2
  done
done

reports=$(http_get "http://127.0.0.1:$(python3 -c "import json;print(json.load(open('$out/surge.json'))['admin']['address']['socket_address']['port_value'])")/stats" | grep -E 'surge\.reports_(sent|delivered)_total' || true)

python3 - "$out/raw.tsv" "$rounds" "$duration" "$connections" "$surge_wasm" "$empty_wasm" "$floor_wasm" >"$out/results.md" <<'PY'
import os, statistics, sys
path, rounds, duration, conns, surge_wasm, empty_wasm, floor_wasm = sys.argv[1:8]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
by = {}
for v, r, rps, p50, p99, non2xx, cpu, err in rows:
    by.setdefault(v, []).append((float(rps), float(p50), float(p99), int(non2xx), float(cpu), err))
med = {v: tuple(statistics.median(x[i] for x in xs) for i in (0, 1, 2, 4)) for v, xs in by.items()}
print(f"| variant | requests/s (median of {rounds}) | p50 ms | p99 ms | req/s vs empty | "
      f"Envoy CPU us/request | CPU-based capacity vs empty | all rounds req/s | all rounds CPU us/req |")
print("|---|---|---|---|---|---|---|---|---|")
for v, label in [("none", "no filter"), ("empty", "empty proxy-wasm filter"),
                 ("route", "floor filter, route name only"),
                 ("floor", "floor filter (route, :status, 2 clocks)"), ("surge", "surge-filter")]:
    rps, p50, p99, cpu = med[v]
    rounds_rps = ", ".join(f"{x[0]:.0f}" for x in by[v])
    rounds_cpu = ", ".join(f"{x[4]:.1f}" for x in by[v])
    print(f"| {label} | {rps:.0f} | {p50:.3f} | {p99:.3f} | {rps / med['empty'][0]:.1%} | "
          f"{cpu:.1f} | {med['empty'][3] / cpu:.1%} | {rounds_rps} | {rounds_cpu} |")
bad = sum(x[3] for xs in by.values() for x in xs)
# Paired per round: the variants of one round ran back to back, so their ratio cancels the
# machine's slow drift, which the medians of each variant alone do not.
def paired(i, invert=False, variant="surge", base="empty"):
    ratios = [(e[i] / s[i]) if invert else (s[i] / e[i]) for s, e in zip(by[variant], by[base])]
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return statistics.median(ratios), q[0], q[2]
def ratios(variant, base="empty"):
    (tp, tp_lo, tp_hi), (cap, cap_lo, cap_hi) = (paired(0, variant=variant, base=base),
                                                 paired(4, invert=True, variant=variant, base=base))
    return (f"throughput **{tp:.1%}** ({tp_lo:.1%}-{tp_hi:.1%}), "
            f"CPU-based capacity **{cap:.1%}** ({cap_lo:.1%}-{cap_hi:.1%})")
def cpu_over_empty(variant):
    return statistics.median(v[4] - e[4] for v, e in zip(by[variant], by["empty"]))
print()
print(f"surge/empty, medians: throughput **{med['surge'][0] / med['empty'][0]:.1%}**, "
      f"CPU-based capacity (empty CPU per request / surge CPU per request) "
      f"**{med['empty'][3] / med['surge'][3]:.1%}**; non-2xx responses over all runs: {bad}")
print("paired per round (median, interquartile range):")
for variant, base, label in [("surge", "empty", "surge/empty"), ("floor", "empty", "floor/empty"),
                             ("route", "empty", "route-only floor/empty"),
                             ("surge", "floor", "surge/floor")]:
    print(f"  {label}: {ratios(variant, base)}")
print("CPU us per request over the empty filter, paired median: "
      + ", ".join(f"{v} **{cpu_over_empty(v):+.2f}**" for v in ("route", "floor", "surge")))
print(f"surge_filter.wasm: {os.path.getsize(surge_wasm)} bytes "
      f"({os.path.getsize(surge_wasm) / 1024:.1f} KiB); empty_filter.wasm: "
      f"{os.path.getsize(empty_wasm)} bytes; floor_filter.wasm: {os.path.getsize(floor_wasm)} bytes")
print(f"wrk -t1 -c{conns} -d{duration}s --latency, {rounds} interleaved rounds; "
      f"surge pluginConfig: {os.environ.get('SURGE_PLUGIN_CONFIG', '{}')}")
PY
{ echo; echo "surge-filter's own counters after the run:"; echo "$reports"; } >>"$out/results.md"
cat "$out/results.md"

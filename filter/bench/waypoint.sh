#!/usr/bin/env bash
# The filter's cost on an ambient waypoint beside its cost on a sidecar, side by side in one run:
# four Envoys under test (sidecar-shaped and waypoint-shaped, each without a filter and with
# surge-filter in its role), Envoy CPU microseconds per request (utime+stime from /proc around
# each run, the steady measure on a shared machine) and requests/s, interleaved rounds, medians.
#
#   filter/bench/waypoint.sh            # defaults: 20 rounds of 4 s each
#   ROUNDS=3 DURATION=3 filter/bench/waypoint.sh
#
# Layout (2 cores): the Envoys under test run on core $ENVOY_CPU with one worker each; wrk, the
# upstream (an Envoy answering 200 from a direct_response, which also takes the filter's reports)
# and, for the waypoint variants, a tunnel Envoy standing in for ztunnel (it turns each of wrk's
# connections into an HTTP/2 CONNECT stream to the waypoint's connect_terminate, as ztunnel's
# HBONE does, in plaintext) share core $LOAD_CPU. The bootstraps of the Envoys under test come
# from `surge-sandbox bootstrap` (the sandbox's sidecar shape and surge_sandbox::envoy::
# WaypointBootstrap, what istiod 1.30 pushes to a waypoint). Results: target/bench/waypoint/.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
envoy=${SURGE_ENVOY:-$repo/.tools/envoy/bin/envoy}
sandbox=${SURGE_SANDBOX:-$repo/target/debug/surge-sandbox}
surge_wasm=${SURGE_FILTER_WASM:-$repo/target/wasm/surge_filter.wasm}
rounds=${ROUNDS:-20}
duration=${DURATION:-4}
connections=${CONNECTIONS:-32}
envoy_cpu=${ENVOY_CPU:-0}
load_cpu=${LOAD_CPU:-1}
out=$repo/target/bench/waypoint
mkdir -p "$out"

for f in "$envoy" "$sandbox" "$surge_wasm"; do
  if [ ! -f "$f" ]; then
    echo "bench: missing $f (run \`make tools wasm bins\`, or \`make bench-waypoint\`)" >&2
    exit 1
  fi
done
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install -y wrk)" >&2; exit 1; }

# shellcheck source=filter/bench/lib.sh
. "$(dirname "$0")/lib.sh"

upstream_port=$(free_port); admin=$(free_port)
helper_bootstrap upstream "$upstream_port" "$admin" >"$out/upstream.json"
run_envoy upstream "$load_cpu" "$out/upstream.json" "$admin"

declare -A port  # where wrk sends each variant
variants="sidecar-none sidecar-surge waypoint-none waypoint-surge"
for v in $variants; do
  shape=${v%-*}; listen=$(free_port); admin=$(free_port)
  args=(bootstrap --shape "$shape" --listen "$listen" --admin "$admin"
        --upstream "$upstream_port" --scaler "$upstream_port")
  if [ "${v#*-}" = surge ]; then
    args+=(--wasm "$surge_wasm" --plugin-config "{\"role\":\"$shape\"}")
  fi
  "$sandbox" "${args[@]}" >"$out/$v.json"
  run_envoy "$v" "$envoy_cpu" "$out/$v.json" "$admin"
  if [ "$shape" = waypoint ]; then
    tunnel_port=$(free_port); tunnel_admin=$(free_port)
    helper_bootstrap tunnel "$tunnel_port" "$tunnel_admin" "$listen" >"$out/tunnel-$v.json"
    run_envoy "tunnel-$v" "$load_cpu" "$out/tunnel-$v.json" "$tunnel_admin"
    port[$v]=$tunnel_port
  else
    port[$v]=$listen
  fi
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)
: >"$out/raw.tsv"
for v in $variants; do  # warm-up: JIT, connection pools, tunnels
  taskset -c "$load_cpu" wrk -t1 -c"$connections" -d2s "http://127.0.0.1:${port[$v]}/" >/dev/null
done
for r in $(seq 1 "$rounds"); do
  for v in $variants; do
    before=$(cpu_ticks "${envoy_pid[$v]}")
    taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${duration}s" --latency \
      "http://127.0.0.1:${port[$v]}/" >"$out/wrk-$v-$r.txt"
    after=$(cpu_ticks "${envoy_pid[$v]}")
    python3 - "$v" "$r" "$out/wrk-$v-$r.txt" "$((after - before))" "$clk_tck" >>"$out/raw.tsv" <<'PY'
import re, sys
variant, rnd, path, ticks, clk = sys.argv[1:6]
text = open(path).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print(f"{variant}\t{rnd}\t{rps:.0f}\t{int(ticks) * 1e6 / int(clk) / max(total, 1):.2f}\t"
      f"{non2xx.group(1) if non2xx else 0}\t{total}")
PY
    tail -1 "$out/raw.tsv" >&2
  done
done

# The filters' own view: reports delivered, and the route keys the waypoint's filter counted.
: >"$out/filter-stats.txt"
for v in sidecar-surge waypoint-surge; do
  admin=$(python3 -c "import json;print(json.load(open('$out/$v.json'))['admin']['address']['socket_address']['port_value'])")
  { echo "$v:"; http_get "http://127.0.0.1:$admin/stats" | grep -E 'surge\.(reports_delivered_total|route\.)' | head -8; } >>"$out/filter-stats.txt" || true
done

python3 - "$out/raw.tsv" "$rounds" "$duration" "$connections" >"$out/results.md" <<'PY'
import statistics, sys
path, rounds, duration, conns = sys.argv[1:5]
by = {}
for line in open(path):
    v, r, rps, cpu, non2xx, total = line.split("\t")
    by.setdefault(v, []).append((float(rps), float(cpu), int(non2xx), int(total)))
med = {v: (statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)) for v, xs in by.items()}
def added(shape):  # paired per round: the filter's CPU per request over the same shape without it
    return [s[1] - n[1] for s, n in zip(by[f"{shape}-surge"], by[f"{shape}-none"])]
def capacity(shape):  # CPU-based capacity with the filter, relative to without, paired
    return [n[1] / s[1] for s, n in zip(by[f"{shape}-surge"], by[f"{shape}-none"])]
print("| Envoy under test | requests/s (median) | Envoy CPU us/request (median) | all rounds CPU us/request |")
print("|---|---|---|---|")
for v in ("sidecar-none", "sidecar-surge", "waypoint-none", "waypoint-surge"):
    print(f"| {v} | {med[v][0]:.0f} | {med[v][1]:.1f} | {', '.join(f'{x[1]:.1f}' for x in by[v])} |")
print()
for shape in ("sidecar", "waypoint"):
    a, c = added(shape), capacity(shape)
    print(f"{shape}: surge-filter adds **{statistics.median(a):+.2f} us** of Envoy CPU per request "
          f"(paired median; quartiles {statistics.quantiles(a, n=4)[0]:+.2f} to {statistics.quantiles(a, n=4)[2]:+.2f}); "
          f"CPU-based capacity with it **{statistics.median(c):.1%}** of without")
ratio = [w / s for w, s in zip(added("waypoint"), added("sidecar"))]
print(f"waypoint/sidecar added CPU per request, paired median: **{statistics.median(ratio):.2f}**")
bad = sum(x[2] for xs in by.values() for x in xs)
print(f"non-2xx responses over all runs: {bad}; wrk -t1 -c{conns} -d{duration}s, {rounds} interleaved rounds; "
      "waypoint variants through a tunnel Envoy (HTTP/2 CONNECT) on the load core")
PY
cat "$out/results.md"
cat "$out/filter-stats.txt" 2>/dev/null || true

#!/usr/bin/env bash
# The filter's cost on an idle sidecar, where a mesh's thousands of proxies spend most of their
# time: Envoy CPU per second of no traffic, without a filter and with surge-filter at each check
# period in $CHECKS (its tick, on every worker VM), and with a filter that only ticks at the same
# periods (examples/tick_filter.rs: the timer, the thread's wake-up and V8's entry, with nothing
# done), all idle at once and measured over the same spans. Only the ticks and the filter's
# periodic reports (one a second, to an upstream that takes them) run.
#
#   filter/bench/idle.sh                    # defaults: 10 rounds of 30 s, checks of 100 and 50 ms
#   ROUNDS=3 DURATION=10 CHECKS="100 50 20" filter/bench/idle.sh
#
# Layout (2 cores): the Envoys under test run on core $ENVOY_CPU with $CONCURRENCY workers (2,
# an Istio sidecar's default), bootstraps from `surge-sandbox bootstrap --shape sidecar`; the
# upstream on core $LOAD_CPU. CPU time is the sum over the process's threads of
# /proc/<pid>/task/*/schedstat (nanoseconds; /proc/<pid>/stat counts in 10 ms ticks, too coarse
# for an idle process). Results: target/bench/idle/results.md.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
envoy=${SURGE_ENVOY:-$repo/.tools/envoy/bin/envoy}
sandbox=${SURGE_SANDBOX:-$repo/target/debug/surge-sandbox}
surge_wasm=${SURGE_FILTER_WASM:-$repo/target/wasm/surge_filter.wasm}
tick_wasm=${SURGE_TICK_WASM:-$repo/target/wasm/tick_filter.wasm}
rounds=${ROUNDS:-10}
duration=${DURATION:-30}
checks=${CHECKS:-100 50}
concurrency=${CONCURRENCY:-2}
envoy_cpu=${ENVOY_CPU:-0}
load_cpu=${LOAD_CPU:-1}
out=$repo/target/bench/idle
mkdir -p "$out"

for f in "$envoy" "$sandbox" "$surge_wasm" "$tick_wasm"; do
  if [ ! -f "$f" ]; then
    echo "bench: missing $f (run \`make tools wasm bins\`)" >&2
    exit 1
  fi
done

# shellcheck source=filter/bench/lib.sh
. "$(dirname "$0")/lib.sh"

upstream_port=$(free_port); admin=$(free_port)
helper_bootstrap upstream "$upstream_port" "$admin" >"$out/upstream.json"
run_envoy upstream "$load_cpu" "$out/upstream.json" "$admin"

variants="none"
for c in $checks; do variants+=" tick-$c surge-$c"; done
for v in $variants; do
  listen=$(free_port); admin=$(free_port)
  args=(bootstrap --shape sidecar --listen "$listen" --admin "$admin"
        --upstream "$upstream_port" --scaler "$upstream_port")
  case $v in
    surge-*)
      c=${v#surge-}
      args+=(--wasm "$surge_wasm"
             --plugin-config "{\"surge\":{\"check_period_ms\":$c,\"min_gap_ms\":$c}}") ;;
    tick-*) args+=(--wasm "$tick_wasm" --plugin-config "${v#tick-}") ;;
  esac
  "$sandbox" "${args[@]}" >"$out/$v.json"
  run_envoy "$v" "$envoy_cpu" "$out/$v.json" "$admin" "$concurrency"
done

cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
# The threads, by id: a thread that exits takes its time out of the sum, so a round where the
# set changed is flagged rather than trusted.
threads() { ls /proc/"$1"/task 2>/dev/null | tr '\n' ' '; }
sleep 5  # past start-up: the VMs loaded, the first reports sent
: >"$out/raw.tsv"
: >"$out/warnings.txt"
for r in $(seq 1 "$rounds"); do
  declare -A before=() threads_before=()
  for v in $variants; do
    threads_before[$v]=$(threads "${envoy_pid[$v]}")
    before[$v]=$(cpu_ns "${envoy_pid[$v]}")
  done
  start=$(date +%s%N)
  sleep "$duration"
  end=$(date +%s%N)
  for v in $variants; do
    after=$(cpu_ns "${envoy_pid[$v]}")
    if [ "$(threads "${envoy_pid[$v]}")" != "${threads_before[$v]}" ]; then
      echo "round $r, $v: its threads changed during the round; its figure there is low" \
        | tee -a "$out/warnings.txt" >&2
    fi
    # CPU milliseconds per second of wall time.
    awk -v v="$v" -v r="$r" -v cpu=$((after - before[$v])) -v wall=$((end - start)) \
      'BEGIN {printf "%s\t%s\t%.4f\n", v, r, cpu / wall * 1000}' | tee -a "$out/raw.tsv" >&2
  done
done

: >"$out/filter-stats.txt"
for v in $variants; do
  [ "${v%%-*}" = surge ] || continue
  admin=$(python3 -c "import json;print(json.load(open('$out/$v.json'))['admin']['address']['socket_address']['port_value'])")
  { echo "$v:"; http_get "http://127.0.0.1:$admin/stats" | grep -E 'surge\.reports_(sent|delivered)_total' || true; } >>"$out/filter-stats.txt"
done

python3 - "$out/raw.tsv" "$rounds" "$duration" "$concurrency" "$variants" >"$out/results.md" <<'PY'
import statistics, sys
path, rounds, duration, conc, variants = sys.argv[1:6]
variants = variants.split()
by = {}
for line in open(path):
    v, r, ms = line.split("\t")
    by.setdefault(v, []).append(float(ms))
print("| idle Envoy | CPU ms per second (median) | over no filter, paired median | all rounds |")
print("|---|---|---|---|")
for v in variants:
    over = statistics.median(s - n for s, n in zip(by[v], by["none"]))
    print(f"| {v} | {statistics.median(by[v]):.3f} | {over:+.3f} | "
          f"{', '.join(f'{x:.3f}' for x in by[v])} |")
def over(b, a):
    return statistics.median(y - x for x, y in zip(by[a], by[b]))
surges = [v for v in variants if v.startswith("surge-")]
print()
for a, b in zip(surges, surges[1:]):
    print(f"{b} over {a}, paired median: **{over(b, a):+.3f} ms** of CPU per second")
for v in surges:
    tick = "tick-" + v.split("-", 1)[1]
    print(f"{v} over {tick} (what the filter does in its ticks and reports): "
          f"**{over(v, tick):+.3f} ms** of CPU per second")
print(f"\n{rounds} rounds of {duration} s, all variants idle at once; --concurrency {conc}")
PY
cat "$out/warnings.txt" >>"$out/results.md"
cat "$out/results.md"
cat "$out/filter-stats.txt"

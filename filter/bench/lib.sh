# Shared by the filter's benchmark scripts (run.sh, waypoint.sh, idle.sh): sourced, not run.
# The caller sets $envoy and $out.

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

http_get() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The upstream (200 for everything, 202 for reports) and a tunnel (ztunnel's part): JSON on stdout.
helper_bootstrap() { # upstream LISTEN ADMIN | tunnel LISTEN ADMIN WAYPOINT_PORT
  python3 - "$@" <<'PY'
import json, sys
kind, listen, admin = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def sock(port): return {"socket_address": {"address": "127.0.0.1", "port_value": port}}
if kind == "upstream":
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "route_config": {"virtual_hosts": [{"name": "up", "domains": ["*"], "routes": [
            {"match": {"prefix": "/v1/reports"}, "direct_response": {"status": 202}},
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]}}}
    listener_filters, clusters = [hcm], []
else:
    waypoint = int(sys.argv[4])
    listener_filters = [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tunnel", "cluster": "waypoint",
        # ztunnel's HBONE: one HTTP/2 CONNECT stream per connection, to the Service's VIP:port.
        "tunneling_config": {"hostname": "10.96.0.10:8080"}}}]
    clusters = [{"name": "waypoint", "type": "STATIC", "connect_timeout": "1s",
                 "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                     "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                     "explicit_http_config": {"http2_protocol_options": {}}}},
                 "load_assignment": {"cluster_name": "waypoint", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": sock(waypoint)}}]}]}}]
print(json.dumps({"admin": {"address": sock(admin)}, "static_resources": {
    "listeners": [{"name": kind, "address": sock(listen), "filter_chains": [{"filters": listener_filters}]}],
    "clusters": clusters}}))
PY
}

declare -A envoy_pid
run_envoy() { # name cpu config-file admin [concurrency, default 1]
  local name=$1 cpu=$2 config=$3 admin=$4 conc=${5:-1}
  taskset -c "$cpu" "$envoy" -c "$config" --concurrency "$conc" --use-dynamic-base-id -l warning \
    >"$out/$name.log" 2>&1 &
  pids+=($!)
  envoy_pid[$name]=$!
  for _ in $(seq 1 200); do
    if http_get "http://127.0.0.1:$admin/ready" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "bench: envoy $name not ready; log:" >&2; tail -20 "$out/$name.log" >&2; exit 1
}

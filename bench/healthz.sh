#!/usr/bin/env bash
# HTTP front-end baseline: outpostd's /healthz against nginx returning the
# same 15-byte JSON body, same worker count, same wrk load, in one run.
# Prints requests/s, latency percentiles and the ratio outpost/nginx, plus
# outpostd's start-up time and idle RSS.
#
#   bench/healthz.sh [DURATION_S=10] [CONNECTIONS=64] [WORKERS=1]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; CONNS=${2:-64}; WORKERS=${3:-1}
BIN=build/outpostd
[ -x "$BIN" ] || { echo "build first: make" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 2; }
tmp=$(mktemp -d); trap 'kill $OP_PID $NG_PID 2>/dev/null || true; rm -rf "$tmp"' EXIT
OP_PID=""; NG_PID=""
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

OP_PORT=$(free_port)
cat >"$tmp/outpost.yaml" <<YAML
server: {listen: "127.0.0.1:$OP_PORT", workers: $WORKERS}
log: {level: warn}
data_dir: $tmp/var
accounts: [{id: local}]
YAML
t0=$(date +%s%N)
taskset -c 0 "$BIN" --config "$tmp/outpost.yaml" 2>"$tmp/op.log" & OP_PID=$!
until curl -sf "http://127.0.0.1:$OP_PORT/healthz" >/dev/null; do sleep 0.005; done
t1=$(date +%s%N)
echo "outpostd start-up to first /healthz: $(( (t1 - t0) / 1000000 )) ms"
echo "outpostd idle RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$OP_PID/status)"

run_wrk() { taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$1"; }
echo "== outpostd ($WORKERS worker, core 0)"
run_wrk "http://127.0.0.1:$OP_PORT/healthz" | tee "$tmp/op.txt"

if command -v nginx >/dev/null; then
  NG_PORT=$(free_port)
  mkdir -p "$tmp/ng"
  cat >"$tmp/ng/nginx.conf" <<NGX
worker_processes $WORKERS;
daemon off;
pid $tmp/ng/nginx.pid;
error_log $tmp/ng/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$NG_PORT;
    location = /healthz { default_type application/json; return 200 '{"status":"ok"}'; }
  }
}
NGX
  taskset -c 0 nginx -c "$tmp/ng/nginx.conf" -p "$tmp/ng" & NG_PID=$!
  until curl -sf "http://127.0.0.1:$NG_PORT/healthz" >/dev/null; do sleep 0.005; done
  echo "== nginx ($WORKERS worker, core 0)"
  run_wrk "http://127.0.0.1:$NG_PORT/healthz" | tee "$tmp/ng.txt"
  op=$(awk '/Requests\/sec/ {print $2}' "$tmp/op.txt")
  ng=$(awk '/Requests\/sec/ {print $2}' "$tmp/ng.txt")
  echo "ratio outpost/nginx requests/s: $(python3 -c "print(round($op/$ng, 3))")"
else
  echo "nginx not installed: no peer figure (apt-get install nginx-light)"
fi

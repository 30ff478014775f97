#!/usr/bin/env bash
# Gateway overhead: the latency and throughput outpostd's AI gateway adds in
# front of a fast local upstream, against the same upstream called directly
# and against nginx proxying to it, in one run; plus the log store's durable
# ingestion. See bench/README.md ("Gateway") and docs/performance.md.
#
#   bench/gateway_bench.sh                        # 10 s per run, 1 rep, ~2 min
#   bench/gateway_bench.sh --reps 3 --wait-quiet 60
#   bench/gateway_bench.sh --help
#
# The upstream is nginx answering POST /v1/chat/completions with a canned
# 400-byte OpenAI chat completion (`return 200`). In front of it, on the same
# core, one at a time: nginx (1 worker, keep-alive upstream connections) and
# outpostd (1 HTTP worker, 1 upstream thread, logs collected durably: the
# defaults), through the pass-through path /v1/local/bench/up/chat/completions.
# Load: wrk (closed loop, max throughput) and build/bench/gw_load (open loop
# at a fixed rate, latency from the schedule) on another core.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_RUN=10; CONNS=64; RATES=10000; LOAD_CONNS=16; REPS=1; WAIT_QUIET=0
INSTALL=0; DO_CACHE=1; DO_LOGSTORE=1; OUT=build/gateway_bench.txt; RT=0; PERF=
NCPU=$(nproc)
if [ "$NCPU" -ge 4 ]; then GW_CPU=1; UP_CPU=2; LOAD_CPU=3; else GW_CPU=0; UP_CPU=0; LOAD_CPU=1; fi

usage() {
  cat <<'EOF'
usage: bench/gateway_bench.sh [options]
  --seconds S        length of each measured run (default 10)
  --conns N          wrk connections for the max-throughput runs (default 64)
  --rates R[,R..]    fixed rates for gw_load, requests/s (default 10000)
  --load-conns N     gw_load keep-alive connections (default 16)
  --reps N           repeat every measurement N times, order rotated; medians (default 1)
  --gw-cpu C         core of outpostd and of the nginx proxy
  --up-cpu C         core of the upstream nginx
  --load-cpu C[,C]   cores of wrk / gw_load
                     (defaults: 4+ cores: 1, 2, 3; 2 cores: 0, 0, 1)
  --wait-quiet S     wait up to S seconds for the other processes to go quiet
  --rt PRIO          fixed-rate runs only: the servers' and gw_load's threads
                     SCHED_FIFO at PRIO (chrt) for the run, so that other
                     processes on a shared machine do not preempt them
                     (needs CAP_SYS_NICE; the max-throughput runs never use it)
  --no-cache         skip the cache-hit runs
  --no-logstore      skip build/bench/logstore_bench
  --out FILE         tee everything here (default build/gateway_bench.txt)
  --perf PREFIX      after the measurements, one more outpostd max-throughput run
                     (not counted) under perf record (call graphs, dwarf):
                     PREFIX.data and PREFIX.txt (flat profile by thread and symbol)
  --install          apt-get install nginx-light wrk when missing
EOF
}
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --rates) RATES=$2; shift 2 ;;
    --load-conns) LOAD_CONNS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --gw-cpu) GW_CPU=$2; shift 2 ;;
    --up-cpu) UP_CPU=$2; shift 2 ;;
    --load-cpu) LOAD_CPU=$2; shift 2 ;;
    --wait-quiet) WAIT_QUIET=$2; shift 2 ;;
    --rt) RT=$2; shift 2 ;;
    --no-cache) DO_CACHE=0; shift ;;
    --no-logstore) DO_LOGSTORE=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    --perf) PERF=$2; shift 2 ;;
    --install) INSTALL=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# ---- prerequisites: nothing is installed unless asked ----
NGINX=$(command -v nginx || true); [ -n "$NGINX" ] || { [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx; } || true
if [ -z "$NGINX" ] || ! command -v wrk >/dev/null; then
  if [ "$INSTALL" = 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light wrk
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  else
    echo "nginx or wrk missing: apt-get install nginx-light wrk (or run with --install)" >&2
    exit 2
  fi
fi
for b in build/outpostd build/bench/gw_load; do
  [ -x "$b" ] || { echo "$b missing: cmake --build build --target outpostd gw_load" >&2; exit 2; }
done
command -v curl >/dev/null && command -v python3 >/dev/null || { echo "needs curl and python3" >&2; exit 2; }

mkdir -p "$(dirname "$OUT")"
exec > >(tee "$OUT") 2>&1

tmp=$(mktemp -d)
UP_PID=""; PX_PID=""; OP_PID=""
cleanup() {
  for p in $OP_PID $PX_PID $UP_PID; do kill "$p" 2>/dev/null || true; done
  for p in $OP_PID $PX_PID $UP_PID; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# CPU seconds (user + system, all threads) of a process, from /proc.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }
# The same per thread, summed by thread name: "name=seconds,name=seconds".
threads_cpu() {
  python3 - "$1" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK"); tot = {}
d = f"/proc/{sys.argv[1]}/task"
for t in os.listdir(d):
    try:
        st = open(f"{d}/{t}/stat").read()
    except OSError:
        continue
    name = st[st.index("(") + 1:st.rindex(")")].replace(" ", "_").replace(",", "_").replace("=", "_")
    f = st[st.rindex(")") + 2:].split()
    tot[name] = tot.get(name, 0) + (int(f[11]) + int(f[12])) / hz
print(",".join(f"{k}={v:.3f}" for k, v in sorted(tot.items())))
PY
}
busy_fraction() {  # share of all CPUs busy over 1 s
  local a b
  a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat); sleep 1
  b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  python3 -c "a=[int(x) for x in '$a'.split()];b=[int(x) for x in '$b'.split()];d=b[0]-a[0];i=b[1]-a[1];print(round(d/max(1,d+i),2))"
}
wait_quiet() {
  [ "$WAIT_QUIET" -gt 0 ] || return 0
  local end=$(( $(date +%s) + WAIT_QUIET )) f
  while [ "$(date +%s)" -lt "$end" ]; do
    f=$(busy_fraction)
    python3 -c "import sys; sys.exit(0 if $f < 0.15 else 1)" && return 0
    echo "waiting for a quiet machine: CPUs ${f} busy"; sleep 2
  done
  echo "the machine stayed busy for $WAIT_QUIET s: measuring anyway"
}

# ---- the upstream: nginx with a canned chat completion ----
COMPLETION='{"id":"chatcmpl-gwbench0000000000000001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a canned completion from the gateway benchmark upstream. Nothing was generated.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":19,"total_tokens":31},"system_fingerprint":"fp_gwbench"}'
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
UP_PORT=$(free_port); PX_PORT=$(free_port); OP_PORT=$(free_port)
mkdir -p "$tmp/up" "$tmp/px" "$tmp/var"
cat >"$tmp/up/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $tmp/up/nginx.pid;
error_log $tmp/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_buffer_size 64k;
  server {
    listen 127.0.0.1:$UP_PORT backlog=4096;
    location = /v1/chat/completions {
      default_type application/json;
      return 200 '$COMPLETION';
    }
  }
}
NGX
# The peer proxy: one worker on the gateway's core, keep-alive connections to
# the upstream (what any production nginx in front of an API would do).
cat >"$tmp/px/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $tmp/px/nginx.pid;
error_log $tmp/px/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_buffer_size 64k;
  upstream up {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$PX_PORT backlog=4096;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGX
cat >"$tmp/outpost.yaml" <<YAML
server: {listen: "127.0.0.1:$OP_PORT", workers: 1}
log: {level: warn}
data_dir: $tmp/var
accounts: [{id: local}]
gateway: {upstream_threads: 1}
gateways:
  - account: local
    id: bench
    providers:
      - {name: up, kind: openai, base_url: "http://127.0.0.1:$UP_PORT/v1"}
YAML

taskset -c "$UP_CPU" "$NGINX" -c "$tmp/up/nginx.conf" -p "$tmp/up" & UP_PID=$!
taskset -c "$GW_CPU" "$NGINX" -c "$tmp/px/nginx.conf" -p "$tmp/px" & PX_PID=$!
taskset -c "$GW_CPU" build/outpostd --config "$tmp/outpost.yaml" 2>"$tmp/op.log" & OP_PID=$!

DIRECT_URL="http://127.0.0.1:$UP_PORT/v1/chat/completions"
PROXY_URL="http://127.0.0.1:$PX_PORT/v1/chat/completions"
OP_URL="http://127.0.0.1:$OP_PORT/v1/local/bench/up/chat/completions"
LOGS_URL="http://127.0.0.1:$OP_PORT/client/v4/accounts/local/ai-gateway/gateways/bench/logs?per_page=1"
for u in "http://127.0.0.1:$UP_PORT/" "http://127.0.0.1:$PX_PORT/" "http://127.0.0.1:$OP_PORT/healthz"; do
  for _ in $(seq 400); do curl -s -o /dev/null "$u" && break; sleep 0.025; done
done
kill -0 "$OP_PID" 2>/dev/null || { echo "outpostd did not start:"; cat "$tmp/op.log"; exit 1; }
worker_of() { pgrep -P "$1" | head -1; }
RSS0=$(awk '/VmRSS/ {print $2, $3}' "/proc/$OP_PID/status")
UP_W=$(worker_of "$UP_PID"); PX_W=$(worker_of "$PX_PID")

# ---- checks: all three answer the canned completion ----
post() { curl -s -D "$tmp/hdr" -o "$tmp/body" -w '%{http_code}' -H 'Content-Type: application/json' "$@" --data-binary "$BODY"; }
printf '%s' "$COMPLETION" >"$tmp/expected"
for t in direct proxy outpost; do
  case $t in direct) u=$DIRECT_URL ;; proxy) u=$PROXY_URL ;; outpost) u=$OP_URL ;; esac
  code=$(post "$u")
  if [ "$code" != 200 ] || ! cmp -s "$tmp/body" "$tmp/expected"; then
    echo "check failed: $t answered $code:"; cat "$tmp/hdr" "$tmp/body"; echo
    [ "$t" = outpost ] && { echo "-- outpostd log:"; tail -20 "$tmp/op.log"; }
    exit 1
  fi
done
if [ "$DO_CACHE" = 1 ]; then
  post -H 'cf-aig-cache-ttl: 60' "$OP_URL" >/dev/null
  code=$(post -H 'cf-aig-cache-ttl: 60' "$OP_URL")
  if [ "$code" != 200 ] || ! grep -qi '^cf-aig-cache-status: *HIT' "$tmp/hdr" || ! cmp -s "$tmp/body" "$tmp/expected"; then
    echo "check failed: the second cached request was not a HIT with the same body:"; cat "$tmp/hdr"; exit 1
  fi
fi

echo "== gateway_bench $(date -u +%FT%TZ) on $(uname -n): $NCPU CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
echo "outpostd $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty'), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "cores: outpostd + nginx proxy $GW_CPU, upstream nginx $UP_CPU, load $LOAD_CPU; runs of ${SECONDS_RUN} s; load average $(loadavg)"
[ "$RT" -gt 0 ] && echo "fixed-rate runs: servers and gw_load SCHED_FIFO priority $RT (--rt)"
pgrep -a -f 'cc1|ld |ctest|test_|criterion' >/dev/null 2>&1 && \
  echo "note: other builds/tests are running: $(pgrep -c -f 'cc1|ctest|test_' || true) processes"

RES="$tmp/results"; : >"$RES"
url_of() { case $1 in direct) echo "$DIRECT_URL" ;; proxy) echo "$PROXY_URL" ;; outpost|cache) echo "$OP_URL" ;; esac; }
pid_of() { case $1 in direct) echo "$UP_W" ;; proxy) echo "$PX_W" ;; outpost|cache) echo "$OP_PID" ;; esac; }
log_count() {  # durable records the logs API shows (after the group commit)
  local prev=-1 n
  for _ in $(seq 50); do
    n=$(curl -s "$LOGS_URL" | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["result_info"]["total_count"])
except Exception: print(-1)')
    [ "$n" = "$prev" ] && { echo "$n"; return; }
    prev=$n; sleep 0.1
  done
  echo "$n"
}

# One measurement: target, kind (max | rate R), rep. Appends one result line.
measure() {
  local t=$1 kind=$2 rep=$3 url pid c0 c1 u0 u1 l0 l1 line hdr=""
  url=$(url_of "$t"); pid=$(pid_of "$t")
  [ "$t" = cache ] && hdr='cf-aig-cache-ttl: 60'
  [ "$t" = outpost ] || [ "$t" = cache ] && l0=$(log_count)
  c0=$(cpu_s "$pid"); u0=$(cpu_s "$UP_W"); local th0=""
  [ "$t" = outpost ] || [ "$t" = cache ] && th0=$(threads_cpu "$pid")
  if [ "$kind" = max ]; then
    line=$(GW_BODY="$BODY" GW_HEADERS="$hdr" taskset -c "$LOAD_CPU" \
             wrk -t1 -c"$CONNS" -d"${SECONDS_RUN}s" -s bench/gateway_post.lua "$url" | grep '^wrk_result' | sed 's/^wrk_result //')
  else
    local args=(-r "${kind#rate}" -d "$SECONDS_RUN" -w 1 -c "$LOAD_CONNS" -b "$BODY") rt=()
    [ -n "$hdr" ] && args+=(-H "$hdr" -m 'cf-aig-cache-status: HIT')
    if [ "$RT" -gt 0 ]; then
      rt=(chrt -f "$RT"); chrt -f -a -p "$RT" "$pid" >/dev/null; chrt -f -a -p "$RT" "$UP_W" >/dev/null
    fi
    line=$("${rt[@]}" taskset -c "$LOAD_CPU" build/bench/gw_load "${args[@]}" "$url")
    if [ "$RT" -gt 0 ]; then chrt -o -a -p 0 "$pid" >/dev/null; chrt -o -a -p 0 "$UP_W" >/dev/null; fi
  fi
  c1=$(cpu_s "$pid"); u1=$(cpu_s "$UP_W")
  line="target=$t kind=$kind rep=$rep $line cpu_s=$(python3 -c "print(round($c1-$c0,3))") up_cpu_s=$(python3 -c "print(round($u1-$u0,3))") load=$(cut -d' ' -f1 /proc/loadavg)"
  if [ "$t" = outpost ] || [ "$t" = cache ]; then
    l1=$(log_count); line="$line logs=$((l1 - l0)) threads_cpu=$(python3 -c '
import sys
a = dict(x.split("=") for x in sys.argv[1].split(",") if x)
b = dict(x.split("=") for x in sys.argv[2].split(",") if x)
print(",".join(f"{k}:{float(v) - float(a.get(k, 0)):.3f}" for k, v in sorted(b.items())))' "$th0" "$(threads_cpu "$pid")")"
  fi
  echo "$line" | tee -a "$RES"
}

TARGETS="direct proxy outpost"; [ "$DO_CACHE" = 1 ] && TARGETS="$TARGETS cache"
KINDS="max"; for r in ${RATES//,/ }; do KINDS="$KINDS rate$r"; done
# warm-up: connections, caches, page faults (not recorded)
for t in $TARGETS; do
  GW_BODY="$BODY" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -s bench/gateway_post.lua "$(url_of "$t")" >/dev/null
done
wait_quiet
for rep in $(seq "$REPS"); do
  for kind in $KINDS; do
    # rotate the order each rep so that drift on a shared machine hits all alike
    set -- $TARGETS; for _ in $(seq $(( (rep - 1) % $# ))); do set -- "${@:2}" "$1"; done
    for t in "$@"; do measure "$t" "$kind" "$rep"; done
  done
done

if [ -n "$PERF" ]; then
  command -v perf >/dev/null || { echo "perf not installed: no profile (apt-get install linux-perf)"; PERF=""; }
fi
if [ -n "$PERF" ]; then
  perf record -q -F 999 --call-graph dwarf,16384 -o "$PERF.data" -p "$OP_PID" -- sleep "$SECONDS_RUN" 2>/dev/null &
  perf_pid=$!
  GW_BODY="$BODY" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${SECONDS_RUN}s" -s bench/gateway_post.lua "$OP_URL" \
    | grep '^wrk_result' | sed 's/^wrk_result /under perf (not counted): /'
  wait "$perf_pid" || true
  perf report -i "$PERF.data" --no-children --sort comm,dso,symbol --stdio -g none --percent-limit 0.3 \
    >"$PERF.txt" 2>/dev/null || true
  echo "perf: $PERF.data; flat profile by thread and symbol in $PERF.txt"
fi

# ---- log ingestion: what the gateway wrote ----
SENT_OP=$(python3 - "$RES" <<'PY'
import sys
n = 0
for line in open(sys.argv[1]):
    kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
    if kv["target"] in ("outpost", "cache"):
        n += int(kv.get("requests") or kv.get("sent_all") or 0)
print(n)
PY
)
TOTAL_LOGS=$(log_count)
echo "log records in the store: $TOTAL_LOGS (requests counted by the load generators in measured runs: $SENT_OP; warm-up and checks add more)"
curl -s "http://127.0.0.1:$OP_PORT/metrics" | grep -E '^outpost_(logstore|gateway_log)[a-z_]*(_sum|_count|_total)?[ {]' | grep -v _bucket | head -20 >"$tmp/metrics" || true
[ -s "$tmp/metrics" ] && { echo "-- outpostd log metrics:"; cat "$tmp/metrics"; }
echo "outpostd RSS: $RSS0 at start, $(awk '/VmRSS/ {print $2, $3}' /proc/$OP_PID/status) after the runs; data_dir $(du -sh "$tmp/var" | cut -f1)"

# ---- summary ----
python3 - "$RES" "$CONNS" "$LOAD_CONNS" "$SECONDS_RUN" <<'PY'
import statistics, sys
rows = []
for line in open(sys.argv[1]):
    kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
    rows.append(kv)
conns, lconns, secs = sys.argv[2], sys.argv[3], sys.argv[4]
names = {"direct": "direct to upstream", "proxy": "nginx proxy", "outpost": "outpostd gateway",
         "cache": "outpostd, cache HIT"}

def med(t, kind, key):
    v = [float(r[key]) for r in rows if r["target"] == t and r["kind"] == kind and key in r]
    return statistics.median(v) if v else None

def per_req_us(t, kind, key):
    v = []
    for r in rows:
        if r["target"] == t and r["kind"] == kind:
            n = float(r.get("requests") or r.get("sent_all") or 0)
            if n:
                v.append(float(r[key]) * 1e6 / n)
    return statistics.median(v) if v else None

def f(x, d=0):
    return "-" if x is None else f"{x:,.{d}f}"

targets = [t for t in ("direct", "proxy", "outpost", "cache") if any(r["target"] == t for r in rows)]
kinds = []
for r in rows:
    if r["kind"] not in kinds:
        kinds.append(r["kind"])
reps = max(int(r["rep"]) for r in rows)
print(f"\n== summary (median of {reps} rep{'s' if reps > 1 else ''})")
if "max" in kinds:
    print(f"\nmax throughput: wrk -t1 -c{conns}, {secs} s, closed loop")
    print("| target | requests/s | p50 µs | p99 µs | errors | CPU µs/req (gateway) | CPU µs/req (upstream) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for t in targets:
        gw = per_req_us(t, "max", "cpu_s") if t != "direct" else None
        print(f"| {names[t]} | {f(med(t, 'max', 'rps'))} | {f(med(t, 'max', 'p50_us'))} | "
              f"{f(med(t, 'max', 'p99_us'))} | {f(med(t, 'max', 'errors'))}+{f(med(t, 'max', 'non2xx'))} | "
              f"{f(gw, 1)} | {f(per_req_us(t, 'max', 'up_cpu_s'), 1)} |")
    for t in ("outpost", "cache"):
        per = {}
        for r in rows:
            if r["target"] == t and r["kind"] == "max" and "threads_cpu" in r:
                for item in r["threads_cpu"].split(","):
                    k, v = item.split(":")
                    per.setdefault(k, []).append(float(v) * 1e6 / float(r["requests"]))
        if per:
            print(f"  {names[t]}, CPU µs/req by thread: " +
                  ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in sorted(per.items()) if statistics.median(v) >= 0.05))
    op, px = med("outpost", "max", "rps"), med("proxy", "max", "rps")
    if op and px:
        print(f"ratio outpost/nginx-proxy requests/s: {op / px:.3f}")
    if med("cache", "max", "rps") and px:
        print(f"ratio outpost cache HIT/nginx-proxy requests/s: {med('cache', 'max', 'rps') / px:.3f}")
for kind in [k for k in kinds if k.startswith("rate")]:
    rate = int(kind[4:])
    print(f"\nfixed rate {rate:,}/s: gw_load -c{lconns}, {secs} s after 1 s warm-up, open loop, latency from the schedule (µs)")
    print("| target | achieved/s | p50 | p90 | p99 | p99.9 | max | errors+non2xx+unfinished | CPU µs/req |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for t in targets:
        err = sum(med(t, kind, k) or 0 for k in ("errors", "non2xx", "unfinished"))
        gw = per_req_us(t, kind, "cpu_s") if t != "direct" else None
        print(f"| {names[t]} | {f(med(t, kind, 'achieved_rps'))} | {f(med(t, kind, 'p50_us'), 1)} | "
              f"{f(med(t, kind, 'p90_us'), 1)} | {f(med(t, kind, 'p99_us'), 1)} | "
              f"{f(med(t, kind, 'p999_us'), 1)} | {f(med(t, kind, 'max_us'), 1)} | {f(err)} | {f(gw, 1)} |")
    d50, d99 = med("direct", kind, "p50_us"), med("direct", kind, "p99_us")
    print("added latency (minus direct at the same rate):")
    for t in ("proxy", "outpost", "cache"):
        if t in targets and d50 is not None:
            a50, a99 = med(t, kind, "p50_us") - d50, med(t, kind, "p99_us") - d99
            print(f"  {names[t]:22s} p50 {a50:+8.1f} µs   p99 {a99:+8.1f} µs")
    if "outpost" in targets and d99 is not None:
        a99 = med("outpost", kind, "p99_us") - d99
        print(f"  target (PRODUCT.md): p99 added < 300 µs at 10k/s on one core: "
              f"{'met' if a99 < 300 else 'NOT met'} at {rate:,}/s ({a99:+.1f} µs)")
logs = [(r, float(r["logs"])) for r in rows if "logs" in r and r["kind"] == "max"]
if logs:
    print("\nlog ingestion during the max-throughput runs (durable records the logs API shows):")
    for r, n in logs:
        req = float(r["requests"])
        dur = float(r["duration_s"])
        print(f"  {names[r['target']]}, rep {r['rep']}: {n:,.0f} records for {req:,.0f} answered requests "
              f"({n / req:.4f} per request), {n / dur:,.0f} durable logs/s")
PY

# ---- the log store alone: durable logs/s against SQLite ----
if [ "$DO_LOGSTORE" = 1 ]; then
  if [ -x build/bench/logstore_bench ]; then
    # The node-wide figure (decision 0010's command): not pinned, 4 appending threads.
    echo; echo "== build/bench/logstore_bench -n 200000 -t 4 --sync-n 2000 (the log store alone, fdatasync on, against SQLite)"
    mkdir -p "$tmp/ls"
    build/bench/logstore_bench -n 200000 -t 4 --sync-n 2000 -d "$tmp/ls" || echo "logstore_bench failed: $?"
  else
    echo "build/bench/logstore_bench not built: no log store figure (cmake --build build --target logstore_bench)"
  fi
fi
echo "load average at the end: $(loadavg); results in $OUT"

-- wrk script for bench/gateway_bench.sh: POSTs a small OpenAI chat body and
-- prints one parseable line at the end.
--
--   GW_BODY='{"model":...}' GW_HEADERS='cf-aig-cache-ttl: 60|x-a: b' \
--     wrk -t1 -c64 -d10s -s bench/gateway_post.lua URL
--
-- GW_BODY replaces the default body; GW_HEADERS adds headers ("Name: value",
-- several separated by '|'). The last line of output is
--   wrk_result requests=N duration_s=S rps=R p50_us= p90_us= p99_us=
--              p999_us= max_us= non2xx= errors= (connect+read+write+timeout)
-- wrk's own percentiles: latency of the requests it sent, each connection
-- waiting for its answer before the next (closed loop; see gw_load.c for the
-- open-loop figure at a fixed rate).

wrk.method = "POST"
wrk.body = os.getenv("GW_BODY") or
  '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"

local extra = os.getenv("GW_HEADERS")
if extra then
  for item in string.gmatch(extra, "[^|]+") do
    local name, value = string.match(item, "^%s*([^:]+):%s*(.-)%s*$")
    if name then
      wrk.headers[name] = value
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "wrk_result requests=%d duration_s=%.3f rps=%.1f p50_us=%.1f p90_us=%.1f " ..
    "p99_us=%.1f p999_us=%.1f max_us=%.1f non2xx=%d errors=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, e.status,
    e.connect + e.read + e.write + e.timeout))
end

-- retry_backoff.lua: retry a failing step with exponential backoff and
-- jitter, then fall back to the next step.
--
-- Hook: on_error (AI gateway only; see docs/policies.md).
--
--   retryable error (5xx, 408, 429, timeout, network) and attempts left:
--       retry after min(cap, base * factor^(attempt-1)) ms, with jitter;
--       when the upstream says how long to wait (a Retry-After header, or
--       retry_after / retry_after_ms / "try again in 1.5s" in the error
--       body) that wait is used instead, unless it is longer than
--       max_hint_ms: then waiting is pointless and it falls back at once
--   retryable error, attempts used up: fallback
--   anything else (400, 401, ...): no opinion (nil), so a later policy
--       such as fallback_chain.lua or the gateway's configuration decides
--
-- attempts: err.max_attempts (the step's configured attempts) unless
-- CONFIG.max_attempts is set.
--
-- Configure in CONFIG below, or per request through cf-aig-metadata:
--   {"retry_max_attempts": 5, "retry_base_ms": 100, "retry_cap_ms": 5000,
--    "retry_jitter": 0}
-- (metadata values outside sane ranges are ignored; at most 10 attempts).
local CONFIG = {
  base_ms = 200,        -- first delay
  factor = 2,           -- growth per attempt
  cap_ms = 10000,       -- longest computed delay
  jitter = 0.5,         -- 0 = none; 0.5 = each delay is 50..100% of the computed one
  max_attempts = nil,   -- nil: the step's configured attempts (err.max_attempts)
  max_hint_ms = 30000,  -- a longer Retry-After hint falls back instead of waiting
  retry_statuses = {[408] = true, [429] = true, [500] = true, [502] = true, [503] = true,
                    [504] = true},
  retry_kinds = {timeout = true, network = true},
}

-- A number from metadata key k within [lo, hi], else dflt.
local function md_number(req, k, dflt, lo, hi)
  local v = req.metadata[k]
  if type(v) == "number" and v >= lo and v <= hi then return v end
  return dflt
end

local function retryable(err)
  if err.kind == "http" then return CONFIG.retry_statuses[err.status] == true end
  return CONFIG.retry_kinds[err.kind] == true
end

-- The upstream's wait hint in ms, or nil. Bodies are searched for one on
-- 429 and 503 only, the answers that mean "come back later".
local function hint_ms(err)
  if err.retry_after_ms then return err.retry_after_ms end
  if err.status ~= 429 and err.status ~= 503 then return nil end
  local body = err.body
  if not body or err.body_len > 65536 then return nil end
  if body:sub(1, 1) == "{" then
    local doc = outpost.json_decode(body)
    if type(doc) == "table" then
      local e = type(doc.error) == "table" and doc.error or doc
      if type(e.retry_after_ms) == "number" then return e.retry_after_ms end
      if type(e.retry_after) == "number" then return e.retry_after * 1000 end
      if type(e.message) == "string" then body = e.message end
    end
  end
  -- OpenAI-style text: "Please try again in 1.5s." / "try again in 20ms"
  local n, unit = body:match("[Tt]ry again in ([%d%.]+)%s*(m?s)")
  n = tonumber(n)
  if n then return unit == "ms" and n or n * 1000 end
  return nil
end

function on_error(req, err)
  if not retryable(err) then return nil end
  local max_attempts = md_number(req, "retry_max_attempts",
                                 CONFIG.max_attempts or err.max_attempts, 1, 10)
  local attempt = err.attempt or 1
  if attempt >= max_attempts then return outpost.fallback() end
  local hint = hint_ms(err)
  if hint then
    if hint > CONFIG.max_hint_ms then return outpost.fallback() end
    return outpost.retry(math.floor(math.max(hint, 0)))
  end
  local base = md_number(req, "retry_base_ms", CONFIG.base_ms, 0, 60000)
  local cap = md_number(req, "retry_cap_ms", CONFIG.cap_ms, 0, 600000)
  local jitter = md_number(req, "retry_jitter", CONFIG.jitter, 0, 1)
  local delay = math.min(cap, base * CONFIG.factor ^ (attempt - 1))
  if jitter > 0 then
    delay = delay * (1 - jitter) + delay * jitter * math.random()
  end
  return outpost.retry(math.floor(delay))
end

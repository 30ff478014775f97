-- fallback_chain.lua: go on to the next provider when one is down, stop
-- when the request itself is wrong.
--
-- Hooks: on_error, on_response (AI gateway only; see docs/policies.md).
--
--   on_error     5xx, 429, timeouts, network/TLS/protocol errors -> fallback
--                (the gateway tries the universal request's next step; after
--                the last step the client gets the last error)
--                any other 4xx -> fail with the upstream's status: another
--                provider would refuse the same request
--   on_response  a non-streamed 200 whose body is an error envelope
--                ({"success": false, ...}, as Workers AI answers some
--                failures) -> fallback
--
-- List retry_backoff.lua before this file to retry a step before falling
-- back: the first policy with an opinion decides.
--
-- Configure in CONFIG below, or per request through cf-aig-metadata:
--   {"fallback": false}          this policy stays out of the decision
--   {"fallback_on_4xx": true}    4xx falls back too instead of failing
local CONFIG = {
  -- 4xx statuses that still fall back (the provider, not the request, is
  -- the problem): rate limited, request timeout at the provider.
  fallback_4xx = {[408] = true, [429] = true},
  -- Error kinds (err.kind) that fall back.
  fallback_kinds = {timeout = true, network = true, tls = true, protocol = true},
  -- on_response reads bodies up to this size for an error envelope.
  max_envelope_bytes = 65536,
}

local function enabled(req)
  return req.metadata.fallback ~= false
end

function on_error(req, err)
  if not enabled(req) then return nil end
  local status = err.status
  if err.kind ~= "http" or status == 0 then
    if CONFIG.fallback_kinds[err.kind] then return outpost.fallback() end
    return nil
  end
  if status >= 500 or CONFIG.fallback_4xx[status] then
    return outpost.fallback()
  end
  if status >= 400 then
    if req.metadata.fallback_on_4xx == true then return outpost.fallback() end
    local msg = err.message
    if type(msg) ~= "string" or msg == "" then
      msg = "upstream " .. (req.provider or "provider") .. " refused the request with status " .. status
    end
    return outpost.fail(status, msg)
  end
  return nil
end

function on_response(req, resp)
  if resp.status ~= 200 or not enabled(req) then return nil end
  local n = resp.body_len
  if n == 0 or n > CONFIG.max_envelope_bytes then return nil end -- a stream, or too big to check
  local body = resp.body
  -- Cheap test first (a plain search, then a match where it was found):
  -- only bodies with "success": false are decoded.
  local at = 1
  repeat
    at = body:find('"success"', at, true)
    if not at then return nil end
    local hit = body:find('^"success"%s*:%s*false', at)
    at = at + 9
  until hit
  local doc = outpost.json_decode(body)
  if type(doc) == "table" and doc.success == false then
    return outpost.fallback()
  end
  return nil
end

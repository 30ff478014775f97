-- token_budget.lua: a token budget and a request rate per user.
--
-- Hook: limit (see docs/policies.md). Returns two rules for each request
-- that names a user; the gateway counts usage against them and refuses
-- (429) what goes over:
--   tokens:<user>    tokens (prompt + completion) per TOKEN_WINDOW, sliding
--   requests:<user>  requests per REQUEST_WINDOW
--
-- The user is cf-aig-metadata's "user" (req.metadata.user), else the name of
-- the token that authenticated (req.token_name). Requests naming neither
-- are limited as ANONYMOUS (set it to nil to leave them unlimited here).
--
-- Configure in CONFIG below. Budgets are deliberately NOT read from
-- req.metadata: the client writes the metadata, and must not be able to
-- raise its own budget. Per-user and per-token overrides live in CONFIG.
local CONFIG = {
  tokens = 100000,           -- tokens per window
  token_window = 86400,      -- seconds (one day)
  requests = 60,             -- requests per window
  request_window = 60,       -- seconds
  anonymous = "anonymous",   -- the user for requests that name none; nil = no limit
  -- Overrides by user: users = {["alice"] = {tokens = 1000000, requests = 600}},
  users = {},
  -- Overrides by authenticating token name: tokens_by_name = {["ci"] = {tokens = 5e6}},
  tokens_by_name = {},
}

-- Keys longer than this are hashed (a rule key may be 159 bytes).
local MAX_USER_BYTES = 100

-- The rules of one user, built once and reused: the host only reads what
-- limit() returns. At most CACHE_MAX users are kept (then it starts over),
-- and only short names, so the cache stays far below the memory cap (each
-- worker thread has its own).
local CACHE_MAX = 1000
local cache, cached = {}, 0

local function rules_for(user, token_name)
  local o = CONFIG.users[user] or CONFIG.tokens_by_name[token_name or ""] or CONFIG
  local key = user
  if #key > MAX_USER_BYTES then key = "#" .. outpost.hash(key) end
  return {
    {key = "tokens:" .. key, unit = "tokens", limit = o.tokens or CONFIG.tokens,
     window = o.token_window or CONFIG.token_window, sliding = true},
    {key = "requests:" .. key, limit = o.requests or CONFIG.requests,
     window = o.request_window or CONFIG.request_window},
  }
end

-- Whether overrides by token name exist (then the token is part of the
-- cache key).
local BY_TOKEN = next(CONFIG.tokens_by_name) ~= nil

function limit(req)
  local user = req.metadata.user
  local t = type(user)
  if t == "number" then
    user = tostring(user)
  elseif t ~= "string" or user == "" then
    user = req.token_name or CONFIG.anonymous
    if user == nil or user == "" then return nil end
  end
  if #user > MAX_USER_BYTES then return rules_for(user, req.token_name) end
  local ck = user
  if BY_TOKEN then ck = user .. "\0" .. (req.token_name or "") end
  local rules = cache[ck]
  if not rules then
    if cached >= CACHE_MAX then cache, cached = {}, 0 end
    rules = rules_for(user, req.token_name)
    cache[ck], cached = rules, cached + 1
  end
  return rules
end

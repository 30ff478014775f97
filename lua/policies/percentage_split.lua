-- percentage_split.lua: send a percentage of traffic to another provider or
-- model (A/B tests, canaries), sticky per user.
--
-- Hook: route (see docs/policies.md). For requests that match (MATCH: a
-- set of models, or nil for every gateway request), picks an arm by weight
-- and returns {provider=, model=}. The pick is a stable hash of SALT and the
-- user (cf-aig-metadata "user", else the token name, else the account), so
-- one user always sees one arm; change SALT to reshuffle users. Requests
-- outside a gateway pass unchanged.
--
-- Configure ARMS/MATCH/SALT below. Per request, cf-aig-metadata may name an
-- arm: {"ab_arm": "canary"} (only when ALLOW_FORCE is true; every arm is one
-- the operator listed, so this only lets a client pick among them).
local split = require("outpost.split")

local ARMS = {
  {name = "control", provider = "workers-ai", model = "@cf/meta/llama-3.1-8b-instruct", weight = 90},
  {name = "canary", provider = "openai", model = "gpt-4o-mini", weight = 10},
}
local MATCH = {["@cf/meta/llama-3.1-8b-instruct"] = true} -- nil: every gateway request
local SALT = "split-1"
local ALLOW_FORCE = true

-- A picker over the arms (validated once, here at load), arms by name, and
-- each arm's decision (built once: the host only reads what route returns).
local choices, BY_NAME = {}, {}
for i, arm in ipairs(ARMS) do
  arm.decision = {provider = arm.provider, model = arm.model}
  choices[i] = {arm, arm.weight}
  BY_NAME[arm.name] = arm
end
local pick = split.new(choices)

-- Each user's arm, remembered (the pick is stable, so this only saves the
-- hashing): at most CACHE_MAX short user names, then it starts over.
local CACHE_MAX = 1000
local by_user, cached = {}, 0

function route(req)
  if not req.gateway then return nil end
  if MATCH and not MATCH[req.model] then return nil end
  local md = req.metadata
  local arm = ALLOW_FORCE and BY_NAME[md.ab_arm]
  if not arm then
    local user = md.user
    local t = type(user)
    if t ~= "string" and t ~= "number" then
      user = req.token_name or req.account or "anonymous"
    end
    arm = by_user[user]
    if not arm then
      arm = pick(SALT .. ":" .. user)
      if #tostring(user) <= 100 then
        if cached >= CACHE_MAX then by_user, cached = {}, 0 end
        by_user[user], cached = arm, cached + 1
      end
    end
  end
  return arm.decision
end

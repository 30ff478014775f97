-- outpost.split: stable percentage splits for A/B tests and canaries.
--
--   local split = require("outpost.split")
--   local model = split.pick(req.headers["x-user"] or req.account,
--                            {{"@local/model-a", 90}, {"@local/model-b", 10}})
--
--   -- fixed arms: validate once at load, then pick per request (cheaper)
--   local pick = split.new({{"@local/model-a", 90}, {"@local/model-b", 10}})
--   local model = pick(user)
--
-- The same key always lands on the same arm (FNV-1a of the key), so one user
-- sees one variant. Weights need not add up to 100: they are relative. An
-- arm's value may be anything (a model id, a table describing the arm).
-- split.new(arms)(key) and split.pick(key, arms) choose the same arm.
local M = {}

local hash = outpost.hash

-- Checks arms; returns their values, cumulative weights and total.
local function prepare(arms)
  assert(type(arms) == "table" and #arms > 0, "split: arms must be a non-empty list")
  local values, acc, total = {}, {}, 0
  for i = 1, #arms do
    local arm = arms[i]
    assert(type(arm) == "table" and type(arm[2]) == "number" and arm[2] >= 0,
           "split: each arm is {value, weight} with a weight >= 0")
    total = total + arm[2]
    values[i], acc[i] = arm[1], total
  end
  assert(total > 0, "split: weights add up to 0")
  return values, acc, total
end

-- The arm for hash point h (0 <= h < 1e6) out of the prepared arms.
local function choose(h, values, acc, total)
  local point = h / 1000000 * total
  local n = #acc
  for i = 1, n do
    if point < acc[i] then return values[i] end
  end
  return values[n]
end

-- A picker for fixed arms: pick(key) -> the key's arm's value. key: a string.
function M.new(arms)
  local values, acc, total = prepare(arms)
  return function(key)
    return choose(hash(key) % 1000000, values, acc, total)
  end
end

function M.pick(key, arms)
  assert(type(key) == "string", "split.pick: key must be a string")
  assert(type(arms) == "table" and #arms > 0, "split.pick: arms must be a non-empty list")
  local n, total = #arms, 0
  for i = 1, n do
    local w = arms[i][2]
    assert(type(w) == "number" and w >= 0, "split.pick: weights must be >= 0")
    total = total + w
  end
  assert(total > 0, "split.pick: weights add up to 0")
  local point = (hash(key) % 1000000) / 1000000 * total
  local acc = 0
  for i = 1, n do
    acc = acc + arms[i][2]
    if point < acc then return arms[i][1] end
  end
  return arms[n][1]
end

return M

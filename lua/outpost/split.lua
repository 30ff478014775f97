-- outpost.split: stable percentage splits for A/B tests and canaries.
--
--   local split = require("outpost.split")
--   local model = split.pick(req.headers["x-user"] or req.account,
--                            {{"@local/model-a", 90}, {"@local/model-b", 10}})
--
-- The same key always lands on the same arm (FNV-1a of the key), so one user
-- sees one variant. Weights need not add up to 100: they are relative.
local M = {}

function M.pick(key, arms)
  assert(type(key) == "string", "split.pick: key must be a string")
  assert(type(arms) == "table" and #arms > 0, "split.pick: arms must be a non-empty list")
  local total = 0
  for _, arm in ipairs(arms) do
    assert(type(arm[2]) == "number" and arm[2] >= 0, "split.pick: weights must be >= 0")
    total = total + arm[2]
  end
  assert(total > 0, "split.pick: weights add up to 0")
  local point = (outpost.hash(key) % 1000000) / 1000000 * total
  local acc = 0
  for _, arm in ipairs(arms) do
    acc = acc + arm[2]
    if point < acc then return arm[1] end
  end
  return arms[#arms][1]
end

return M

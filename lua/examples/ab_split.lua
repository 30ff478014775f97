-- A/B test: 90% of users on model A, 10% on model B, stable per user
-- (the x-user header, or the account when there is none).
local split = require("outpost.split")

-- split.new checks the arms once, here, instead of on every request.
local pick = split.new({{"@local/model-a", 90}, {"@local/model-b", 10}})

function route(req)
  if req.model ~= "@local/chat" then return nil end
  local key = req.headers["x-user"] or req.account or "anonymous"
  return outpost.route(pick(key))
end

-- Route by a request header: "x-outpost-tier: premium" gets the larger
-- model; requests without an account-wide opt-in header are refused for
-- a reserved model.
local util = require("outpost.util")

function route(req)
  local tier = util.header(req, "X-Outpost-Tier")
  if tier == "premium" and req.model == "@local/chat" then
    return outpost.route("@local/chat-large")
  end
  if req.model == "@local/reserved" and tier ~= "internal" then
    return outpost.reject(403, "model reserved for internal callers")
  end
end

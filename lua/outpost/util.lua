-- outpost.util: small helpers for policies.
local M = {}

-- Header value by name, any case (req.headers keys are lower-case).
function M.header(req, name)
  return req.headers[string.lower(name)]
end

-- True if s starts with prefix.
function M.starts_with(s, prefix)
  return type(s) == "string" and s:sub(1, #prefix) == prefix
end

-- A set from a list: util.set{"a", "b"}["a"] == true.
function M.set(list)
  local t = {}
  for _, v in ipairs(list) do t[v] = true end
  return t
end

return M

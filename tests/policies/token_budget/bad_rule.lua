-- An invalid rule (limit <= 0): an error naming this file, exit 1.
function limit(req)
  return {key = "user:" .. (req.metadata.user or "?"), limit = 0}
end

-- A limit hook that never returns: the instruction budget stops it and the
-- tester exits 1 (tests/unit/test_policy_shipped.c).
function limit(req)
  local n = 0
  while true do n = n + 1 end
end

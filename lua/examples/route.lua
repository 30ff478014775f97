-- The example config's policy: every request passes unchanged.
--
-- route(req) runs before each inference request. Return nil to continue,
-- outpost.route("model-id") to send the request to another model, or
-- outpost.reject(status, "message") to refuse it. See docs/policies.md.
--
-- Examples (uncomment to use):
--
--   if req.model == "@cf/meta/llama-3.1-8b-instruct" then
--     return outpost.route("@local/smollm2-135m-instruct")
--   end
--   if req.tokens_estimate > 4000 then
--     return outpost.reject(413, "prompt too long for this server")
--   end
function route(req)
  return nil
end

-- Refuse prompts above a size, and requests asking for too many tokens.
local MAX_PROMPT_TOKENS = 2048
local MAX_NEW_TOKENS = 1024

function route(req)
  if req.tokens_estimate > MAX_PROMPT_TOKENS then
    return outpost.reject(413, "prompt of about " .. req.tokens_estimate ..
      " tokens is over this server's limit of " .. MAX_PROMPT_TOKENS)
  end
  local max_tokens = req.body.max_tokens
  if type(max_tokens) == "number" and max_tokens > MAX_NEW_TOKENS then
    return outpost.reject(400, "max_tokens may be at most " .. MAX_NEW_TOKENS)
  end
end

-- subscriber_filters.lua: subscriber filters a client names in its join
-- (Phoenix: filter = { name = "min_duration", args = { ms = 1000 } }) to
-- receive only some of a conversation's updates:
--   min_duration  args { ms = N }: updates whose metadata.duration_ms is at least N
--   text_matches  args { pattern = "timeout" [, plain = true] }: updates whose text
--                 matches the Lua pattern (at most 200 bytes; the match runs under
--                 the plugin's budget, so a pattern that backtracks without end is
--                 stopped, not the gateway); plain = true for a plain substring
--   tool_in       args { tools = { "search_code", "run_tests" } }: updates whose
--                 metadata.tool is one of them
-- Args are checked when the client joins: wrong ones refuse the join with
-- invalid_filter and the reason. A call that fails later withholds the
-- update from that subscriber (failure_policy "drop").
--
-- Off until enabled. Config:
--   plugins = { subscriber_filters = { enabled = true } },

local P = { name = "subscriber_filters", enabled = false, settings = {},
  failure_policy = "drop" } -- a call that fails (bad args, a runaway pattern) withholds the update

local MAX_PATTERN = 200

P.subscriber_filters = {
  min_duration = function(update, args)
    if type(args.ms) ~= "number" then error("min_duration wants args { ms = N }") end
    local metadata = update.metadata or {}
    return type(metadata.duration_ms) == "number" and metadata.duration_ms >= args.ms
  end,

  text_matches = function(update, args)
    local pattern = args.pattern
    if type(pattern) ~= "string" or #pattern == 0 or #pattern > MAX_PATTERN then
      error("text_matches wants args { pattern = \"...\" } of 1 to " .. MAX_PATTERN .. " bytes")
    end
    return string.find(update.text or "", pattern, 1, args.plain == true) ~= nil
  end,

  tool_in = function(update, args)
    if type(args.tools) ~= "table" or #args.tools == 0 then error("tool_in wants args { tools = { \"name\", ... } }") end
    local metadata = update.metadata or {}
    for _, tool in ipairs(args.tools) do
      if metadata.tool == tool then return true end
    end
    return false
  end,
}

return P

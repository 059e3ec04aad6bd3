-- builders.lua: the metadata builders of the original Status API.
--
-- A producer names one in a publish, with its arguments:
--   {"conversation_id":"c1","category":"tool","text":"Running search",
--    "builder":"tool","args":{"tool_name":"search_code","params":{"q":"foo"}}}
--
--   llm       args model, provider                -> model, provider
--   tool      args tool_name, params              -> tool, params (strings over
--                                                    100 bytes cut to 100 + "...")
--   workflow  args workflow, completed_steps,     -> workflow, progress "c/t",
--             total_steps                            percentage (0 when total is 0)
--   error     args error_type, message            -> error_type, message
--   timing    args started_at_ms (Unix ms) or     -> duration_ms, duration_human
--             duration_ms                            ("850ms", "1.5s", "1.1m")
--   progress  args current, total                 -> current, total, percentage,
--                                                    progress "c/t"; the text gets
--                                                    " (30%)" appended
--
-- The gateway adds `timestamp` to every built metadata, and the producer's
-- own `metadata` keys override built ones (except duration and progress).
-- No configuration keys.

local P = { name = "builders", priority = 100 }

local MAX_PARAM = 100

-- Whole-number percentage of done/total, 0 when total is 0.
local function percentage(done, total)
  if type(done) ~= "number" or type(total) ~= "number" or total <= 0 then return 0 end
  return math.floor(done * 100 / total + 0.5)
end

-- "850ms" under a second, "1.5s" under a minute, "1.1m" beyond.
local function human(ms)
  if ms < 1000 then return string.format("%dms", math.floor(ms)) end
  if ms < 60000 then return string.format("%.1fs", ms / 1000) end
  return string.format("%.1fm", ms / 60000)
end

-- s cut to at most max bytes, never inside a UTF-8 character (a cut one
-- would not be valid JSON text), then "...".
local function cut(s, max)
  local n = max
  while n > 0 and (s:byte(n + 1) or 0) & 0xC0 == 0x80 do n = n - 1 end
  return s:sub(1, n) .. "..."
end

-- params is the builder's own copy (args are decoded afresh for every
-- call), so long strings are cut in place.
local function truncate_params(params)
  if type(params) ~= "table" then return params end
  for k, v in pairs(params) do
    if type(v) == "string" and #v > MAX_PARAM then params[k] = cut(v, MAX_PARAM) end
  end
  return params
end

P.builders = {
  llm = function(args)
    return { model = args.model, provider = args.provider }
  end,

  tool = function(args)
    return { tool = args.tool_name, params = truncate_params(args.params) }
  end,

  workflow = function(args)
    local done, total = args.completed_steps or 0, args.total_steps or 0
    return {
      workflow = args.workflow,
      progress = string.format("%d/%d", done, total),
      percentage = percentage(done, total),
    }
  end,

  error = function(args)
    return { error_type = args.error_type, message = args.message }
  end,

  timing = function(args)
    local ms = args.duration_ms
    if ms == nil and args.started_at_ms then ms = statusgw.now_ms() - args.started_at_ms end
    if type(ms) ~= "number" then return {} end
    if ms < 0 then ms = 0 end
    ms = math.floor(ms)
    return { duration_ms = ms, duration_human = human(ms) }
  end,

  progress = function(args, update)
    local current, total = args.current or 0, args.total or 0
    local pct = percentage(current, total)
    local text = (update.text or "") .. string.format(" (%d%%)", pct)
    return {
      current = current,
      total = total,
      percentage = pct,
      progress = string.format("%d/%d", current, total),
    }, text
  end,
}

return P

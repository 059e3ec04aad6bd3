-- summary.lua: every few seconds, a `summary` update for each conversation
-- that had activity: counts per category, errors, the last progress, tools
-- run with their average duration, and LLM tokens when producers report
-- them (metadata.tokens, or metadata.usage.total_tokens / input_tokens +
-- output_tokens / prompt_tokens + completion_tokens). A workflow reaching
-- 100% gets its summary at once.
--
-- Off unless the config enables it (summaries are extra updates: they take
-- seq numbers and history slots, and reach every subscriber and webhook).
--
-- Configuration (plugins.summary in etc/statusgw.lua):
--   enabled = true
--   interval_ms = 5000

local P = { name = "summary", priority = 200, enabled = false, settings = { interval_ms = "integer" } }

P.aggregator = { interval_ms = 5000 }

function P.init(config)
  P.aggregator.interval_ms = config.interval_ms or P.aggregator.interval_ms
end

local function tokens_of(md)
  if type(md.tokens) == "number" then return md.tokens end
  local u = md.usage
  if type(u) ~= "table" then return nil end
  if type(u.total_tokens) == "number" then return u.total_tokens end
  local a = (u.input_tokens or u.prompt_tokens or 0) + (u.output_tokens or u.completion_tokens or 0)
  if a > 0 then return a end
  return nil
end

function P.aggregator.observe(state, update)
  state.total = (state.total or 0) + 1
  state.counts = state.counts or {}
  state.counts[update.category] = (state.counts[update.category] or 0) + 1
  local md = update.metadata or {}
  if update.category == "error" then
    state.errors = (state.errors or 0) + 1
    state.last_error = update.text
  end
  if md.progress ~= nil or md.percentage ~= nil then
    state.last_progress = { progress = md.progress, percentage = md.percentage, text = update.text }
  end
  if md.tool then
    state.tools = state.tools or {}
    local t = state.tools[md.tool] or { runs = 0, total_ms = 0, timed = 0 }
    t.runs = t.runs + 1
    if type(md.duration_ms) == "number" then
      t.total_ms = t.total_ms + md.duration_ms
      t.timed = t.timed + 1
    end
    state.tools[md.tool] = t
  end
  local tk = tokens_of(md)
  if tk then state.tokens = (state.tokens or 0) + tk end
  -- a finished workflow is worth a summary now
  return update.category == "workflow" and md.percentage == 100
end

function P.aggregator.summarize(state, conversation_id)
  if not state.total then return nil end
  local parts, names = {}, {}
  for cat in pairs(state.counts) do names[#names + 1] = cat end
  table.sort(names)
  for _, cat in ipairs(names) do parts[#parts + 1] = state.counts[cat] .. " " .. cat end
  local tools = {}
  for name, t in pairs(state.tools or {}) do
    tools[name] = { runs = t.runs, avg_duration_ms = t.timed > 0 and math.floor(t.total_ms / t.timed) or nil }
  end
  return {
    text = string.format("%d updates: %s", state.total, table.concat(parts, ", ")),
    metadata = {
      total = state.total,
      counts = state.counts,
      errors = state.errors or 0,
      last_error = state.last_error,
      last_progress = state.last_progress,
      tools = next(tools) and tools or nil,
      tokens = state.tokens,
    },
  }
end

return P

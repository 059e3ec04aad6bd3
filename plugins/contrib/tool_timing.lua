-- tool_timing.lua: an aggregator that summarizes each conversation's tool
-- calls every interval: per tool, how many ran, the median and 95th
-- percentile of their duration_ms, and how many failed (an `error` update
-- whose metadata names the tool). Published as a `summary` update:
--   "3 tools: search_code 12 runs p50 420ms p95 1.9s 1 error; read_file …"
-- with metadata.tools = { search_code = { runs, p50_ms, p95_ms, errors }, … }.
--
-- Off until enabled. Config:
--   plugins = { tool_timing = { enabled = true, interval_ms = 60000 } },
--
-- Settings: interval_ms (default 30000), max_samples (durations kept per
-- tool and conversation between summaries, default 1000).

local P = { name = "tool_timing", enabled = false, settings = { interval_ms = "integer", max_samples = "integer" } }

local max_samples = 1000

local function human(ms)
  if ms < 1000 then return string.format("%dms", math.floor(ms)) end
  if ms < 60000 then return string.format("%.1fs", ms / 1000) end
  return string.format("%.1fm", ms / 60000)
end

-- The value at quantile q of a sorted list.
local function quantile(sorted, q)
  return sorted[math.max(1, math.ceil(q * #sorted))]
end

local function tool_state(state, name)
  state.tools = state.tools or {}
  local t = state.tools[name]
  if not t then
    t = { durations = {}, runs = 0, errors = 0 }
    state.tools[name] = t
  end
  return t
end

P.aggregator = {
  interval_ms = 30000,
  observe = function(state, update)
    local metadata = update.metadata or {}
    local name = metadata.tool
    if type(name) ~= "string" then return end
    local t = tool_state(state, name)
    if update.category == "error" then
      t.errors = t.errors + 1
    elseif type(metadata.duration_ms) == "number" then
      t.runs = t.runs + 1
      if #t.durations < max_samples then t.durations[#t.durations + 1] = metadata.duration_ms end
    end
  end,
  summarize = function(state, conversation_id)
    if not state.tools then return nil end
    local names, tools, parts = {}, {}, {}
    for name in pairs(state.tools) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
      local t = state.tools[name]
      table.sort(t.durations)
      local entry = { runs = t.runs, errors = t.errors }
      local text = string.format("%s %d run%s", name, t.runs, t.runs == 1 and "" or "s")
      if #t.durations > 0 then
        entry.p50_ms = quantile(t.durations, 0.5)
        entry.p95_ms = quantile(t.durations, 0.95)
        text = text .. string.format(" p50 %s p95 %s", human(entry.p50_ms), human(entry.p95_ms))
      end
      if t.errors > 0 then text = text .. string.format(" %d error%s", t.errors, t.errors == 1 and "" or "s") end
      tools[name] = entry
      parts[#parts + 1] = text
    end
    state.tools = nil
    return { text = string.format("%d tool%s: %s", #names, #names == 1 and "" or "s", table.concat(parts, "; ")),
      metadata = { tools = tools } }
  end,
}

function P.init(config)
  P.aggregator.interval_ms = config.interval_ms or P.aggregator.interval_ms
  max_samples = config.max_samples or max_samples
end

return P

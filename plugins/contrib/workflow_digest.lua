-- workflow_digest.lua: an aggregator that follows each workflow of a
-- conversation (updates whose metadata names a `workflow`) and, the moment
-- one completes (percentage 100), publishes a digest of it as a `summary`:
--   "Workflow deploy complete in 4.2m: 7 steps, 2 tools (search_code x3, run_tests x1), 1 error"
-- with metadata { workflow, steps, duration_ms, tools, errors, last_error }.
-- Workflows that never complete are forgotten with their conversation.
--
-- Off until enabled. Config:
--   plugins = { workflow_digest = { enabled = true } },

local P = { name = "workflow_digest", enabled = false, settings = {} }

local function human(ms)
  if ms < 1000 then return string.format("%dms", math.floor(ms)) end
  if ms < 60000 then return string.format("%.1fs", ms / 1000) end
  return string.format("%.1fm", ms / 60000)
end

local function digest(w, name)
  local tools, parts = {}, {}
  for tool, n in pairs(w.tools) do tools[#tools + 1] = tool end
  table.sort(tools)
  for i, tool in ipairs(tools) do parts[i] = tool .. " x" .. w.tools[tool] end
  local duration = w.duration_ms or (w.last_ms - w.first_ms)
  local text = string.format("Workflow %s complete in %s: %d step%s", name, human(duration), w.steps,
    w.steps == 1 and "" or "s")
  if #tools > 0 then text = text .. string.format(", %d tool%s (%s)", #tools, #tools == 1 and "" or "s",
    table.concat(parts, ", ")) end
  if w.errors > 0 then text = text .. string.format(", %d error%s", w.errors, w.errors == 1 and "" or "s") end
  return { text = text, metadata = { workflow = name, steps = w.steps, duration_ms = duration, tools = w.tools,
    errors = w.errors, last_error = w.last_error } }
end

P.aggregator = {
  interval_ms = 60000, -- digests go out when a workflow completes; nothing waits for the interval
  observe = function(state, update)
    local metadata = update.metadata or {}
    local name = metadata.workflow
    state.current = type(name) == "string" and name or state.current
    name = state.current
    if not name then return end
    state.workflows = state.workflows or {}
    local now = statusgw.now_ms()
    local w = state.workflows[name]
    if not w then
      w = { steps = 0, tools = {}, errors = 0, first_ms = now }
      state.workflows[name] = w
    end
    w.last_ms = now
    if update.category == "workflow" then w.steps = w.steps + 1 end
    if type(metadata.tool) == "string" then w.tools[metadata.tool] = (w.tools[metadata.tool] or 0) + 1 end
    if update.category == "error" then
      w.errors = w.errors + 1
      w.last_error = update.text
    end
    if update.category == "workflow" and metadata.percentage == 100 and metadata.workflow == name then
      if type(metadata.duration_ms) == "number" then w.duration_ms = metadata.duration_ms end
      state.done = state.done or {}
      state.done[#state.done + 1] = digest(w, name)
      state.workflows[name] = nil
      state.current = nil
      return true -- summarize this conversation now
    end
  end,
  summarize = function(state, conversation_id)
    local done = state.done
    if not done or #done == 0 then return nil end
    state.done = nil
    if #done == 1 then return done[1] end
    for i = 1, #done - 1 do statusgw.emit({ conversation_id = conversation_id, category = "summary",
      text = done[i].text, metadata = done[i].metadata }) end
    return done[#done]
  end,
}

return P

-- generate.lua: writes updates.ndjson, the sample `statusgw plugin run`
-- reads by default: 1,000 publishes as the services of the original system
-- send them (an LLM service, a tool executor, a workflow executor, a
-- conversation channel, an error handler) over 24 conversations, with the
-- things filters look for: bearer tokens, e-mail addresses, card and phone
-- numbers, passwords, debug lines, repeated updates, slow tools, failing
-- ones, finished workflows.
-- Deterministic: lua5.4 plugins/samples/generate.lua > plugins/samples/updates.ndjson
math.randomseed(20261206)
local R = math.random

local function q(s) return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"' end

local function encode(v)
  local t = type(v)
  if t == "table" then
    if #v > 0 or next(v) == nil and getmetatable(v) == "array" then
      local parts = {}
      for i, x in ipairs(v) do parts[i] = encode(x) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = q(k) .. ":" .. encode(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" then return q(v)
  else return tostring(v) end
end

local function human(ms)
  if ms < 1000 then return string.format("%dms", ms) end
  if ms < 60000 then return string.format("%.1fs", ms / 1000) end
  return string.format("%.1fm", ms / 60000)
end

local tools = { "search_code", "read_file", "run_tests", "git_diff", "web_search", "sql_query" }
local models = { { "gpt-4", "openai" }, { "claude-3-opus", "anthropic" }, { "llama-3-70b", "local" } }
local workflows = { "index-repository", "answer-question", "refactor-module", "triage-issue" }
local users = { "ana@example.com", "bo.li@example.org", "chidi+test@example.net" }
local out = {}

local function emit(conv, category, text, metadata, source)
  out[#out + 1] = encode({ conversation_id = conv, category = category, text = text, metadata = metadata,
    source = source })
end

local n = 0
while #out < 1000 do
  n = n + 1
  local conv = string.format("conv-%d", R(1, 24))
  local kind = R(1, 100)
  if kind <= 30 then
    local tool, ms = tools[R(#tools)], R(40, 2400)
    if R(10) == 1 then ms = R(5000, 90000) end
    emit(conv, "tool", "Executing " .. tool, { tool = tool, params = { query = "status_update" } }, "tool-executor")
    if R(12) == 1 then
      emit(conv, "error", tool .. " failed: timeout after " .. human(ms), { tool = tool, error_type = "execution_timeout",
        message = "no answer within " .. ms .. " ms", duration_ms = ms }, "tool-executor")
    else
      emit(conv, "tool", tool .. " complete", { tool = tool, duration_ms = ms, duration_human = human(ms),
        output_bytes = R(100, 90000) }, "tool-executor")
    end
  elseif kind <= 50 then
    local m = models[R(#models)]
    local p, c = R(100, 4000), R(20, 1200)
    emit(conv, "engine", "Calling " .. m[1], { model = m[1], provider = m[2], priority = "normal" }, "llm-service")
    if R(8) == 1 then
      emit(conv, "engine", "Retrying LLM request (attempt 2 of 3)", { model = m[1], provider = m[2], attempt = 2,
        error = "429 rate limit exceeded" }, "llm-service")
    end
    emit(conv, "engine", m[1] .. " complete", { model = m[1], provider = m[2], prompt_tokens = p,
      completion_tokens = c, total_tokens = p + c, duration_ms = R(300, 9000) }, "llm-service")
  elseif kind <= 65 then
    local wf, total = workflows[R(#workflows)], R(3, 9)
    local done = R(0, total)
    emit(conv, "workflow", string.format("Workflow %s %d/%d", wf, done, total), { workflow = wf,
      progress = done .. "/" .. total, percentage = math.floor(done * 100 / total + 0.5) }, "workflow-executor")
    if done == total then
      emit(conv, "workflow", "Workflow " .. wf .. " complete", { workflow = wf, progress = total .. "/" .. total,
        percentage = 100, duration_ms = R(2000, 120000), cache_hits = R(0, 5) }, "workflow-executor")
    end
  elseif kind <= 75 then
    local cur, total = R(1, 200), 200
    emit(conv, "progress", string.format("Processing items (%d%%)", math.floor(cur * 100 / total + 0.5)),
      { current = cur, total = total, percentage = math.floor(cur * 100 / total + 0.5),
        progress = cur .. "/" .. total }, "importer")
  elseif kind <= 83 then
    emit(conv, "planning", ({ "Breaking the task into 4 steps", "Choosing search_code over web_search",
      "Re-planning after a failed step" })[R(3)], { step_count = R(2, 8) }, "planner")
  elseif kind <= 90 then
    local u = users[R(#users)]
    local texts = {
      "Message received from " .. u,
      "Calling API with Authorization: Bearer sk_live_" .. string.format("%08x%08x", R(0, 0x7fffffff), R(0, 0x7fffffff)),
      "Payment card 4111 1111 1111 1111 declined for " .. u,
      "Call me back on +1 415 555 0" .. R(100, 999),
      "Order 1234 5678 9012 3456 shipped",
      "debug: cache warm (" .. R(2, 90) .. " entries)",
      "Retrying login for user-" .. R(1, 40) .. " with password=hunter" .. R(2, 9),
    }
    emit(conv, "info", texts[R(#texts)], { user_id = "user-" .. R(1, 40), contact = R(3) == 1 and u or nil },
      "conversation-channel")
  elseif kind <= 95 then
    local text = ({ "Heartbeat", "Still thinking…", "Waiting for the index" })[R(3)]
    for _ = 1, R(2, 4) do emit(conv, "info", text, { phase = "wait" }, "llm-service") end
  else
    emit(conv, "error", ({ "Upstream 502 from search backend", "Validation failed: missing parameter query",
      "Not authorized to run delete_repo" })[R(3)], { error_type = ({ "upstream_error", "validation_error",
      "authorization_error" })[R(3)], message = "see the service's log" }, "error-handler")
  end
end
for i = 1, 1000 do io.write(out[i], "\n") end

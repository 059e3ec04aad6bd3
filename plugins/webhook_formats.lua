-- webhook_formats.lua: forwarders that shape webhook bodies. An endpoint in
-- etc/statusgw.lua names one with `forwarder = "..."`; statusgw batches,
-- signs (Standard Webhooks), delivers and retries what `format` returns.
--
--   json_batch  every update; {"type":"status.batch","count":N,"updates":[...]}
--   chat        every update; a chat-style message {"text": "..."} with one
--               line per update (Slack and Mattermost incoming webhooks take it)
--   errors      error updates only, for a monitoring service (the role the
--               original system gave its error tracker):
--               {"events":[{"level":"error","message":..., "conversation_id":...,
--                           "error_type":..., "timestamp":..., "tags":{...}}]}
--
-- No configuration keys.

local P = { name = "webhook_formats" }

local function all() return true end

local icons = { error = ":red_circle:", tool = ":wrench:", workflow = ":arrows_counterclockwise:",
  progress = ":hourglass:", engine = ":gear:", planning = ":brain:", info = ":information_source:",
  summary = ":bar_chart:" }

P.webhooks = {
  json_batch = {
    match = all,
    format = function(updates)
      return statusgw.json.encode({ type = "status.batch", count = #updates, updates = updates }), {}
    end,
  },

  chat = {
    match = all,
    format = function(updates)
      local lines = {}
      for i, u in ipairs(updates) do
        lines[i] = string.format("%s [%s] %s: %s", icons[u.category] or "•", u.conversation_id,
          u.category, u.text)
      end
      return statusgw.json.encode({ text = table.concat(lines, "\n") }), {}
    end,
  },

  errors = {
    match = function(update) return update.category == "error" end,
    format = function(updates)
      local events = {}
      for i, u in ipairs(updates) do
        local md = u.metadata or {}
        events[i] = {
          level = "error",
          message = u.text,
          error_type = md.error_type,
          conversation_id = u.conversation_id,
          timestamp = u.timestamp,
          tags = { source = u.source, seq = u.seq },
          extra = md,
        }
      end
      return statusgw.json.encode({ events = events }), { ["X-Statusgw-Kind"] = "errors" }
    end,
  },
}

return P

-- pagerduty.lua: a webhook forwarder for the PagerDuty Events API v2
-- (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/):
-- an `error` update triggers an alert, deduplicated per conversation
-- (dedup_key "statusgw-<conversation>", so a conversation's errors are one
-- incident), and a workflow that completes (category workflow, percentage
-- 100) resolves it. The API takes one event a request: give the endpoint
-- batch_size = 1. A batch of more than one sends the event of its last
-- update, with every update of the batch in custom_details.updates.
--
-- Off until enabled. Config:
--   plugins = { pagerduty = { enabled = true, routing_key = "R0ABCDEF0123456789ABCDEF01234567" } },
--   webhooks = { endpoints = { { name = "pagerduty", forwarder = "pagerduty",
--     url = "https://events.pagerduty.com/v2/enqueue", secrets = { "whsec_..." },
--     batch_size = 1, conversations = "prod-*" } } },
--
-- Settings: routing_key (the integration's key, required), severity
-- (critical, error, warning or info; default error), client (default
-- "statusgw").

local P = { name = "pagerduty", enabled = false,
  settings = { routing_key = "string", severity = "string", client = "string" } }

local routing_key, severity, client = nil, "error", "statusgw"
local severities = { critical = true, error = true, warning = true, info = true }

function P.init(config)
  routing_key = config.routing_key
  severity = config.severity or severity
  client = config.client or client
  if not severities[severity] then error("plugins.pagerduty.severity must be critical, error, warning or info") end
end

local function completes(u)
  local metadata = u.metadata or {}
  return u.category == "workflow" and metadata.percentage == 100
end

local function event(u, batch)
  local e = {
    routing_key = routing_key,
    dedup_key = statusgw.truncate("statusgw-" .. u.conversation_id, 255),
    event_action = completes(u) and "resolve" or "trigger",
    client = client,
  }
  if e.event_action == "trigger" then
    local metadata = u.metadata or {}
    e.payload = {
      summary = statusgw.truncate(u.conversation_id .. ": " .. u.text, 1024),
      source = u.source or "statusgw",
      severity = severity,
      timestamp = u.timestamp,
      component = metadata.tool or metadata.model or metadata.workflow,
      group = u.conversation_id,
      class = metadata.error_type,
      custom_details = { seq = u.seq, metadata = metadata, updates = batch },
    }
  end
  return e
end

P.webhooks = {
  pagerduty = {
    match = function(update) return update.category == "error" or completes(update) end,
    format = function(updates)
      if not routing_key then error("plugins.pagerduty.routing_key is not set: the Events API integration's key") end
      local batch
      if #updates > 1 then
        batch = {}
        for i, u in ipairs(updates) do batch[i] = { conversation_id = u.conversation_id, seq = u.seq, text = u.text } end
      end
      return statusgw.json.encode(event(updates[#updates], batch)), {}
    end,
  },
}

return P

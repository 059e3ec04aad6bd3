-- opsgenie.lua: a webhook forwarder for Opsgenie's Create Alert API
-- (https://docs.opsgenie.com/docs/alert-api#create-alert): each batch of
-- `error` updates becomes one alert, aliased per conversation
-- ("statusgw-<conversation>", so Opsgenie counts a conversation's repeats
-- on one open alert), with its message (at most 130 characters), a
-- description listing the batch's errors, tags, details and a priority.
-- The API key goes in the endpoint's headers. A batch spanning several
-- conversations is aliased by its first; give the endpoint a conversations
-- pattern or batch_size = 1 to keep them apart.
--
-- Off until enabled. Config:
--   plugins = { opsgenie = { enabled = true, priority = "P2", tags = { "statusgw", "prod" } } },
--   webhooks = { endpoints = { { name = "opsgenie", forwarder = "opsgenie",
--     url = "https://api.opsgenie.com/v2/alerts", secrets = { "whsec_..." },
--     headers = { Authorization = "GenieKey 01234567-89ab-cdef-0123-456789abcdef" },
--     batch_size = 20, batch_delay_ms = 5000 } } },
--
-- Settings: priority (P1 to P5, default P3), tags (a list of strings),
-- entity (default the conversation id).

local P = { name = "opsgenie", enabled = false,
  settings = { priority = "string", tags = "table", entity = "string" } }

local priority, tags, entity = "P3", { "statusgw" }, nil

function P.init(config)
  priority = config.priority or priority
  if not priority:match("^P[1-5]$") then error("plugins.opsgenie.priority must be P1, P2, P3, P4 or P5") end
  tags = config.tags or tags
  for _, tag in ipairs(tags) do
    if type(tag) ~= "string" then error("plugins.opsgenie.tags must be a list of strings") end
  end
  entity = config.entity
end

P.webhooks = {
  opsgenie = {
    match = function(update) return update.category == "error" end,
    format = function(updates)
      local first, last = updates[1], updates[#updates]
      local lines, details = {}, { conversation_id = first.conversation_id, count = tostring(#updates) }
      for i, u in ipairs(updates) do
        lines[i] = string.format("%s [%s seq %d] %s", u.timestamp, u.conversation_id, u.seq, u.text)
      end
      local metadata = last.metadata or {}
      for key, value in pairs(metadata) do
        if type(value) ~= "table" then details[key] = statusgw.truncate(tostring(value), 500) end
      end
      local message = #updates == 1 and last.text or string.format("%d errors, last: %s", #updates, last.text)
      return statusgw.json.encode({
        message = statusgw.truncate(message, 130),
        alias = statusgw.truncate("statusgw-" .. first.conversation_id, 512),
        description = statusgw.truncate(table.concat(lines, "\n"), 15000),
        tags = tags,
        details = details,
        entity = entity or first.conversation_id,
        source = last.source or "statusgw",
        priority = priority,
      }), {}
    end,
  },
}

return P

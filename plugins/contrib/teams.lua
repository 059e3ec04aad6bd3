-- teams.lua: a webhook forwarder for Microsoft Teams (an incoming webhook
-- or a Workflows "post to a channel when a webhook request is received"
-- flow), as one Adaptive Card (https://adaptivecards.io, schema 1.4): a
-- title, then per update a container with its category and conversation,
-- its text, and a FactSet of its key metadata. Teams takes about 28 KB a
-- card: past max_updates the card says how many more there were.
--
-- Off until enabled. Config:
--   plugins = { teams = { enabled = true, title = "Production status" } },
--   webhooks = { endpoints = { { name = "teams", forwarder = "teams",
--     url = "https://example.webhook.office.com/webhookb2/...", secrets = { "whsec_..." },
--     batch_size = 15, batch_delay_ms = 2000 } } },
--
-- Settings: title (default "statusgw"), max_updates (1 to 50, default 15).

local P = { name = "teams", enabled = false, settings = { title = "string", max_updates = "integer" } }

local title, max_updates = "statusgw", 15

local shown = { "tool", "model", "duration_human", "progress", "error_type", "workflow" }
local attention = { error = "Attention", workflow = "Accent", summary = "Good" }

function P.init(config)
  title = config.title or title
  max_updates = config.max_updates or max_updates
  if max_updates < 1 or max_updates > 50 then error("plugins.teams.max_updates must be 1 to 50") end
end

local function container(u)
  local facts = {}
  local metadata = u.metadata or {}
  for _, key in ipairs(shown) do
    if metadata[key] ~= nil then facts[#facts + 1] = { title = key, value = statusgw.truncate(tostring(metadata[key]), 200) } end
  end
  facts[#facts + 1] = { title = "seq", value = tostring(u.seq) }
  return {
    type = "Container",
    separator = true,
    items = {
      { type = "TextBlock", text = u.category .. " · " .. u.conversation_id, weight = "Bolder",
        color = attention[u.category] or "Default", wrap = true },
      { type = "TextBlock", text = statusgw.truncate(u.text, 2000), wrap = true },
      { type = "FactSet", facts = facts },
    },
  }
end

P.webhooks = {
  teams = {
    match = function(update) return true end,
    format = function(updates)
      local body = { { type = "TextBlock", text = string.format("%s: %d update%s", title, #updates,
        #updates == 1 and "" or "s"), size = "Medium", weight = "Bolder", wrap = true } }
      for i = 1, math.min(#updates, max_updates) do body[#body + 1] = container(updates[i]) end
      if #updates > max_updates then
        body[#body + 1] = { type = "TextBlock", text = string.format("…and %d more", #updates - max_updates),
          isSubtle = true, wrap = true }
      end
      local card = {
        ["$schema"] = "http://adaptivecards.io/schemas/adaptive-card.json",
        type = "AdaptiveCard",
        version = "1.4",
        body = body,
      }
      return statusgw.json.encode({
        type = "message",
        attachments = { { contentType = "application/vnd.microsoft.card.adaptive", contentUrl = statusgw.json.null,
          content = card } },
      }), {}
    end,
  },
}

return P

-- discord.lua: a webhook forwarder for Discord webhooks, as embeds
-- (https://discord.com/developers/docs/resources/webhook#execute-webhook):
-- one embed per update, coloured by category, its text as the description,
-- key metadata as inline fields, the update's time as the embed's
-- timestamp. Discord takes 10 embeds a message and 6,000 characters over
-- them all: past 10 updates, `content` says how many more there were, and
-- descriptions are cut to fit.
--
-- Off until enabled. Config:
--   plugins = { discord = { enabled = true, username = "statusgw" } },
--   webhooks = { endpoints = { { name = "discord", forwarder = "discord",
--     url = "https://discord.com/api/webhooks/123/abc", secrets = { "whsec_..." },
--     batch_size = 10, batch_delay_ms = 2000 } } },
--
-- Settings: username (the message's author name, default "statusgw").

local P = { name = "discord", enabled = false, settings = { username = "string" } }

local username = "statusgw"
local MAX_EMBEDS, MAX_TOTAL = 10, 6000

local colours = { error = 0xE01E5A, tool = 0x3498DB, workflow = 0x9B59B6, progress = 0xF1C40F,
  engine = 0x95A5A6, planning = 0x1ABC9C, info = 0x2ECC71, summary = 0x34495E }

local shown = { "tool", "model", "duration_human", "progress", "error_type", "workflow" }

function P.init(config)
  username = config.username or username
end

-- An embed without its description; the characters it counts against 6,000.
local function embed(u)
  local fields, used = {}, 0
  local metadata = u.metadata or {}
  for _, key in ipairs(shown) do
    if metadata[key] ~= nil then
      local value = statusgw.truncate(tostring(metadata[key]), 200)
      fields[#fields + 1] = { name = key, value = value, inline = true }
      used = used + #key + #value
    end
  end
  local e = {
    title = statusgw.truncate(u.category .. " · " .. u.conversation_id, 256),
    color = colours[u.category] or 0x7F8C8D,
    timestamp = u.timestamp,
    fields = fields,
    footer = { text = "seq " .. u.seq .. (u.source and (" · " .. statusgw.truncate(u.source, 100)) or "") },
  }
  return e, used + #e.title + #e.footer.text
end

P.webhooks = {
  discord = {
    match = function(update) return true end,
    format = function(updates)
      local n = math.min(#updates, MAX_EMBEDS)
      local embeds, used = {}, 0
      for i = 1, n do
        local e, chars = embed(updates[i])
        embeds[i] = e
        used = used + chars
      end
      -- the descriptions share what is left of the 6,000 characters
      local room = math.min(4096, (MAX_TOTAL - used) // n)
      for i = 1, n do
        local text = updates[i].text ~= "" and updates[i].text or "(no text)"
        embeds[i].description = room >= 4 and statusgw.truncate(text, room) or nil
      end
      local body = { username = username, embeds = embeds }
      if #updates > n then body.content = string.format("…and %d more updates", #updates - n) end
      return statusgw.json.encode(body), {}
    end,
  },
}

return P

-- slack.lua: a webhook forwarder for Slack incoming webhooks, in Block Kit
-- (https://api.slack.com/reference/block-kit/blocks): a header, then per
-- update a section ("*tool* · `conv-123` Executing search_code", mrkdwn)
-- and a context line with its key metadata; `text` is the notification's
-- fallback. Slack takes at most 50 blocks and 3,000 characters a section:
-- past max_updates the last block says how many more there were.
--
-- Off until enabled. Config:
--   plugins = { slack = { enabled = true, title = "prod status" } },
--   webhooks = { endpoints = { { name = "slack", forwarder = "slack",
--     url = "https://hooks.slack.com/services/T000/B000/XXXX", secrets = { "whsec_..." },
--     categories = { "error", "workflow" }, batch_size = 20, batch_delay_ms = 2000 } } },
--
-- Settings: title (header text, default "statusgw"), max_updates (per
-- message, 1 to 24, default 20).

local P = { name = "slack", enabled = false, settings = { title = "string", max_updates = "integer" } }

local title, max_updates = "statusgw", 20

local icons = { error = ":red_circle:", tool = ":wrench:", workflow = ":arrows_counterclockwise:",
  progress = ":hourglass_flowing_sand:", engine = ":gear:", planning = ":brain:",
  info = ":information_source:", summary = ":bar_chart:" }

-- The metadata keys worth a glance, in the order shown.
local shown = { "tool", "model", "duration_human", "progress", "error_type", "workflow" }

function P.init(config)
  title = config.title or title
  max_updates = config.max_updates or max_updates
  if max_updates < 1 or max_updates > 24 then error("plugins.slack.max_updates must be 1 to 24") end
end

-- Slack's mrkdwn wants &, < and > escaped.
local function escape(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"))
end

local function section(u)
  local text = string.format("%s *%s* · `%s` %s", icons[u.category] or ":small_blue_diamond:", u.category,
    escape(u.conversation_id), escape(u.text))
  return { type = "section", text = { type = "mrkdwn", text = statusgw.truncate(text, 3000) } }
end

local function context(u)
  local parts = {}
  local metadata = u.metadata or {}
  for _, key in ipairs(shown) do
    if metadata[key] ~= nil then parts[#parts + 1] = key .. ": " .. escape(tostring(metadata[key])) end
  end
  parts[#parts + 1] = "seq " .. u.seq
  if u.source then parts[#parts + 1] = "from " .. escape(u.source) end
  return { type = "context", elements = { { type = "mrkdwn", text = statusgw.truncate(table.concat(parts, " · "), 3000) } } }
end

P.webhooks = {
  slack = {
    match = function(update) return true end,
    format = function(updates)
      local count = #updates
      local blocks = { { type = "header", text = { type = "plain_text", text = statusgw.truncate(string.format("%s: %d update%s",
        title, count, count == 1 and "" or "s"), 150) } } }
      for i = 1, math.min(count, max_updates) do
        blocks[#blocks + 1] = section(updates[i])
        blocks[#blocks + 1] = context(updates[i])
      end
      if count > max_updates then
        blocks[#blocks + 1] = { type = "context", elements = { { type = "mrkdwn",
          text = string.format("…and %d more", count - max_updates) } } }
      end
      local first = updates[1]
      local fallback = string.format("%s: %s", title, statusgw.truncate(first.text, 200))
      if count > 1 then fallback = fallback .. string.format(" (+%d more)", count - 1) end
      return statusgw.json.encode({ text = fallback, blocks = blocks }), {}
    end,
  },
}

return P

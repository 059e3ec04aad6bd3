-- dedupe.lua: drops an update that repeats the previous one of its
-- conversation (same category, text and metadata) within `window_ms`, on
-- purpose (the producer's answer says `dropped`): heartbeats and "still
-- thinking…" lines that say nothing new. A different update in between, or
-- a pause longer than the window, lets the repeat through.
--
-- Off until enabled. Config:
--   plugins = { dedupe = { enabled = true, window_ms = 30000 } },
--
-- Settings: window_ms (default 10000), categories (only these are
-- deduplicated; default all but error).

local P = { name = "dedupe", priority = 35, enabled = false, settings = { window_ms = "integer", categories = "table" } }

local window_ms = 10000
local only = nil
local last = {} -- conversation -> { fingerprint = ..., at = ms }
local tracked, MAX_TRACKED = 0, 100000

function P.init(config)
  window_ms = config.window_ms or window_ms
  if config.categories then
    only = {}
    for _, c in ipairs(config.categories) do only[c] = true end
  end
end

function P.filter(update)
  if update.category == "error" or (only and not only[update.category]) then return nil end
  local fingerprint = update.category .. "\0" .. update.text .. "\0" .. statusgw.json.encode(update.metadata or {})
  local now = statusgw.now_ms()
  local conversation = update.conversation_id
  local previous = last[conversation]
  if previous and previous.fingerprint == fingerprint and now - previous.at <= window_ms then
    return false
  end
  if not previous then
    if tracked >= MAX_TRACKED then last, tracked = {}, 0 end
    tracked = tracked + 1
  end
  last[conversation] = { fingerprint = fingerprint, at = now }
end

return P

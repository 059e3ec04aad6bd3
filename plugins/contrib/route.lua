-- route.lua: copies updates onto other conversations, e.g. every error of
-- a team's conversations onto the team's feed, so a dashboard or a tail can
-- follow one conversation instead of many. The original is kept as it is;
-- the copy (same category, text and metadata, plus routed_from) is
-- published through the filters as a new update (statusgw.emit).
--
-- Off until enabled. Config:
--   plugins = { route = { enabled = true, routes = {
--     { conversations = "team-a-*", categories = { "error" }, to = "feed-team-a" },
--     { conversations = "*", categories = { "workflow" }, to = "feed-workflows" },
--   } } },
--
-- Settings: routes (a list of { conversations = glob, categories = list
-- (default all), to = conversation id }). A copy is never routed again.

local P = { name = "route", priority = 90, enabled = false, settings = { routes = "table" } }

local routes = {}

-- A glob ("team-a-*", "*", "exact") as a Lua pattern.
local function pattern(glob)
  return "^" .. glob:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", ".*") .. "$"
end

function P.init(config)
  routes = {}
  for i, r in ipairs(config.routes or {}) do
    if type(r) ~= "table" or type(r.to) ~= "string" or type(r.conversations or "*") ~= "string" then
      error("plugins.route.routes[" .. i .. "] must be { conversations = \"glob\", to = \"conversation\" }")
    end
    local categories
    if r.categories then
      categories = {}
      for _, c in ipairs(r.categories) do categories[c] = true end
    end
    routes[#routes + 1] = { match = pattern(r.conversations or "*"), categories = categories, to = r.to }
  end
end

function P.filter(update)
  local metadata = update.metadata or {}
  if metadata.routed_from then return nil end -- a copy: never routed again
  for _, r in ipairs(routes) do
    if update.conversation_id ~= r.to and update.conversation_id:match(r.match)
        and (not r.categories or r.categories[update.category]) then
      local copy = {}
      for key, value in pairs(metadata) do copy[key] = value end
      copy.routed_from = update.conversation_id
      local ok, err = statusgw.emit({ conversation_id = r.to, category = update.category, text = update.text,
        metadata = copy, source = update.source })
      if not ok then statusgw.log("warn", "route: copy to " .. r.to .. " refused: " .. tostring(err)) end
    end
  end
end

return P

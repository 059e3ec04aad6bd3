-- sampling.lua: keeps 1 update in N per conversation and category, and
-- drops the others on purpose (the producer's answer says `dropped`): for
-- chatty categories such as progress, where every update is not worth
-- delivering. Never samples `error` (nor the categories in `keep_all`).
-- The first update of each (conversation, category) is always kept.
--
-- Off until enabled. Config:
--   plugins = { sampling = { enabled = true, every = 10, categories = { "progress", "info" } } },
--
-- Settings: every (keep 1 in N, at least 1, default 10), categories (the
-- categories sampled; default every category but error and summary),
-- keep_all (categories never sampled, default { "error", "summary" }).

local P = { name = "sampling", priority = 30, enabled = false,
  settings = { every = "integer", categories = "table", keep_all = "table" } }

local every = 10
local sampled = nil          -- category -> true; nil: every category not in keep_all
local keep_all = { error = true, summary = true }
local seen = {}              -- "conversation\0category" -> updates seen
local tracked, MAX_TRACKED = 0, 100000

local function set_of(list, what)
  local set = {}
  for _, v in ipairs(list) do
    if type(v) ~= "string" then error("plugins.sampling." .. what .. " must be a list of category names") end
    set[v] = true
  end
  return set
end

function P.init(config)
  every = config.every or every
  if every < 1 then error("plugins.sampling.every must be at least 1") end
  if config.categories then sampled = set_of(config.categories, "categories") end
  if config.keep_all then keep_all = set_of(config.keep_all, "keep_all") end
  keep_all.error = true -- errors are never sampled
end

function P.filter(update)
  local category = update.category
  if keep_all[category] or (sampled and not sampled[category]) then return nil end
  local key = update.conversation_id .. "\0" .. category
  local n = seen[key]
  if n == nil then
    if tracked >= MAX_TRACKED then seen, tracked = {}, 0 end -- a bound, not an exact memory
    tracked = tracked + 1
    n = 0
  end
  seen[key] = n + 1
  if n % every ~= 0 then return false end
end

return P

-- rate_limit.lua: a token bucket per conversation and category; a publish
-- over the limit is refused with 429 and a Retry-After that says when the
-- bucket has a token again (in a bulk request, that item gets the error
-- and is not counted in `accepted`). Nothing acknowledged is ever dropped.
--
-- Off unless the config enables it: plugins.rate_limit.enabled = true.
--
-- Configuration (plugins.rate_limit in etc/statusgw.lua):
--   rate   = 50                   -- updates per second, per conversation and category
--   burst  = 100                  -- bucket size
--   categories = { progress = { rate = 10, burst = 20 } }  -- per-category overrides
--   exempt = { "error", "summary" }  -- never limited
--
-- The bucket is kept as one number, GCRA style: the time at which it would
-- be full again. An update passes while that time is less than `burst`
-- intervals (1000 / rate ms each) ahead of now, and each update that
-- passes moves it one interval on. That is exactly a token bucket of
-- `burst` tokens refilled at `rate` per second, without a table per bucket.

local P = { name = "rate_limit", priority = 50, enabled = false,
  settings = { rate = "number", burst = "number", categories = "table", exempt = "table" } }

local rate, burst = 50, 100
local overrides = {}
local exempt = { error = true, summary = true }
local limits = {}    -- category -> { interval_ms, tolerance_ms }, made on first use
local full_at = {}   -- category -> conversation -> when its bucket is full again (ms)
local nbuckets, last_prune = 0, 0
local refused = 0

function P.init(config)
  rate = config.rate or rate
  burst = config.burst or burst
  overrides = config.categories or overrides
  if config.exempt then
    exempt = {}
    for _, c in ipairs(config.exempt) do exempt[c] = true end
  end
end

local function limit_of(cat)
  local o = overrides[cat] or {}
  local interval = 1000 / (o.rate or rate)
  local l = { interval, ((o.burst or burst) - 1) * interval }
  limits[cat] = l
  full_at[cat] = full_at[cat] or {}
  return l
end

-- A bucket whose time has passed is full: the same as no bucket.
local function prune(now)
  for _, convs in pairs(full_at) do
    for conv, t in pairs(convs) do
      if t <= now then
        convs[conv] = nil
        nbuckets = nbuckets - 1
      end
    end
  end
  last_prune = now
end

function P.filter(update)
  local cat = update.category
  if exempt[cat] then return nil end
  local limit = limits[cat] or limit_of(cat)
  local now = statusgw.now_ms()
  local conv = update.conversation_id
  local convs = full_at[cat]
  local t = convs[conv]
  if t == nil then
    if nbuckets >= 50000 and now - last_prune >= 1000 then prune(now) end
    nbuckets = nbuckets + 1
    t = now
  elseif t < now then
    t = now
  end
  local over = t - now - limit[2]
  if over > 0 then
    refused = refused + 1
    if refused % 100 == 1 then
      statusgw.log("warn", string.format("rate limit: refused=%d conversation=%s category=%s",
        refused, conv, cat))
    end
    -- a token is back once the bucket's time is within the tolerance again
    local retry = math.ceil(over / 1000)
    return statusgw.refuse(429, "rate_limited",
      string.format("over %g updates/s for category %s in this conversation", 1000 / limit[1], cat),
      retry < 1 and 1 or retry)
  end
  convs[conv] = t + limit[1]
  return nil
end

return P

-- rate_limit.lua: a token bucket per conversation and category; updates
-- over the limit are dropped (the producer's answer says so) and counted.
--
-- Configuration (plugins.rate_limit in etc/statusgw.lua):
--   rate   = 50                   -- updates per second, per conversation and category
--   burst  = 100                  -- bucket size
--   categories = { progress = { rate = 10, burst = 20 } }  -- per-category overrides
--   exempt = { "error", "summary" }  -- never limited

local P = { name = "rate_limit", priority = 50 }

local rate, burst = 50, 100
local overrides = {}
local NONE = {}      -- a category without overrides
local exempt = { error = true, summary = true }
local buckets = {}   -- conversation -> category -> { tokens, last }
local nbuckets = 0
local dropped = 0
local now_ms = statusgw.now_ms

function P.init(config)
  rate = config.rate or rate
  burst = config.burst or burst
  overrides = config.categories or overrides
  if config.exempt then
    exempt = {}
    for _, c in ipairs(config.exempt) do exempt[c] = true end
  end
end

-- Forget buckets that have refilled: they hold no information.
local function prune(now)
  for conv, cats in pairs(buckets) do
    for cat, b in pairs(cats) do
      local o = overrides[cat] or NONE
      if b.tokens + (now - b.last) * (o.rate or rate) / 1000 >= (o.burst or burst) then
        cats[cat] = nil
        nbuckets = nbuckets - 1
      end
    end
    if next(cats) == nil then buckets[conv] = nil end
  end
end

function P.filter(update)
  local cat = update.category
  if exempt[cat] then return nil end
  local o = overrides[cat] or NONE
  local r, b = o.rate or rate, o.burst or burst
  local now = now_ms()
  local conv = update.conversation_id or "system"
  local cats = buckets[conv]
  local bucket = cats and cats[cat]
  if not bucket then
    if nbuckets >= 50000 then prune(now) end
    cats = buckets[conv] or {}
    buckets[conv] = cats
    bucket = { tokens = b, last = now }
    cats[cat] = bucket
    nbuckets = nbuckets + 1
  end
  local tokens = bucket.tokens + (now - bucket.last) * r / 1000
  if tokens > b then tokens = b end
  bucket.last = now
  if tokens < 1 then
    bucket.tokens = tokens
    dropped = dropped + 1
    if dropped % 100 == 1 then
      statusgw.log("warn", string.format("rate limit: dropped=%d conversation=%s category=%s",
        dropped, update.conversation_id or "system", cat))
    end
    return false
  end
  bucket.tokens = tokens - 1
  return nil
end

return P

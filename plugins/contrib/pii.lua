-- pii.lua: finds personal data in an update's text and in every string of
-- its metadata, and masks it before the update is stored or delivered:
--   email   a@b.example          -> [email]
--   card    4111 1111 1111 1111  -> [card]   (13 to 19 digits that pass the Luhn check,
--                                             so order and tracking numbers stay)
--   phone   +1 415 555 0100      -> [phone]  (a "+" then 8 to 15 digits)
--   bearer  Bearer eyJhbGciOi... -> Bearer [token]
-- The update goes on, changed; one with nothing to mask is kept as it is.
--
-- Off until enabled. Config:
--   plugins = { pii = { enabled = true, kinds = { "email", "card", "phone", "bearer" } } },
--
-- Settings: kinds (which of the four to mask, default all).

local P = { name = "pii", priority = 15, enabled = false, settings = { kinds = "table" } }

local on = { email = true, card = true, phone = true, bearer = true }

function P.init(config)
  if config.kinds then
    on = {}
    for _, kind in ipairs(config.kinds) do
      if kind ~= "email" and kind ~= "card" and kind ~= "phone" and kind ~= "bearer" then
        error("plugins.pii.kinds: unknown kind '" .. tostring(kind) .. "' (email, card, phone, bearer)")
      end
      on[kind] = true
    end
  end
end

-- The Luhn checksum of a string of digits.
local function luhn(digits)
  local sum, double = 0, false
  for i = #digits, 1, -1 do
    local d = digits:byte(i) - 48
    if double then
      d = d * 2
      if d > 9 then d = d - 9 end
    end
    sum = sum + d
    double = not double
  end
  return sum % 10 == 0
end

local function card(run)
  local digits = run:gsub("[ %-]", "")
  if #digits >= 13 and #digits <= 19 and luhn(digits) then return "[card]" end
  return run
end

local function phone(run)
  local digits = run:gsub("%D", "")
  if #digits >= 8 and #digits <= 15 then return "[phone]" end
  return run
end

-- s with what is switched on masked, and whether anything was.
local function mask(s)
  local n, total = 0, 0
  if on.bearer then s, n = s:gsub("([Bb]earer%s+)[%w%-%._~%+/]+=*", "%1[token]"); total = total + n end
  if on.email then s, n = s:gsub("[%w%.%%%+%-_]+@[%w%-]+%.[%w%.%-]*%w", "[email]"); total = total + n end
  if on.card then
    local before = s
    s = s:gsub("%d[%d %-]+%d", card)
    if s ~= before then total = total + 1 end
  end
  if on.phone then
    local before = s
    s = s:gsub("%+[%d][%d %-%.%(%)]+%d", phone)
    if s ~= before then total = total + 1 end
  end
  return s, total > 0
end

-- Mask every string of a metadata value; whether anything changed.
local function mask_table(t, depth)
  local changed = false
  if depth > 16 then return false end
  for key, value in pairs(t) do
    if type(value) == "string" then
      local masked, hit = mask(value)
      if hit then
        t[key] = masked
        changed = true
      end
    elseif type(value) == "table" then
      changed = mask_table(value, depth + 1) or changed
    end
  end
  return changed
end

function P.filter(update)
  local text, changed = mask(update.text)
  if changed then update.text = text end
  local metadata = update.metadata
  if type(metadata) == "table" and mask_table(metadata, 0) then
    update.metadata = metadata
    changed = true
  end
  if changed then return update end
end

return P

-- redact.lua: masks secrets before an update is stored or delivered.
--
-- Masks bearer tokens, common API key shapes (OpenAI/Anthropic "sk-...",
-- GitHub "ghp_...", AWS "AKIA...", Slack "xox?-..."), "api_key=..." style
-- assignments, "password=hunter2" / "token: abc" assignments to any secret
-- key name, and the values of metadata keys that name secrets, in the text
-- and in every metadata string.
--
-- Off unless the config enables it: plugins.redact.enabled = true.
--
-- Configuration (plugins.redact in etc/statusgw.lua):
--   patterns    = { "%d%d%d%-%d%d%-%d%d%d%d" }  -- extra Lua patterns to mask
--   keys        = { "ssn" }                      -- extra secret key names
--   replacement = "[REDACTED]"

local P = { name = "redact", priority = 10, enabled = false,
  settings = { patterns = "table", keys = "table", replacement = "string" } }

local replacement = "[REDACTED]"
local patterns = {}
local secret_keys = {
  password = true, passwd = true, secret = true, token = true, api_key = true,
  apikey = true, authorization = true, access_token = true, refresh_token = true,
  client_secret = true, private_key = true,
}

-- Each rule: a Lua pattern and what replaces a match.
local rules = {
  { "([Bb]earer%s+)[%w%-%._~%+/]+=*", "%1" },
  { "sk%-[%w%-_]+[%w]", "" },
  { "ghp_%w+", "" },
  { "AKIA%u%u%u%u%u%u%u%u%u%u%u%u%u%u%u%u", "" },
  { "xox[abpr]%-[%w%-]+", "" },
  { "([Aa][Pp][Ii][_%-]?[Kk][Ee][Yy]%s*[=:]%s*)[^%s,;&\"']+", "%1" },
}

-- Lower-case plain-text probes. A string in which none of them occurs
-- cannot match a rule, so most strings skip the pattern matching.
local probes = { "bearer", "sk-", "ghp_", "akia", "xox", "api" }

-- The gateway calls P.filter only for updates that hold one of these
-- words (any case, in any field or metadata key or value): the probes and
-- the secret key names. Most updates hold none and cost next to nothing.
-- init sets it, because configured keys add words and configured patterns
-- can match anything (then every update is looked at).
P.filter_when = nil

function P.init(config)
  replacement = config.replacement or replacement
  for _, p in ipairs(config.patterns or {}) do patterns[#patterns + 1] = p end
  for _, k in ipairs(config.keys or {}) do secret_keys[string.lower(k)] = true end
  -- a key name that holds a shorter word ("access_token": "token") adds nothing
  local words = {}
  for _, p in ipairs(probes) do words[#words + 1] = p end
  local function covered(k)
    for _, w in ipairs(words) do if k:find(w, 1, true) then return true end end
    for other in pairs(secret_keys) do
      if other ~= k and #other < #k and k:find(other, 1, true) then return true end
    end
    return false
  end
  for k in pairs(secret_keys) do
    if not covered(k) then words[#words + 1] = k end
  end
  local fits = #words <= 32
  for _, w in ipairs(words) do fits = fits and #w <= 32 end
  if #patterns == 0 and fits then P.filter_when = words end
end

local function may_hold_secret(s)
  local l = string.lower(s)
  for i = 1, #probes do
    if string.find(l, probes[i], 1, true) then return true end
  end
  for k in pairs(secret_keys) do
    if string.find(l, k, 1, true) then return true end
  end
  return false
end

-- "password=hunter2", "token: abc": a secret key name assigned a value
local function mask_assignment(k, sep, v)
  local lv = string.lower(v)
  if secret_keys[string.lower(k)] and v ~= replacement and lv ~= "bearer" and lv ~= "basic" then
    return k .. sep .. replacement
  end
  return nil -- not a secret: the match stays as it is
end

local function mask(s)
  local changed = false
  if #patterns == 0 and not may_hold_secret(s) then return s, false end
  for _, r in ipairs(rules) do
    local n
    s, n = s:gsub(r[1], r[2] .. replacement)
    changed = changed or n > 0
  end
  local before = s
  s = s:gsub("([%w_%-]+)(%s*[=:]%s*)([^%s,;&\"']+)", mask_assignment)
  changed = changed or s ~= before
  for _, p in ipairs(patterns) do
    local n
    s, n = s:gsub(p, replacement)
    changed = changed or n > 0
  end
  return s, changed
end

-- Whether a key names a secret (most keys are lower-case already).
local function secret_key(k)
  if type(k) ~= "string" then return false end
  return secret_keys[k] or (k:find("%u") ~= nil and secret_keys[string.lower(k)]) or false
end

-- Mask strings in a metadata table, recursively; true when anything changed.
local function mask_table(t)
  local changed = false
  for k, v in pairs(t) do
    if secret_key(k) and v ~= replacement then
      t[k] = replacement
      changed = true
    elseif type(v) == "string" then
      local s, c = mask(v)
      if c then t[k] = s; changed = true end
    elseif type(v) == "table" then
      changed = mask_table(v) or changed
    end
  end
  return changed
end

function P.filter(update)
  local changed = false
  if type(update.text) == "string" then
    local s, c = mask(update.text)
    if c then update.text = s; changed = true end
  end
  if type(update.metadata) == "table" then
    changed = mask_table(update.metadata) or changed
  end
  if changed then return update end
  return nil -- unchanged: the gateway keeps the original as it is
end

return P

-- redact.lua: masks secrets before an update is stored or delivered.
--
-- Masks bearer tokens, common API key shapes (OpenAI/Anthropic "sk-...",
-- GitHub "ghp_...", AWS "AKIA...", Slack "xox?-..."), "api_key=..." style
-- assignments, and the values of metadata keys that name secrets, in the
-- text and in every metadata string.
--
-- Configuration (plugins.redact in etc/statusgw.lua):
--   patterns    = { "%d%d%d%-%d%d%-%d%d%d%d" }  -- extra Lua patterns to mask
--   keys        = { "ssn" }                      -- extra secret key names
--   replacement = "[REDACTED]"

local P = { name = "redact", priority = 10 }

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
-- cannot match a rule, so most strings skip the pattern matching; an
-- update whose whole JSON form holds no probe and no secret key name
-- needs no walk over its strings at all.
local probes = { "bearer", "sk-", "ghp_", "akia", "xox", "api" }
local key_probes = {}

function P.init(config)
  replacement = config.replacement or replacement
  for _, p in ipairs(config.patterns or {}) do patterns[#patterns + 1] = p end
  for _, k in ipairs(config.keys or {}) do secret_keys[string.lower(k)] = true end
  -- a key name that holds a shorter probe ("access_token": "token") adds nothing
  local function covered(k)
    for _, p in ipairs(probes) do if k:find(p, 1, true) then return true end end
    for other in pairs(secret_keys) do
      if other ~= k and #other < #k and k:find(other, 1, true) then return true end
    end
    return false
  end
  for k in pairs(secret_keys) do
    if not covered(k) then key_probes[#key_probes + 1] = k end
  end
end

local function has_probe(l, list)
  for i = 1, #list do
    if string.find(l, list[i], 1, true) then return true end
  end
  return false
end

local function may_hold_secret(s)
  return has_probe(string.lower(s), probes)
end

-- The whole update at once, in its JSON form: false when it certainly
-- holds nothing to mask. Configured patterns are arbitrary, so with any
-- of them every update takes the full walk.
local function may_need_masking(update)
  if #patterns > 0 then return true end
  -- (reading update.metadata here would decode it; encoding does not)
  local all = string.lower(statusgw.json.encode(update))
  return has_probe(all, probes) or has_probe(all, key_probes)
end

local function mask(s)
  local changed = false
  if #patterns == 0 and not may_hold_secret(s) then return s, false end
  for _, r in ipairs(rules) do
    local n
    s, n = s:gsub(r[1], r[2] .. replacement)
    changed = changed or n > 0
  end
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
  if not may_need_masking(update) then return nil end
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

-- pii.lua in the real plugin host.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "pii.lua", config) end
local function masked(h, text, metadata)
  local ok, u = h:filter({ conversation_id = "c1", category = "info", text = text, metadata = metadata })
  assert.is_true(ok)
  return u.text, u.metadata
end

describe("pii filter", function()
  it("masks e-mail addresses, card numbers that pass Luhn, phone numbers and bearer tokens", function()
    local h = host()
    assert.equal("mail [email] now", masked(h, "mail chidi+test@example.net now"))
    assert.equal("card [card] declined", masked(h, "card 4111 1111 1111 1111 declined"))
    assert.equal("card [card]", masked(h, "card 5500-0000-0000-0004"))
    assert.equal("order 1234 5678 9012 3456 shipped", masked(h, "order 1234 5678 9012 3456 shipped")) -- fails Luhn
    assert.equal("call [phone] today", masked(h, "call +1 415 555 0100 today"))
    assert.equal("short +12 34 stays", masked(h, "short +12 34 stays"))
    assert.equal("Authorization: Bearer [token] sent", masked(h, "Authorization: Bearer eyJhbGciOi.J9x-_~+/= sent"))
    assert.equal("took 1532 ms at 2026-12-06", masked(h, "took 1532 ms at 2026-12-06"))
  end)

  it("masks every string of the metadata, however deep, and leaves the rest", function()
    local h = host()
    local _, md = masked(h, "x", { contact = "ana@example.com", n = 4111111111111111,
      nested = { list = { "call +44 20 7946 0958", "fine" } } })
    assert.same({ contact = "[email]", n = 4111111111111111, nested = { list = { "call [phone]", "fine" } } }, md)
  end)

  it("masks only the kinds asked for", function()
    local h = host({ enabled = true, kinds = { "email" } })
    assert.equal("[email] +1 415 555 0100", masked(h, "a@b.io +1 415 555 0100"))
    local _, report = sgp.host(here .. "pii.lua", { plugins = { pii = { enabled = true, kinds = { "ssn" } } } })
    assert.matches("unknown kind 'ssn'", report.failed[1].error)
  end)
end)

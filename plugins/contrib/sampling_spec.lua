-- sampling.lua in the real plugin host.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "sampling.lua", config) end
local function kept(h, conv, category, n)
  local count = 0
  for i = 1, n do
    if h:filter({ conversation_id = conv, category = category, text = "u" .. i }) then count = count + 1 end
  end
  return count
end

describe("sampling filter", function()
  it("keeps 1 in N per conversation and category, the first always", function()
    local h = host({ enabled = true, every = 5 })
    assert.equal(20, kept(h, "c1", "progress", 100))
    assert.equal(1, kept(h, "c2", "progress", 1))
    assert.equal(4, kept(h, "c1", "info", 20)) -- its own count
    local ok, by = h:filter({ conversation_id = "c1", category = "progress", text = "x" })
    assert.is_true(ok) -- the 101st of c1 progress: 100 % 5 == 0
    ok, by = h:filter({ conversation_id = "c1", category = "progress", text = "x" })
    assert.same({ false, "sampling" }, { ok, by })
  end)

  it("never samples errors, summaries, or categories it was not given", function()
    local h = host({ enabled = true, every = 10, categories = { "progress" } })
    assert.equal(50, kept(h, "c1", "error", 50))
    assert.equal(50, kept(h, "c1", "tool", 50))
    assert.equal(5, kept(h, "c1", "progress", 50))
    h = host({ enabled = true, every = 10, keep_all = { "info" } })
    assert.equal(30, kept(h, "c1", "error", 30)) -- error stays kept even when keep_all leaves it out
    assert.equal(30, kept(h, "c1", "info", 30))
  end)

  it("checks its settings", function()
    local _, report = sgp.host(here .. "sampling.lua", { plugins = { sampling = { enabled = true, every = 0 } } })
    assert.matches("every must be at least 1", report.failed[1].error)
  end)
end)

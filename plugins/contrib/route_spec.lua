-- route.lua in the real plugin host.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "route.lua", config) end

describe("route filter", function()
  it("copies matching updates onto the target conversation and keeps the original", function()
    local h = host({ enabled = true, routes = {
      { conversations = "team-a-*", categories = { "error" }, to = "feed-team-a" },
      { to = "feed-all" },
    } })
    local ok, u = h:filter({ conversation_id = "team-a-42", category = "error", text = "boom", metadata = { k = 1 },
      source = "svc" })
    assert.is_true(ok)
    assert.equal("team-a-42", u.conversation_id)
    local out = h:summarize() -- collects what was emitted
    assert.equal(2, #out)
    assert.same({ "feed-team-a", "error", "boom", "svc" }, { out[1].conversation_id, out[1].category, out[1].text, out[1].source })
    assert.same({ k = 1, routed_from = "team-a-42" }, out[1].metadata)
    assert.equal("feed-all", out[2].conversation_id)
    h:filter({ conversation_id = "team-b-1", category = "error", text = "x" })
    h:filter({ conversation_id = "team-a-1", category = "info", text = "x" })
    out = h:summarize()
    assert.same({ "feed-all", "feed-all" }, { out[1].conversation_id, out[2].conversation_id })
  end)

  it("never routes a copy again, nor onto its own conversation", function()
    local h = host({ enabled = true, routes = { { to = "feed" } } })
    h:filter({ conversation_id = "feed", category = "info", text = "x" })
    h:filter({ conversation_id = "c1", category = "info", text = "x", metadata = { routed_from = "c0" } })
    assert.equal(0, #h:summarize())
  end)

  it("checks its routes", function()
    local _, report = sgp.host(here .. "route.lua", { plugins = { route = { enabled = true, routes = { { conversations = "x" } } } } })
    assert.matches("routes%[1%] must be", report.failed[1].error)
  end)
end)

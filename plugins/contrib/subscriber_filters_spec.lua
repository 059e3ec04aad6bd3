-- subscriber_filters.lua in the real plugin host.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "subscriber_filters.lua", config) end
local function u(text, metadata) return { conversation_id = "c1", seq = 1, category = "tool", text = text, metadata = metadata or {} } end

describe("subscriber filter library", function()
  it("min_duration", function()
    local h = host()
    assert.is_true(h:subscriber_filter("min_duration", u("x", { duration_ms = 1000 }), { ms = 1000 }))
    assert.is_false(h:subscriber_filter("min_duration", u("x", { duration_ms = 999 }), { ms = 1000 }))
    assert.is_false(h:subscriber_filter("min_duration", u("x"), { ms = 1 }))
  end)

  it("text_matches, with a Lua pattern or plain text", function()
    local h = host()
    assert.is_true(h:subscriber_filter("text_matches", u("request timed out"), { pattern = "time[ds]? ?out" }))
    assert.is_false(h:subscriber_filter("text_matches", u("all good"), { pattern = "time[ds]? ?out" }))
    assert.is_true(h:subscriber_filter("text_matches", u("a.b(c)"), { pattern = "b(c)", plain = true }))
  end)

  it("text_matches stops a pattern that backtracks without end, and refuses a long one", function()
    local h = host()
    local text = string.rep("a", 5000)
    local began = os.clock()
    assert.is_false(h:subscriber_filter("text_matches", u(text), { pattern = string.rep("a*", 40) .. "b" }))
    assert.is_true(os.clock() - began < 1, "stopped by the call's budget")
    assert.equal(1, h:admin().plugins[1].counters.subscriber_errors)
    assert.is_false(h:subscriber_filter("text_matches", u("x"), { pattern = string.rep("x", 201) }))
    assert.equal(2, h:admin().plugins[1].counters.subscriber_errors)
    assert.equal("active", h:admin().plugins[1].state) -- a subscriber's bad args never disable the plugin
  end)

  it("tool_in", function()
    local h = host()
    assert.is_true(h:subscriber_filter("tool_in", u("x", { tool = "run_tests" }), { tools = { "search_code", "run_tests" } }))
    assert.is_false(h:subscriber_filter("tool_in", u("x", { tool = "git_diff" }), { tools = { "search_code" } }))
    assert.is_false(h:subscriber_filter("tool_in", u("x"), { tools = {} }))
  end)
end)

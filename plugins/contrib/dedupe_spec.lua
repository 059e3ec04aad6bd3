-- dedupe.lua in the real plugin host.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "dedupe.lua", config) end
local function pass(h, conv, category, text, metadata)
  return (h:filter({ conversation_id = conv, category = category, text = text, metadata = metadata }))
end

describe("dedupe filter", function()
  it("drops a repeat of the previous update of its conversation within the window", function()
    local h = host({ enabled = true, window_ms = 60000 })
    assert.is_true(pass(h, "c1", "info", "Heartbeat", { phase = "wait" }))
    assert.is_false(pass(h, "c1", "info", "Heartbeat", { phase = "wait" }))
    assert.is_false(pass(h, "c1", "info", "Heartbeat", { phase = "wait" }))
    assert.is_true(pass(h, "c2", "info", "Heartbeat", { phase = "wait" })) -- another conversation
    assert.is_true(pass(h, "c1", "info", "Heartbeat", { phase = "done" })) -- other metadata
    assert.is_true(pass(h, "c1", "info", "Working", { phase = "done" }))
    assert.is_true(pass(h, "c1", "info", "Heartbeat", { phase = "done" })) -- something else came between
  end)

  it("lets a repeat through after the window, and never drops errors", function()
    local h = host({ enabled = true, window_ms = 0 })
    assert.is_true(pass(h, "c1", "info", "Heartbeat"))
    -- a window of 0 ms: only a repeat within the same millisecond is dropped; wait one out
    local t = os.clock()
    while os.clock() - t < 0.002 do end
    assert.is_true(pass(h, "c1", "info", "Heartbeat"))
    h = host({ enabled = true })
    assert.is_true(pass(h, "c1", "error", "timeout"))
    assert.is_true(pass(h, "c1", "error", "timeout"))
  end)
end)

-- plugins/rate_limit.lua, run in the real plugin host.
local ph = require("plugin_host")

describe("rate_limit plugin", function()
  it("drops updates over the burst, per conversation and category, and counts them in the plugin's log", function()
    local host = ph.host({ "plugins/rate_limit.lua" }, { plugins = { rate_limit = { rate = 0.001, burst = 3 } } })
    local kept = 0
    for _ = 1, 10 do
      local keep, by = host:filter({ conversation_id = "a", category = "tool", text = "x" })
      if keep then kept = kept + 1 else assert.equal("rate_limit", by) end
    end
    assert.equal(3, kept)
    -- another category and another conversation have their own buckets
    assert.is_true((host:filter({ conversation_id = "a", category = "info", text = "x" })))
    assert.is_true((host:filter({ conversation_id = "b", category = "tool", text = "x" })))
  end)

  it("never limits exempt categories", function()
    local host = ph.host({ "plugins/rate_limit.lua" }, { plugins = { rate_limit = { rate = 0.001, burst = 1 } } })
    for _ = 1, 20 do assert.is_true((host:filter({ conversation_id = "a", category = "error", text = "x" }))) end
  end)

  it("takes per-category overrides", function()
    local host = ph.host({ "plugins/rate_limit.lua" }, { plugins = { rate_limit = { rate = 0.001, burst = 100, categories = { progress = { rate = 0.001, burst = 1 } } } } })
    assert.is_true((host:filter({ conversation_id = "a", category = "progress", text = "1" })))
    assert.is_false((host:filter({ conversation_id = "a", category = "progress", text = "2" })))
    assert.is_true((host:filter({ conversation_id = "a", category = "tool", text = "3" })))
  end)

  it("refills the bucket over time", function()
    local host = ph.host({ "plugins/rate_limit.lua" }, { plugins = { rate_limit = { rate = 20, burst = 1 } } })
    assert.is_true((host:filter({ conversation_id = "a", category = "tool", text = "1" })))
    assert.is_false((host:filter({ conversation_id = "a", category = "tool", text = "2" })))
    require("socket").sleep(0.12)
    assert.is_true((host:filter({ conversation_id = "a", category = "tool", text = "3" })))
  end)
end)

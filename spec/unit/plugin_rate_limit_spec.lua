-- plugins/rate_limit.lua, run in the real plugin host.
local ph = require("plugin_host")

describe("rate_limit plugin", function()
  it("refuses updates over the burst with 429 and a Retry-After from the bucket, per conversation and category", function()
    local host = ph.host({ "plugins/rate_limit.lua" }, { plugins = { rate_limit = { rate = 0.5, burst = 3 } } })
    local kept = 0
    for _ = 1, 10 do
      local keep, by, refusal = host:filter({ conversation_id = "a", category = "tool", text = "x" })
      if keep then
        kept = kept + 1
      else
        assert.equal("rate_limit", by)
        assert.equal(429, refusal.status)
        assert.equal("rate_limited", refusal.code)
        assert.matches("0.5 updates/s for category tool", refusal.message)
        -- one token every 2 s: the next is at most 2 s away
        assert.is_true(refusal.retry_after >= 1 and refusal.retry_after <= 2, tostring(refusal.retry_after))
      end
    end
    assert.equal(3, kept)
    -- another category and another conversation have their own buckets
    assert.is_true((host:filter({ conversation_id = "a", category = "info", text = "x" })))
    assert.is_true((host:filter({ conversation_id = "b", category = "tool", text = "x" })))
  end)

  it("is off as shipped, until the config enables it", function()
    local host = ph.host({ "plugins/rate_limit.lua" }, { as_shipped = true, plugins = { rate_limit = { rate = 0.001, burst = 1 } } })
    for _ = 1, 5 do assert.is_true((host:filter({ conversation_id = "a", category = "tool", text = "x" }))) end
    local p = host:admin().plugins[1]
    assert.equal("off", p.state)
    assert.is_false(p.enabled)
    host = ph.host({ "plugins/rate_limit.lua" }, { as_shipped = true, plugins = { rate_limit = { enabled = true, rate = 0.001, burst = 1 } } })
    assert.is_true((host:filter({ conversation_id = "a", category = "tool", text = "x" })))
    assert.is_false((host:filter({ conversation_id = "a", category = "tool", text = "x" })))
    assert.equal("active", host:admin().plugins[1].state)
  end)

  it("refuses settings of the wrong type at load, naming the setting", function()
    local _, report = ph.host({ "plugins/rate_limit.lua" }, { plugins = { rate_limit = { rate = "fast" } } })
    assert.equal(0, #report.loaded)
    assert.matches("plugins.rate_limit.rate must be a number, got string", report.failed[1].error)
    _, report = ph.host({ "plugins/rate_limit.lua" }, { plugins = { rate_limit = { rat = 5 } } })
    assert.matches("unknown key 'rat' %(did you mean 'rate'%?%)", report.failed[1].error)
    _, report = ph.host({ "plugins/rate_limit.lua" }, { plugins = { rate_limit = { enabled = "yes" } } })
    assert.matches("enabled must be true or false", report.failed[1].error)
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

-- workflow_digest.lua in the real plugin host.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host() return sgp.plugin(here .. "workflow_digest.lua") end

describe("workflow_digest aggregator", function()
  it("publishes a digest the moment a workflow completes", function()
    local h = host()
    local function obs(category, text, metadata)
      h:observe("c1", { conversation_id = "c1", category = category, text = text, metadata = metadata })
    end
    obs("workflow", "Workflow deploy started", { workflow = "deploy", progress = "0/3", percentage = 0 })
    obs("tool", "Executing search_code", { tool = "search_code" })
    obs("tool", "search_code done", { tool = "search_code", duration_ms = 300 })
    obs("error", "run_tests failed", { tool = "run_tests" })
    obs("workflow", "Workflow deploy 2/3", { workflow = "deploy", progress = "2/3", percentage = 67 })
    assert.equal(0, #h:summarize())
    obs("workflow", "Workflow deploy complete", { workflow = "deploy", progress = "3/3", percentage = 100, duration_ms = 252000 })
    local out = h:summarize()
    assert.equal(1, #out)
    assert.equal("summary", out[1].category)
    assert.equal("Workflow deploy complete in 4.2m: 3 steps, 2 tools (run_tests x1, search_code x2), 1 error", out[1].text)
    assert.same({ workflow = "deploy", steps = 3, duration_ms = 252000, tools = { search_code = 2, run_tests = 1 }, errors = 1,
      last_error = "run_tests failed" }, out[1].metadata)
    assert.equal(0, #h:summarize())
  end)
end)

-- tool_timing.lua in the real plugin host.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "tool_timing.lua", config) end

describe("tool_timing aggregator", function()
  it("summarizes runs, p50/p95 of duration_ms and errors per tool", function()
    local h = host()
    for ms = 100, 2000, 100 do -- 20 runs: p50 1000, p95 1900
      h:observe("c1", { conversation_id = "c1", category = "tool", text = "done", metadata = { tool = "search_code", duration_ms = ms } })
    end
    h:observe("c1", { conversation_id = "c1", category = "tool", text = "done", metadata = { tool = "read_file", duration_ms = 40 } })
    h:observe("c1", { conversation_id = "c1", category = "error", text = "timeout", metadata = { tool = "read_file" } })
    h:observe("c1", { conversation_id = "c1", category = "info", text = "no tool" })
    local out = h:summarize()
    assert.equal(1, #out)
    assert.equal("summary", out[1].category)
    assert.equal("2 tools: read_file 1 run p50 40ms p95 40ms 1 error; search_code 20 runs p50 1.0s p95 1.9s", out[1].text)
    assert.same({ read_file = { runs = 1, errors = 1, p50_ms = 40, p95_ms = 40 },
      search_code = { runs = 20, errors = 0, p50_ms = 1000, p95_ms = 1900 } }, out[1].metadata.tools)
    assert.equal(0, #h:summarize()) -- nothing new since
  end)
end)

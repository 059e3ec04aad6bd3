-- cloudevents.lua in the real plugin host: the CloudEvents 1.0 JSON batch format.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "cloudevents.lua", config) end

describe("cloudevents forwarder", function()
  it("sends an array of structured events with the required attributes", function()
    local h = host({ enabled = true, source_prefix = "https://status.example.com/" })
    local u = { conversation_id = "conv-3", seq = 12, category = "tool", text = "Executing search_code",
      metadata = { tool = "search_code" }, timestamp = "2026-12-06T10:00:00.123Z", source = "tool-executor" }
    local body, headers = h:webhook_format("cloudevents", { u })
    assert.equal("application/cloudevents-batch+json", headers["Content-Type"])
    local events = sgp.json.decode(body)
    assert.equal(1, #events)
    local e = events[1]
    -- required: id, source, specversion, type; optional: subject, time, datacontenttype, data
    assert.same({ "1.0", "conv-3:12", "https://status.example.com/conversations/conv-3", "io.statusgw.status.tool" },
      { e.specversion, e.id, e.source, e.type })
    assert.same({ "tool-executor", "2026-12-06T10:00:00.123Z", "application/json" }, { e.subject, e.time, e.datacontenttype })
    assert.same(u, e.data)
  end)
end)

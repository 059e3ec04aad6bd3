-- opsgenie.lua in the real plugin host: the Create Alert API's body.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "opsgenie.lua", config) end
local function update(seq, text, metadata)
  return { conversation_id = "conv-9", seq = seq, category = "error", text = text, metadata = metadata or {},
    timestamp = "2026-12-06T10:00:0" .. seq .. ".000Z", source = "error-handler" }
end

describe("opsgenie forwarder", function()
  it("makes one alert per batch: message, alias, description, tags, details, entity, source, priority", function()
    local h = host({ enabled = true, priority = "P2", tags = { "statusgw", "prod" } })
    assert.is_true(h:webhook_match("opsgenie", update(1, "x")))
    assert.is_false(h:webhook_match("opsgenie", { conversation_id = "c", seq = 1, category = "info", text = "x", metadata = {} }))
    local a = sgp.json.decode((h:webhook_format("opsgenie", {
      update(1, "first failure", { error_type = "timeout" }),
      update(2, string.rep("long ", 60), { error_type = "upstream_error", attempt = 3, nested = { x = 1 } }),
    })))
    assert.is_true(#a.message <= 130)
    assert.matches("^2 errors, last: long long", a.message)
    assert.equal("statusgw-conv-9", a.alias)
    assert.equal("2026-12-06T10:00:01.000Z [conv-9 seq 1] first failure", a.description:match("^[^\n]+"))
    assert.same({ "statusgw", "prod" }, a.tags)
    assert.same({ conversation_id = "conv-9", count = "2", error_type = "upstream_error", attempt = "3" }, a.details)
    assert.same({ "conv-9", "error-handler", "P2" }, { a.entity, a.source, a.priority })
  end)

  it("refuses a priority Opsgenie does not know", function()
    local _, report = sgp.host(here .. "opsgenie.lua", { plugins = { opsgenie = { enabled = true, priority = "urgent" } } })
    assert.matches("priority must be P1, P2, P3, P4 or P5", report.failed[1].error)
  end)
end)

-- pagerduty.lua in the real plugin host: Events API v2 trigger and resolve.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "pagerduty.lua", config) end
local KEY = "R0ABCDEF0123456789ABCDEF01234567"
local function update(seq, category, text, metadata)
  return { conversation_id = "prod-7", seq = seq, category = category, text = text, metadata = metadata or {},
    timestamp = "2026-12-06T10:00:00.000Z", source = "tool-executor" }
end

describe("pagerduty forwarder", function()
  it("triggers on an error, deduplicated by conversation, with the documented payload", function()
    local h = host({ enabled = true, routing_key = KEY, severity = "critical" })
    local err = update(3, "error", "search_code failed", { tool = "search_code", error_type = "timeout" })
    assert.is_true(h:webhook_match("pagerduty", err))
    assert.is_false(h:webhook_match("pagerduty", update(4, "tool", "ok")))
    local e = sgp.json.decode((h:webhook_format("pagerduty", { err })))
    assert.same({ KEY, "trigger", "statusgw-prod-7", "statusgw" }, { e.routing_key, e.event_action, e.dedup_key, e.client })
    local p = e.payload
    assert.equal("prod-7: search_code failed", p.summary)
    assert.same({ "tool-executor", "critical", "2026-12-06T10:00:00.000Z", "search_code", "prod-7", "timeout" },
      { p.source, p.severity, p.timestamp, p.component, p.group, p.class })
    assert.equal(3, p.custom_details.seq)
  end)

  it("resolves the conversation's incident when a workflow completes", function()
    local h = host({ enabled = true, routing_key = KEY })
    local done = update(9, "workflow", "Workflow deploy complete", { workflow = "deploy", percentage = 100 })
    assert.is_true(h:webhook_match("pagerduty", done))
    assert.is_false(h:webhook_match("pagerduty", update(8, "workflow", "3/7", { percentage = 43 })))
    local e = sgp.json.decode((h:webhook_format("pagerduty", { done })))
    assert.same({ KEY, "resolve", "statusgw-prod-7" }, { e.routing_key, e.event_action, e.dedup_key })
    assert.is_nil(e.payload)
  end)

  it("sends a batch's last event with every update in custom_details, and cuts the summary to 1,024", function()
    local h = host({ enabled = true, routing_key = KEY })
    local e = sgp.json.decode((h:webhook_format("pagerduty", { update(1, "error", "a"), update(2, "error", string.rep("x", 2000)) })))
    assert.equal(1024, #e.payload.summary)
    assert.same({ "a", 1 }, { e.payload.custom_details.updates[1].text, e.payload.custom_details.updates[1].seq })
  end)

  it("refuses a severity PagerDuty does not know, and formats nothing without a routing key", function()
    local _, report = sgp.host(here .. "pagerduty.lua", { plugins = { pagerduty = { enabled = true, severity = "high" } } })
    assert.matches("severity must be critical, error, warning or info", report.failed[1].error)
    local h = host({ enabled = true })
    assert.is_nil((h:webhook_format("pagerduty", { update(1, "error", "a") })))
    assert.matches("routing_key is not set", h:admin().plugins[1].last_error)
  end)
end)

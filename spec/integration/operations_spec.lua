-- Operations: Prometheus metrics (checked by promtool), analytics, and a
-- stop under load that delivers every acknowledged update.
local gw_ = require("gateway")
local cjson = gw_.json

local function metric(text, name)
  local v = text:match("\n" .. name:gsub("([%[%]%(%)%.%-%+%*%?%^%$])", "%%%1") .. " ([%d%.e%+]+)")
  return tonumber(v)
end

describe("metrics and stats", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 20 }) end)
  teardown(function() gw_.stop(gw) end)

  it("serves /metrics that promtool accepts, with counters that move", function()
    local s = assert(gw_.sse(gw, "/api/v1/conversations/m1/events"))
    for i = 1, 5 do gw_.publish(gw, { conversation_id = "m1", category = "tool", text = tostring(i) }) end
    gw_.publish(gw, { conversation_id = "m1", category = "bogus", text = "x" })
    assert.equal(5, #s:updates(5))
    local st, _, h, body = gw_.request(gw, "GET", "/metrics")
    assert.equal(200, st)
    assert.matches("^text/plain; version=0.0.4", h["content-type"])
    local f = assert(io.open(gw.dir .. "/metrics.txt", "w")); f:write(body); f:close()
    local promtool = os.getenv("PROMTOOL") or "build/tools/promtool"
    local p = io.popen(promtool .. " check metrics < " .. gw.dir .. "/metrics.txt 2>&1; echo rc=$?")
    local out = p:read("a"); p:close()
    assert.matches("rc=0", out, out)
    assert.equal(6, metric(body, 'statusgw_updates_received_total'))
    assert.equal(5, metric(body, 'statusgw_updates_published_total{category="tool"}'))
    assert.equal(1, metric(body, 'statusgw_updates_rejected_total{reason="invalid_category"}'))
    assert.equal(5, metric(body, 'statusgw_deliveries_total{transport="sse"}'))
    assert.is_true(metric(body, "statusgw_batch_size_count") >= 1)
    assert.equal(5, metric(body, "statusgw_publish_to_deliver_seconds_count"))
    assert.equal(1, metric(body, 'statusgw_connections{transport="sse"}'))
    assert.is_true(metric(body, "statusgw_conversations") >= 1)
    s:close()
  end)

  it("reports analytics: counts per category, rates, top conversations, error rate", function()
    for i = 1, 6 do gw_.publish(gw, { conversation_id = "busy", category = "tool", text = tostring(i) }) end
    gw_.publish(gw, { conversation_id = "quiet", category = "error", text = "boom" })
    local st, s = gw_.request(gw, "GET", "/api/v1/stats")
    assert.equal(200, st)
    assert.is_true(s.per_category.tool >= 11)
    assert.equal(1, s.per_category.error)
    assert.equal("busy", s.top_conversations[1].conversation_id)
    assert.equal(6, s.top_conversations[1].published)
    assert.is_true(s.rate_per_s.last_1m > 0)
    assert.is_true(s.error_rate.last_5m > 0 and s.error_rate.last_5m < 1)
    assert.is_table(s.plugins); assert.is_table(s.webhooks)
  end)
end)

describe("stopping under load", function()
  it("delivers every acknowledged update to a connected subscriber before exiting 0", function()
    local gw = gw_.start({ flush_interval_ms = 500, batch_size = 50 })
    local s = assert(gw_.sse(gw, "/api/v1/conversations/load/events"))
    local acked = 0
    for _ = 1, 30 do
      local items = {}
      for i = 1, 100 do items[i] = { conversation_id = "load", category = "progress", text = "p" .. i } end
      local st, b = gw_.request(gw, "POST", "/api/v1/status/bulk", items)
      assert.equal(202, st)
      acked = acked + b.accepted
    end
    gw_.publish(gw, { conversation_id = "load", category = "info", text = "last" })
    acked = acked + 1
    gw_.signal(gw, "TERM")
    local seqs, err = {}, nil
    while true do
      local ev
      ev, err = s:next(10)
      if not ev then break end
      if ev.event == "status_update" then seqs[#seqs + 1] = ev.json.seq end
    end
    assert.equal("closed", err)
    assert.equal(acked, #seqs)
    for i, q in ipairs(seqs) do assert.equal(i, q) end
    assert.equal(0, gw_.wait_exit(gw, 10))
    gw.stopped = true
  end)
end)

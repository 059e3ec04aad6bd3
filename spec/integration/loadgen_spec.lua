-- A short run of the load generator against the real daemon, so the
-- benchmark tool keeps working: a few subscribers, a few updates, counts exact.
local gw_ = require("gateway")
local cjson = gw_.json

local function loadgen(gw, args)
  local out = gw.dir .. "/loadgen.json"
  local p = io.popen(string.format("build/loadgen --port %d --json %s %s 2>&1; echo rc=$?", gw.port, out, args))
  local text = p:read("a")
  p:close()
  local f = assert(io.open(out), text)
  local r = cjson.decode(f:read("a"))
  f:close()
  return r, text
end

describe("load generator smoke run", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 20, max_connections_per_ip = 0 }) end)
  teardown(function() gw_.stop(gw) end)

  it("counts every delivery to Phoenix subscribers exactly", function()
    local r, text = loadgen(gw, "--subscribers 6 --conversations 2 --publishers 1 --rate 100 --duration 1 --warmup 0.2")
    assert.equal(6, r.subscribers_connected, text)
    assert.equal(0, r.subscribers_failed)
    assert.is_true(r.acked > 50)
    assert.equal(r.acked * 3, r.expected)
    assert.equal(r.expected, r.received)
    assert.equal(0, r.loss)
    assert.is_true(r.latency_ms.p99 > 0 and r.latency_ms.p99 < 1000)
    assert.matches("deliveries", text)
  end)

  it("counts every delivery over long-poll, SSE and multi-conversation SSE exactly", function()
    for _, t in ipairs({ "longpoll", "sse", "sse-multi" }) do
      local r, text = loadgen(gw, "--subscribers 6 --conversations 2 --publishers 1 --rate 100 --duration 1 --warmup 0.2 --transport " .. t)
      assert.equal(6, r.subscribers_connected, t .. ": " .. text)
      assert.equal(0, r.subscribers_failed, t)
      assert.is_true(r.acked > 50, t)
      -- a multi stream follows both conversations: every update reaches all six
      assert.equal(r.acked * (t == "sse-multi" and 6 or 3), r.expected, t)
      assert.equal(r.expected, r.received, t)
    end
  end)

  it("counts updates inside batch frames one by one", function()
    local r = loadgen(gw, "--subscribers 3 --conversations 1 --publishers 2 --rate 200 --duration 1 --warmup 0.2 --batch-join")
    assert.equal(3, r.subscribers_connected)
    assert.equal(r.acked * 3, r.received)
  end)

  it("delivers every update to a fan-out larger than one write slice, as fast as it is published", function()
    -- 1,200 subscribers of one conversation: each flush is written in
    -- several slices with the loop turning between them, and flushes that
    -- arrive meanwhile share a write; nothing may be lost
    local r, text = loadgen(gw, "--subscribers 1200 --conversations 1 --publishers 1 --pipeline 8 --duration 1 --warmup 0.3 --connect-timeout 20")
    assert.equal(1200, r.subscribers_connected, text)
    assert.is_true(r.acked > 20, text)
    assert.equal(r.acked * 1200, r.expected)
    assert.equal(r.expected, r.received)
    assert.equal(0, r.loss)
  end)

  it("splits subscribers and publishers over processes and adds up their counts exactly", function()
    local r, text = loadgen(gw, "--procs 3 --subscribers 30 --conversations 5 --publishers 3 --rate 300 --duration 1 --warmup 0.2")
    assert.equal(30, r.subscribers_connected, text)
    assert.equal(0, r.subscribers_failed)
    assert.is_true(r.acked > 100, text)
    assert.equal(r.acked * 6, r.expected)
    assert.equal(r.expected, r.received)
    assert.is_true(r.latency_ms.p99 > 0)
  end)

  it("publishes in bulk and reports what was accepted", function()
    local r = loadgen(gw, "--publishers 2 --conversations 10 --bulk 20 --rate 2000 --duration 0.5 --warmup 0.1")
    assert.is_true(r.acked >= 100)
    assert.equal(0, r.rejected)
    assert.equal(r.published, r.acked)
  end)
end)

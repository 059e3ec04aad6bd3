-- Conversation limits, back-pressure, clean stops and start-up errors.
local gw_ = require("gateway")
local cjson = gw_.json

local function list(gw)
  local _, l = gw_.request(gw, "GET", "/api/v1/conversations")
  local ids = {}
  for _, c in ipairs(l.conversations) do ids[c.conversation_id] = c end
  return ids, l.count
end

describe("conversation cap", function()
  local gw
  setup(function() gw = gw_.start({ max_conversations = 3, flush_interval_ms = 10 }) end)
  teardown(function() gw_.stop(gw) end)

  it("evicts the least recently active conversation without subscribers", function()
    for _, id in ipairs({ "a", "b", "c" }) do
      assert.equal(202, (gw_.publish(gw, { conversation_id = id, category = "info", text = id })))
    end
    gw_.publish(gw, { conversation_id = "a", category = "info", text = "a again" }) -- b is now oldest
    assert.equal(202, (gw_.publish(gw, { conversation_id = "d", category = "info", text = "d" })))
    local ids, count = list(gw)
    assert.equal(3, count)
    assert.is_nil(ids.b)
    assert.is_table(ids.a); assert.is_table(ids.c); assert.is_table(ids.d)
    assert.matches("event=conversation_evicted conversation=b", gw_.log_text(gw))
    local status, h = gw_.request(gw, "GET", "/api/v1/conversations/b/history")
    if os.getenv("STATUSGW_STORE") == "sqlite" then
      -- the durable store keeps an evicted conversation's rows: it comes
      -- back, history and all, when it is asked for (until its TTL)
      assert.equal(200, status)
      assert.equal("b", h.updates[1].text)
    else
      assert.equal(404, status) -- in memory its history went with it
    end
  end)

  it("answers 429 for a new conversation when every one has subscribers", function()
    local streams = {}
    for _, id in ipairs({ "a", "c", "d" }) do
      streams[#streams + 1] = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events"))
    end
    local st, body, h = gw_.publish(gw, { conversation_id = "e", category = "info", text = "e" })
    assert.equal(429, st)
    assert.equal("too_many_conversations", body.error.code)
    assert.equal("1", h["retry-after"])
    -- existing conversations still take updates
    assert.equal(202, (gw_.publish(gw, { conversation_id = "a", category = "info", text = "ok" })))
    for _, s in ipairs(streams) do s:close() end
  end)
end)

describe("pending cap", function()
  local gw
  setup(function() gw = gw_.start({ max_pending_updates = 5, batch_size = 100, flush_interval_ms = 1500 }) end)
  teardown(function() gw_.stop(gw) end)

  it("answers 429 with Retry-After once max_pending_updates are queued, and recovers after the flush", function()
    for i = 1, 5 do
      assert.equal(202, (gw_.publish(gw, { conversation_id = "q", category = "info", text = tostring(i) })))
    end
    local st, body, h = gw_.publish(gw, { conversation_id = "q", category = "info", text = "6" })
    assert.equal(429, st)
    assert.equal("queue_full", body.error.code)
    assert.equal("1", h["retry-after"])
    local _, hist = gw_.request(gw, "GET", "/api/v1/conversations/q/history")
    assert.equal(5, #hist.updates) -- the refused one left no trace
    gw_.sleep(1.8)
    assert.equal(202, (gw_.publish(gw, { conversation_id = "q", category = "info", text = "6" })))
  end)

  it("reports a refused bulk item in its slot", function()
    gw_.sleep(1.8)
    local items = {}
    for i = 1, 7 do items[i] = { conversation_id = "bulkq", category = "info", text = tostring(i) } end
    local st, body = gw_.request(gw, "POST", "/api/v1/status/bulk", items)
    assert.equal(202, st)
    assert.equal(5, body.accepted)
    assert.equal("queue_full", body.results[6].error.code)
    assert.equal("queue_full", body.results[7].error.code)
  end)
end)

describe("idle cleanup", function()
  local gw
  setup(function() gw = gw_.start({ cleanup_interval_s = 1, conversation_ttl_s = 1, flush_interval_ms = 10 }) end)
  teardown(function() gw_.stop(gw) end)

  it("forgets idle conversations without subscribers and keeps watched ones", function()
    gw_.publish(gw, { conversation_id = "idle", category = "info", text = "x" })
    gw_.publish(gw, { conversation_id = "watched", category = "info", text = "x" })
    local s = assert(gw_.sse(gw, "/api/v1/conversations/watched/events"))
    gw_.sleep(2.5)
    local ids = list(gw)
    assert.is_nil(ids.idle)
    assert.is_table(ids.watched)
    assert.matches("event=conversations_expired", gw_.log_text(gw))
    s:close()
  end)
end)

describe("stopping", function()
  it("delivers queued updates to subscribers on SIGTERM, then exits 0", function()
    local gw = gw_.start({ flush_interval_ms = 60000, batch_size = 100 })
    local s = assert(gw_.sse(gw, "/api/v1/conversations/stop/events"))
    for i = 1, 3 do
      assert.equal(202, (gw_.publish(gw, { conversation_id = "stop", category = "info", text = tostring(i) })))
    end
    local none = s:updates(1, 0.2)
    assert.equal(0, #none) -- still queued
    gw_.signal(gw, "TERM")
    local evs, err = s:updates(3)
    assert.equal(3, #evs, err)
    assert.same({ 1, 2, 3 }, { evs[1].json.seq, evs[2].json.seq, evs[3].json.seq })
    local _, closed = s:next(5)
    assert.equal("closed", closed)
    assert.equal(0, gw_.wait_exit(gw, 10))
    local log = gw_.log_text(gw)
    assert.matches("event=shutdown reason=SIGTERM pending=3", log)
    assert.is_nil(log:find("AddressSanitizer"))
    gw.stopped = true
  end)

  it("exits 2 with a message naming the key for a bad config", function()
    local dir = os.tmpname()
    local f = io.open(dir, "w")
    f:write("return { batch_size = 'ten' }")
    f:close()
    local p = io.popen(gw_.bin .. " --config " .. dir .. " 2>&1; echo rc=$?")
    local out = p:read("a")
    p:close()
    os.remove(dir)
    assert.matches("batch_size must be an integer", out)
    assert.matches("rc=2", out)
  end)

  it("exits 2 for an unknown config key and for a config that does not parse", function()
    local dir = os.tmpname()
    for _, body in ipairs({ "return { bacth_size = 10 }", "return {" }) do
      local f = io.open(dir, "w"); f:write(body); f:close()
      local p = io.popen(gw_.bin .. " --config " .. dir .. " 2>&1; echo rc=$?")
      local out = p:read("a"); p:close()
      assert.matches("rc=2", out)
      assert.matches("bad config", out)
    end
    os.remove(dir)
  end)

  it("validates the shipped config with --check-config", function()
    local p = io.popen(gw_.bin .. " --config etc/statusgw.lua --check-config 2>&1; echo rc=$?")
    local out = p:read("a"); p:close()
    assert.matches("rc=0", out)
  end)

  it("exits 2 with a clear message when the port is in use", function()
    local gw = gw_.start({})
    local p = io.popen(gw_.bin .. " --listen 127.0.0.1:" .. gw.port .. " 2>&1; echo rc=$?")
    local out = p:read("a"); p:close()
    assert.matches("cannot listen on 127.0.0.1:" .. gw.port, out)
    assert.matches("rc=2", out)
    gw_.stop(gw)
  end)
end)

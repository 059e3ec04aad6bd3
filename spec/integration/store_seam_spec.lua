-- The store seam is asynchronous (docs/architecture.md, "The store seam"):
-- a store may answer a read on a later loop turn. These specs run the
-- gateway on the deferred store (store_delay_ms), which answers every read
-- that much later, and check what a durable or Redis store will need:
-- resumes and history reads that wait for the store, live updates that
-- arrive meanwhile delivered after the replay and in order, and readers
-- that go away before the answer comes.
package.path = "spec/helpers/?.lua;" .. package.path
local gw_ = require("gateway")
local rawws = require("rawws")
local cjson = require("cjson")
local socket = require("socket")

local DELAY_MS = 400

local function publish(gw, conv, text, category)
  local status, body = gw_.publish(gw, { conversation_id = conv, category = category or "info", text = text })
  assert.are.equal(202, status, cjson.encode(body or {}))
  return body
end

local function history(gw, conv)
  local status, body = gw_.request(gw, "GET", "/api/v1/conversations/" .. conv .. "/history")
  assert.are.equal(200, status)
  return body
end

describe("a store that answers late", function()
  local gw
  before_each(function() gw = gw_.start({ store_delay_ms = DELAY_MS, flush_interval_ms = 20 }) end)
  after_each(function() gw_.stop(gw) end)

  it("answers a history read when the store does, and the pipelined request after it in order", function()
    for i = 1, 3 do publish(gw, "late-h", "u" .. i) end
    local c = gw_.connect(gw)
    local t0 = socket.gettime()
    c:send_raw(gw_.build_request("GET", "/api/v1/conversations/late-h/history?since=1")
      .. gw_.build_request("GET", "/healthz"))
    local s1, _, b1 = c:read_response()
    local waited = socket.gettime() - t0
    local s2, _, b2 = c:read_response()
    c:close()
    assert.are.equal(200, s1)
    local h = cjson.decode(b1)
    assert.are.same({ 2, 3 }, { h.updates[1].seq, h.updates[2].seq })
    assert.are.equal(2, #h.updates)
    assert.is_true(waited >= DELAY_MS / 1000 * 0.9, "answered after " .. waited .. " s: the store was not late")
    assert.are.equal(200, s2)
    assert.truthy(b2:find("ok"))
  end)

  it("resumes an event stream: the replay first, then what was published while it was read, each seq once", function()
    for i = 1, 3 do publish(gw, "late-sse", "u" .. i) end
    local epoch = history(gw, "late-sse").epoch
    local stream = assert(gw_.sse(gw, "/api/v1/conversations/late-sse/events",
      { ["Last-Event-ID"] = epoch .. ":1" }))
    -- the replay is being read: these are flushed meanwhile, and held
    socket.sleep(0.05)
    publish(gw, "late-sse", "live4")
    publish(gw, "late-sse", "live5")
    local evs, err = stream:updates(4, 5)
    stream:close()
    assert.are.equal(4, #evs, tostring(err))
    local seqs, texts = {}, {}
    for i, e in ipairs(evs) do
      seqs[i] = e.json.seq
      texts[i] = e.json.text
      assert.are.equal(epoch .. ":" .. math.tointeger(e.json.seq), e.id)
    end
    assert.are.same({ 2, 3, 4, 5 }, seqs)
    assert.are.same({ "u2", "u3", "live4", "live5" }, texts)
  end)

  it("names a gap on a stream when history was trimmed before the late answer came", function()
    gw_.stop(gw)
    gw = gw_.start({ store_delay_ms = DELAY_MS, flush_interval_ms = 20, history_size = 3 })
    for i = 1, 3 do publish(gw, "late-trim", "u" .. i) end
    local epoch = history(gw, "late-trim").epoch
    local stream = assert(gw_.sse(gw, "/api/v1/conversations/late-trim/events",
      { ["Last-Event-ID"] = epoch .. ":1" }))
    socket.sleep(0.05)
    -- three more while the read waits: the store trims u1..u3 away
    for i = 4, 6 do publish(gw, "late-trim", "u" .. i) end
    local gap, seqs = nil, {}
    for _ = 1, 10 do
      local ev = stream:next(5)
      if not ev then break end
      if ev.event == "gap" then gap = ev.json end
      if ev.event == "status_update" then seqs[#seqs + 1] = ev.json.seq end
      if #seqs == 3 then break end
    end
    stream:close()
    assert.truthy(gap, "no gap event")
    assert.are.equal("history_trimmed", gap.reason)
    assert.are.same({ 2, 3 }, { gap.from_seq, gap.to_seq })
    assert.are.same({ 4, 5, 6 }, seqs)
  end)

  it("answers a resuming Phoenix join when the store does: recovered, the replay, then live pushes", function()
    for i = 1, 3 do publish(gw, "late-phx", "u" .. i) end
    local epoch = history(gw, "late-phx").epoch
    local ws = assert(rawws.open(gw))
    ws:send_json({ "1", "1", "status:late-phx", "phx_join", { categories = { "*" }, epoch = epoch, last_seq = 1 } })
    socket.sleep(0.05)
    -- before the join is answered: live updates are held, and an event on
    -- the channel is refused until the join returns
    publish(gw, "late-phx", "live4")
    ws:send_json({ "1", "2", "status:late-phx", "get_subscriptions", {} })
    local msgs = {}
    while #msgs < 5 do
      local m = ws:read_msg(5)
      if not m then break end
      msgs[#msgs + 1] = m
    end
    ws:close()
    assert.are.equal(5, #msgs, cjson.encode(msgs))
    -- the refusal comes first: the join is still waiting for the store
    assert.are.equal("2", msgs[1][2])
    assert.are.equal("error", msgs[1][5].status)
    assert.are.equal("join_in_progress", msgs[1][5].response.reason)
    assert.are.equal("phx_reply", msgs[2][4])
    assert.are.equal("1", msgs[2][2])
    assert.is_true(msgs[2][5].response.recovered)
    local seqs = {}
    for i = 3, 5 do
      assert.are.equal("status_update", msgs[i][4])
      seqs[#seqs + 1] = msgs[i][5].seq
    end
    assert.are.same({ 2, 3, 4 }, seqs)
  end)

  it("answers a Phoenix history event when the store does", function()
    for i = 1, 2 do publish(gw, "late-phh", "u" .. i) end
    local ws = assert(rawws.open(gw))
    ws:send_json({ "1", "1", "status:late-phh", "phx_join", {} })
    local join = ws:read_msg(5)
    assert.are.equal("ok", join[5].status)
    local t0 = socket.gettime()
    ws:send_json({ "1", "2", "status:late-phh", "history", { since = 0 } })
    local m = ws:read_msg(5)
    ws:close()
    assert.is_true(socket.gettime() - t0 >= DELAY_MS / 1000 * 0.9)
    assert.are.equal("2", m[2])
    assert.are.equal(2, #m[5].response.updates)
  end)

  it("keeps serving when readers go away before the store answers", function()
    for i = 1, 3 do publish(gw, "late-gone", "u" .. i) end
    local epoch = history(gw, "late-gone").epoch
    -- a history read, a resuming stream and a resuming join, each closed
    -- while the store has not answered
    local c = gw_.connect(gw)
    c:send_raw(gw_.build_request("GET", "/api/v1/conversations/late-gone/history"))
    local stream = assert(gw_.sse(gw, "/api/v1/conversations/late-gone/events",
      { ["Last-Event-ID"] = epoch .. ":0" }))
    local ws = assert(rawws.open(gw))
    ws:send_json({ "1", "1", "status:late-gone", "phx_join", { epoch = epoch, last_seq = 0 } })
    ws:send_json({ "2", "2", "status:late-gone", "phx_leave", {} })
    local ws2 = assert(rawws.open(gw))
    ws2:send_json({ "1", "1", "status:late-gone", "phx_join", {} })
    assert.are.equal("ok", ws2:read_msg(5)[5].status)
    ws2:send_json({ "1", "2", "status:late-gone", "history", {} })
    socket.sleep(0.05)
    c:close()
    stream:close()
    ws:close()
    ws2:close()
    socket.sleep(DELAY_MS / 1000 + 0.2)
    publish(gw, "late-gone", "after")
    assert.are.equal(4, #history(gw, "late-gone").updates)
  end)

  it("ends a stream whose resume held more than output_cap_bytes, and the client resumes", function()
    gw_.stop(gw)
    gw = gw_.start({ store_delay_ms = DELAY_MS, flush_interval_ms = 5, batch_size = 1, output_cap_bytes = 2048 })
    publish(gw, "late-cap", "u1")
    publish(gw, "late-cap", "u2")
    local epoch = history(gw, "late-cap").epoch
    local stream = assert(gw_.sse(gw, "/api/v1/conversations/late-cap/events",
      { ["Last-Event-ID"] = epoch .. ":1" }))
    socket.sleep(0.05)
    local big = string.rep("x", 600)
    for i = 3, 8 do publish(gw, "late-cap", big .. i) end
    local got, err = stream:updates(10, 5)
    stream:close()
    assert.are.equal("closed", err)
    assert.are.equal(0, #got) -- nothing out of order: the stream ends before the replay
    assert.truthy(gw_.log_text(gw):find("event=sse_replay_failed", 1, true))
    -- resuming again (no more publishes meanwhile) gets everything, in order
    local again = assert(gw_.sse(gw, "/api/v1/conversations/late-cap/events",
      { ["Last-Event-ID"] = epoch .. ":1" }))
    local evs = again:updates(7, 5)
    again:close()
    local seqs = {}
    for i, e in ipairs(evs) do seqs[i] = e.json.seq end
    assert.are.same({ 2, 3, 4, 5, 6, 7, 8 }, seqs)
  end)
end)

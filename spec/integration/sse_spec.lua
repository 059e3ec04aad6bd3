-- Server-Sent Events delivery, batching, resume and slow consumers against
-- the real daemon.
local gw_ = require("gateway")
local cjson = gw_.json
local socket = require("socket")

local function conv(name) return name .. "-" .. tostring(math.random(1, 1e9)) end

describe("SSE delivery", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 50, history_size = 20, sse_heartbeat_s = 1 }) end)
  teardown(function() gw_.stop(gw) end)

  it("streams published updates with epoch:seq ids and a retry hint", function()
    local id = conv("live")
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events"))
    assert.matches("^text/event%-stream", s.headers["content-type"])
    local first = s:next()
    assert.equal("2000", first.retry)
    local _, pub = gw_.publish(gw, { conversation_id = id, category = "tool", text = "Executing search_code",
      metadata = { tool = "search_code" }, source = "tool-executor" })
    local ev = s:updates(1)[1]
    assert.equal("status_update", ev.event)
    assert.equal(pub.epoch .. ":1", ev.id)
    assert.equal(id, ev.json.conversation_id)
    assert.equal(1, ev.json.seq)
    assert.equal("tool", ev.json.category)
    assert.equal("Executing search_code", ev.json.text)
    assert.equal("search_code", ev.json.metadata.tool)
    assert.equal("tool-executor", ev.json.source)
    assert.matches("^%d+%-%d+%-%d+T[%d:.]+Z$", ev.json.timestamp)
    s:close()
  end)

  it("delivers only the categories asked for", function()
    local id = conv("cats")
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events?categories=error,tool"))
    for _, c in ipairs({ "info", "tool", "planning", "error", "info" }) do
      gw_.publish(gw, { conversation_id = id, category = c, text = c })
    end
    local evs = s:updates(2)
    assert.same({ "tool", "error" }, { evs[1].json.category, evs[2].json.category })
    local more, err = s:updates(1, 0.4)
    assert.equal(0, #more)
    assert.equal("timeout", err)
    s:close()
  end)

  it("refuses unknown categories and malformed Last-Event-ID with 400", function()
    local s, st, body = gw_.sse(gw, "/api/v1/conversations/x1/events?categories=tool,bogus")
    assert.is_nil(s); assert.equal(400, st)
    assert.equal("invalid_categories", cjson.decode(body).error.code)
    s, st, body = gw_.sse(gw, "/api/v1/conversations/x1/events", { ["Last-Event-ID"] = "garbage" })
    assert.is_nil(s); assert.equal(400, st)
    assert.equal("invalid_last_event_id", cjson.decode(body).error.code)
  end)

  it("delivers 25 quick updates in order, in flushes of at most 10", function()
    local id = conv("batch")
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events"))
    local items = {}
    for i = 1, 25 do items[i] = { conversation_id = id, category = "progress", text = "step " .. i } end
    local st = gw_.request(gw, "POST", "/api/v1/status/bulk", items)
    assert.equal(202, st)
    local evs = s:updates(25)
    assert.equal(25, #evs)
    for i = 1, 25 do assert.equal(i, evs[i].json.seq); assert.equal("step " .. i, evs[i].json.text) end
    local _, l = gw_.request(gw, "GET", "/api/v1/conversations")
    for _, c in ipairs(l.conversations) do
      if c.conversation_id == id then assert.equal(3, c.flushes) end -- 10 + 10 + 5
    end
    s:close()
  end)

  it("resumes from Last-Event-ID without duplicates or losses", function()
    local id = conv("resume")
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events"))
    for i = 1, 3 do gw_.publish(gw, { conversation_id = id, category = "info", text = "a" .. i }) end
    local evs = s:updates(3)
    local last = evs[3].id
    s:close()
    for i = 4, 6 do gw_.publish(gw, { conversation_id = id, category = "info", text = "a" .. i }) end
    gw_.sleep(0.15) -- let the missed updates flush while nobody listens
    s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events", { ["Last-Event-ID"] = last }))
    gw_.publish(gw, { conversation_id = id, category = "info", text = "a7" })
    evs = s:updates(4)
    local seqs = {}
    for i, e in ipairs(evs) do seqs[i] = e.json.seq end
    assert.same({ 4, 5, 6, 7 }, seqs)
    local extra = s:updates(1, 0.3)
    assert.equal(0, #extra)
    s:close()
  end)

  it("resumes with the last_event_id query parameter too", function()
    local id = conv("resumeq")
    local _, p = gw_.publish(gw, { conversation_id = id, category = "info", text = "1" })
    gw_.publish(gw, { conversation_id = id, category = "info", text = "2" })
    gw_.sleep(0.15)
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events?last_event_id=" .. p.epoch .. ":1"))
    local ev = s:updates(1)[1]
    assert.equal(2, ev.json.seq)
    s:close()
  end)

  it("announces a gap when history no longer holds what was missed", function()
    local id = conv("gap")
    local _, p = gw_.publish(gw, { conversation_id = id, category = "info", text = "1" })
    local items = {}
    for i = 1, 30 do items[i] = { conversation_id = id, category = "info", text = tostring(i + 1) } end
    gw_.request(gw, "POST", "/api/v1/status/bulk", items)
    gw_.sleep(0.15)
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events", { ["Last-Event-ID"] = p.epoch .. ":1" }))
    local ev = s:next()
    while ev and ev.event ~= "gap" do ev = s:next() end
    assert.is_table(ev)
    assert.equal("history_trimmed", ev.json.reason)
    assert.equal(2, ev.json.from_seq)
    assert.equal(11, ev.json.to_seq) -- history keeps 20 of 31
    local evs = s:updates(20)
    assert.equal(12, evs[1].json.seq)
    assert.equal(31, evs[20].json.seq)
    s:close()
  end)

  it("announces an epoch change and replays the new history", function()
    local id = conv("epoch")
    gw_.publish(gw, { conversation_id = id, category = "info", text = "1" })
    gw_.sleep(0.15)
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events", { ["Last-Event-ID"] = "0000000000000000:7" }))
    local ev = s:next()
    while ev and ev.event ~= "gap" do ev = s:next() end
    assert.equal("epoch_changed", ev.json.reason)
    -- nothing of the new epoch was missed: no range (never from 1 to 0)
    assert.is_nil(ev.json.from_seq)
    assert.is_nil(ev.json.to_seq)
    local u = s:updates(1)[1]
    assert.equal(1, u.json.seq)
    s:close()
  end)

  it("names the range of the new epoch a client missed, in order", function()
    local id = conv("epoch-trim")
    for i = 1, 25 do gw_.publish(gw, { conversation_id = id, category = "info", text = tostring(i) }) end
    gw_.sleep(0.15)
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events", { ["Last-Event-ID"] = "0000000000000000:3" }))
    local ev = s:next()
    while ev and ev.event ~= "gap" do ev = s:next() end
    assert.equal("epoch_changed", ev.json.reason)
    assert.equal(1, ev.json.from_seq)
    assert.equal(5, ev.json.to_seq) -- history_size 20 keeps 6..25
    assert.equal(6, s:updates(1)[1].json.seq)
    s:close()
  end)

  it("sends a comment line as heartbeat", function()
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. conv("hb") .. "/events"))
    local ev = s:next(3)
    while ev and not ev.comment do ev = s:next(3) end
    assert.is_table(ev)
    assert.equal(":", ev.comment)
    s:close()
  end)

  it("shares one flush among subscribers with the same categories", function()
    local id = conv("many")
    local streams = {}
    for i = 1, 20 do streams[i] = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events")) end
    for i = 1, 5 do gw_.publish(gw, { conversation_id = id, category = "info", text = tostring(i) }) end
    for _, s in ipairs(streams) do
      local evs = s:updates(5)
      assert.equal(5, #evs)
      assert.equal(5, evs[5].json.seq)
      s:close()
    end
  end)
end)

describe("flush interval", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 400, batch_size = 10 }) end)
  teardown(function() gw_.stop(gw) end)

  it("holds a lone update until the flush interval, then delivers it", function()
    local id = conv("slowflush")
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events"))
    s:next() -- retry hint
    local t0 = socket.gettime()
    gw_.publish(gw, { conversation_id = id, category = "info", text = "x" })
    local early = s:updates(1, 0.1)
    assert.equal(0, #early)
    local evs = s:updates(1, 5)
    assert.equal(1, #evs)
    assert.is_true(socket.gettime() - t0 >= 0.35)
    s:close()
  end)
end)

describe("slow consumers", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 10, output_cap_bytes = 65536 }) end)
  teardown(function() gw_.stop(gw) end)

  it("disconnects a subscriber that stops reading, and keeps serving others", function()
    local id = conv("slow")
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events"))
    local text = string.rep("z", 4000)
    for _ = 1, 20 do
      local items = {}
      for i = 1, 100 do items[i] = { conversation_id = id, category = "info", text = text } end
      gw_.request(gw, "POST", "/api/v1/status/bulk", items)
    end
    -- 8 MB were sent to a client that read none of it: it must be cut off
    local got, err = 0, nil
    while true do
      local ev
      ev, err = s:next(5)
      if not ev then break end
      if ev.event == "status_update" then got = got + 1 end
    end
    assert.equal("closed", err)
    assert.is_true(got < 2000)
    assert.matches("event=slow_consumer transport=sse", gw_.log_text(gw))
    local st = gw_.request(gw, "GET", "/healthz")
    assert.equal(200, st)
  end)
end)

describe("SSE and the HTTP idle timeout", function()
  -- a stream's client sends nothing after its request: the keep-alive idle
  -- timeout of plain HTTP connections must not close it
  local gw
  setup(function() gw = gw_.start({ http_idle_timeout_s = 1, sse_heartbeat_s = 1, flush_interval_ms = 20 }) end)
  teardown(function() gw_.stop(gw) end)

  it("keeps a stream open past http_idle_timeout_s and delivers on it", function()
    local id = conv("idle")
    local s = assert(gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events"))
    socket.sleep(2.5)
    gw_.publish(gw, { conversation_id = id, category = "info", text = "still here" })
    local evs = s:updates(1)
    assert.equal("still here", evs[1].json.text)
    s:close()
  end)
end)

describe("SSE over several conversations", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 20, history_size = 3, sse_max_conversations = 3 }) end)
  teardown(function() gw_.stop(gw) end)

  local function pub(id, text, cat)
    local st, b = gw_.publish(gw, { conversation_id = id, category = cat or "info", text = text })
    assert.equal(202, st)
    return b
  end

  it("refuses a stream it cannot serve, naming what to fix", function()
    local cases = {
      { "/api/v1/events", 400, "invalid_parameter" },
      { "/api/v1/events?conversations=", 400, "invalid_parameter" },
      { "/api/v1/events?conversations=ok,bad%20id", 400, "invalid_conversation_id" },
      { "/api/v1/events?conversations=a,b,c,d", 400, "too_many_conversations" },
      { "/api/v1/events?conversations=a&categories=nope", 400, "invalid_categories" },
    }
    for _, c in ipairs(cases) do
      local s, status, body = gw_.sse(gw, c[1])
      assert.is_nil(s, c[1])
      assert.equal(c[2], status, c[1])
      assert.equal(c[3], cjson.decode(body).error.code, c[1])
    end
    local s, status, body = gw_.sse(gw, "/api/v1/events?conversations=a", { ["Last-Event-ID"] = "a:1" })
    assert.is_nil(s)
    assert.equal(400, status)
    assert.equal("invalid_last_event_id", cjson.decode(body).error.code)
    -- a name given twice is one conversation
    s = assert(gw_.sse(gw, "/api/v1/events?conversations=twice,twice"))
    s:next() -- retry
    local open = s:next()
    assert.equal("stream", open.event)
    assert.equal(1, #open.json.conversations)
    s:close()
  end)

  it("gives every event the positions of all its conversations, in its categories, and resumes each with a gap where history was trimmed", function()
    local a, b = conv("ma"), conv("mb")
    local pa = pub(a, "a1")
    gw_.sleep(0.1) -- flushed: the stream starts after it
    local s = assert(gw_.sse(gw, "/api/v1/events?conversations=" .. a .. "," .. b .. "&categories=info,error"))
    s:next() -- retry
    local open = s:next()
    assert.equal("stream", open.event)
    assert.equal(a .. "=" .. pa.epoch .. ":1," .. b .. "=" .. open.json.conversations[2].epoch .. ":0", open.id)
    pub(b, "b1")
    local evs = s:updates(1)
    pub(a, "skipped", "tool")
    pub(a, "a3", "error")
    local more = s:updates(1)
    assert.equal("b1", evs[1].json.text)
    assert.equal("a3", more[1].json.text)
    local eb = open.json.conversations[2].epoch
    assert.equal(a .. "=" .. pa.epoch .. ":3," .. b .. "=" .. eb .. ":1", more[1].id)
    s:close()
    -- meanwhile: one more for b, and five for a (history holds 3)
    pub(b, "b2")
    for i = 4, 8 do pub(a, "a" .. i) end
    gw_.sleep(0.2) -- flushed: history holds a6-a8 only
    s = assert(gw_.sse(gw, "/api/v1/events?conversations=" .. a .. "," .. b, { ["Last-Event-ID"] = more[1].id }))
    -- every seq once: received, or named by a gap; in order per conversation
    local seen, gaps, done = { [a] = {}, [b] = {} }, {}, {}
    while not (done[a] and done[b]) do
      local ev = assert(s:next())
      if ev.event == "status_update" then
        local list = seen[ev.json.conversation_id]
        list[#list + 1] = ev.json.seq
        if ev.json.text == "a8" or ev.json.text == "b2" then done[ev.json.conversation_id] = true end
      elseif ev.event == "gap" then
        gaps[#gaps + 1] = ev.json
      end
    end
    assert.same({ 2 }, seen[b])
    local covered = {}
    for _, g in ipairs(gaps) do
      assert.equal(a, g.conversation_id)
      assert.equal("history_trimmed", g.reason)
      for q = g.from_seq, g.to_seq do covered[#covered + 1] = q end
    end
    for i, q in ipairs(seen[a]) do
      if i > 1 then assert.is_true(q > seen[a][i - 1]) end
      covered[#covered + 1] = q
    end
    table.sort(covered)
    assert.same({ 4, 5, 6, 7, 8 }, covered)
    assert.equal(1, #gaps)
    assert.same({ 6, 7, 8 }, seen[a])
    s:close()
  end)
end)

-- Producer API against the real daemon: publish, bulk, history, listing,
-- idempotency, and every bad input answered with the right error.
local gw_ = require("gateway")
local cjson = gw_.json

describe("producer API", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 20 }) end)
  teardown(function() gw_.stop(gw) end)

  local function conv(name) return name .. "-" .. tostring(math.random(1, 1e9)) end

  describe("POST /api/v1/status", function()
    it("answers 202 with the conversation, its epoch and a seq that starts at 1", function()
      local id = conv("pub")
      local st, body = gw_.publish(gw, { conversation_id = id, category = "tool", text = "Executing search_code" })
      assert.equal(202, st)
      assert.equal(id, body.conversation_id)
      assert.equal(1, body.seq)
      assert.matches("^%x+$", body.epoch)
      st, body = gw_.publish(gw, { conversation_id = id, category = "info", text = "two" })
      assert.equal(2, body.seq)
    end)

    it("puts an update without conversation_id on the system conversation", function()
      local st, body = gw_.publish(gw, { category = "info", text = "maintenance at 5" })
      assert.equal(202, st)
      assert.equal("system", body.conversation_id)
      local st2, body2 = gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":null,"category":"info","text":"x"}')
      assert.equal(202, st2)
      assert.equal("system", body2.conversation_id)
      assert.equal(body.seq + 1, body2.seq)
    end)

    it("returns the first seq for a retried idempotency_key and stores it once", function()
      local id = conv("idem")
      local u = { conversation_id = id, category = "tool", text = "once", idempotency_key = "req-1" }
      local _, a = gw_.publish(gw, u)
      local st, b = gw_.publish(gw, u)
      assert.equal(202, st)
      assert.equal(a.seq, b.seq)
      assert.is_true(b.duplicate)
      local _, other = gw_.publish(gw, { conversation_id = id, category = "tool", text = "new", idempotency_key = "req-2" })
      assert.equal(a.seq + 1, other.seq)
      local _, h = gw_.request(gw, "GET", "/api/v1/conversations/" .. id .. "/history")
      assert.equal(2, #h.updates)
    end)
  end)

  describe("POST /api/v1/status/bulk", function()
    it("takes a JSON array and answers per item, in input order", function()
      local id = conv("bulk")
      local st, body = gw_.request(gw, "POST", "/api/v1/status/bulk", {
        { conversation_id = id, category = "tool", text = "a" },
        { conversation_id = id, category = "nope", text = "b" },
        { conversation_id = id, category = "info", text = "c" },
      })
      assert.equal(202, st)
      assert.equal(2, body.accepted)
      assert.equal(3, #body.results)
      assert.equal(1, body.results[1].seq)
      assert.equal("invalid_category", body.results[2].error.code)
      assert.equal(2, body.results[3].seq)
    end)

    it("takes NDJSON, one object a line, reporting a bad line in its slot", function()
      local id = conv("nd")
      local lines = cjson.encode({ conversation_id = id, category = "tool", text = "1" }) .. "\n"
        .. "{not json\n\n"
        .. cjson.encode({ conversation_id = id, category = "tool", text = "2" }) .. "\n"
      local st, body = gw_.request(gw, "POST", "/api/v1/status/bulk", lines,
        { ["Content-Type"] = "application/x-ndjson" })
      assert.equal(202, st)
      assert.equal(2, body.accepted)
      assert.equal(1, body.results[1].seq)
      assert.equal("invalid_json", body.results[2].error.code)
      assert.matches("line 2", body.results[2].error.message)
      assert.equal(2, body.results[3].seq)
    end)

    it("refuses more items than max_bulk_items with 413 and publishes none", function()
      local id = conv("toomany")
      local items = {}
      for i = 1, 1001 do items[i] = { conversation_id = id, category = "info", text = tostring(i) } end
      local st, body = gw_.request(gw, "POST", "/api/v1/status/bulk", items)
      assert.equal(413, st)
      assert.equal("too_many_items", body.error.code)
      assert.equal(404, (gw_.request(gw, "GET", "/api/v1/conversations/" .. id .. "/history")))
    end)

    it("publishes nothing from an array that is malformed anywhere, and answers per item for wrong items", function()
      local id = conv("badarray")
      local good = cjson.encode({ conversation_id = id, category = "info", text = "ok" })
      for _, body in ipairs({
        "[" .. good .. "," .. good .. ",{\"category\":",                     -- cut short
        "[" .. good .. ',{"category":"info","text":"x","metadata":{"a":1,"a":2}}]', -- duplicate key
        "[" .. good .. "] trailing",
      }) do
        local st, b = gw_.request(gw, "POST", "/api/v1/status/bulk", body)
        assert.equal(400, st)
        assert.equal("invalid_json", b.error.code)
      end
      assert.equal(404, (gw_.request(gw, "GET", "/api/v1/conversations/" .. id .. "/history")))
      local st, b = gw_.request(gw, "POST", "/api/v1/status/bulk", "[" .. good .. ', 7, "x", ' .. good .. "]")
      assert.equal(202, st)
      assert.equal(2, b.accepted)
      assert.equal("invalid_body", b.results[2].error.code)
      assert.equal("invalid_body", b.results[3].error.code)
      assert.equal(2, b.results[4].seq)
    end)

    it("refuses a body that is not an array, and an empty one", function()
      local st, body = gw_.request(gw, "POST", "/api/v1/status/bulk", '{"category":"info"}')
      assert.equal(400, st); assert.equal("invalid_body", body.error.code)
      st, body = gw_.request(gw, "POST", "/api/v1/status/bulk", "[]")
      assert.equal(400, st); assert.equal("empty_bulk", body.error.code)
    end)
  end)

  describe("history and listing", function()
    it("returns updates after since, oldest first, limited and filtered by category", function()
      local id = conv("hist")
      for i = 1, 6 do
        gw_.publish(gw, { conversation_id = id, category = (i % 2 == 0) and "error" or "tool", text = "u" .. i })
      end
      local st, h = gw_.request(gw, "GET", "/api/v1/conversations/" .. id .. "/history?since=2&limit=3")
      assert.equal(200, st)
      assert.equal(id, h.conversation_id)
      assert.matches("^%x+$", h.epoch)
      assert.same({ 3, 4, 5 }, { h.updates[1].seq, h.updates[2].seq, h.updates[3].seq })
      assert.equal("u3", h.updates[1].text)
      local _, e = gw_.request(gw, "GET", "/api/v1/conversations/" .. id .. "/history?categories=error")
      assert.equal(3, #e.updates)
      for _, u in ipairs(e.updates) do assert.equal("error", u.category) end
    end)

    it("keeps only history_size updates per conversation", function()
      local id = conv("ring")
      local items = {}
      for i = 1, 130 do items[i] = { conversation_id = id, category = "info", text = tostring(i) } end
      gw_.request(gw, "POST", "/api/v1/status/bulk", items)
      local _, h = gw_.request(gw, "GET", "/api/v1/conversations/" .. id .. "/history?limit=1000")
      assert.equal(100, #h.updates)
      assert.equal(31, h.updates[1].seq)
      assert.equal(130, h.updates[100].seq)
    end)

    it("answers 404 for an unknown conversation and 400 for bad parameters", function()
      local st, b = gw_.request(gw, "GET", "/api/v1/conversations/never-seen/history")
      assert.equal(404, st); assert.equal("conversation_not_found", b.error.code)
      local id = conv("params")
      gw_.publish(gw, { conversation_id = id, category = "info", text = "x" })
      st, b = gw_.request(gw, "GET", "/api/v1/conversations/" .. id .. "/history?since=-1")
      assert.equal(400, st); assert.equal("invalid_parameter", b.error.code)
      st, b = gw_.request(gw, "GET", "/api/v1/conversations/" .. id .. "/history?categories=tool,bogus")
      assert.equal(400, st); assert.equal("invalid_categories", b.error.code)
    end)

    it("lists active conversations with counts, subscribers and last activity", function()
      local id = conv("list")
      gw_.publish(gw, { conversation_id = id, category = "info", text = "x" })
      local stream = gw_.sse(gw, "/api/v1/conversations/" .. id .. "/events")
      local st, l = gw_.request(gw, "GET", "/api/v1/conversations")
      assert.equal(200, st)
      local found
      for _, c in ipairs(l.conversations) do if c.conversation_id == id then found = c end end
      assert.is_table(found)
      assert.equal(1, found.last_seq)
      assert.equal(1, found.subscribers)
      assert.matches("Z$", found.last_activity)
      assert.equal(found, l.conversations[1]) -- most recently active first
      stream:close()
    end)
  end)

  describe("bad input", function()
    local function snapshot()
      local _, l = gw_.request(gw, "GET", "/api/v1/conversations?limit=100000")
      local total = 0
      for _, c in ipairs(l.conversations) do total = total + c.last_seq end
      return l.count, total
    end

    local cases = {
      { "malformed JSON", '{"category": "info", "text": ', 400, "invalid_json" },
      { "bad UTF-8", '{"category":"info","text":"\xc3\x28"}', 400, "invalid_utf8" },
      { "a JSON array", '[1]', 400, "invalid_body" },
      { "an empty body", '', 400, "invalid_json" },
      { "a wrong category", '{"category":"nope","text":"x"}', 400, "invalid_category" },
      { "a numeric text", '{"category":"info","text":5}', 400, "invalid_text" },
      { "an oversized text", cjson.encode({ category = "info", text = string.rep("x", 5000) }), 400, "text_too_long" },
      { "a bad conversation id", '{"conversation_id":"a/b","category":"info","text":"x"}', 400, "invalid_conversation_id" },
      { "string metadata", '{"category":"info","text":"x","metadata":"m"}', 400, "invalid_metadata" },
      { "an unknown builder", '{"category":"info","builder":"nope","args":{}}', 400, "unknown_builder" },
      { "duplicate keys", '{"category":"info","category":"tool","text":"x"}', 400, "invalid_json" },
    }
    for _, case in ipairs(cases) do
      it("answers " .. case[3] .. " " .. case[4] .. " for " .. case[1], function()
        local before_n, before_seq = snapshot()
        local st, body, h = gw_.request(gw, "POST", "/api/v1/status", case[2])
        assert.equal(case[3], st)
        assert.equal(case[4], body.error.code)
        assert.is_string(body.error.message)
        assert.matches("application/json", h["content-type"])
        local after_n, after_seq = snapshot()
        assert.equal(before_n, after_n)
        assert.equal(before_seq, after_seq)
      end)
    end

    it("answers 415 for a body that is not declared JSON", function()
      local st, body = gw_.request(gw, "POST", "/api/v1/status", '{"category":"info","text":"x"}',
        { ["Content-Type"] = "text/plain" })
      assert.equal(415, st); assert.equal("unsupported_media_type", body.error.code)
    end)

    it("answers 413 for a body over max_body_bytes, before reading it all", function()
      local c = gw_.connect(gw)
      c:send_raw("POST /api/v1/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n")
      local st, h, body = c:read_response()
      assert.equal(413, st)
      assert.equal("body_too_large", cjson.decode(body).error.code)
      assert.equal("close", h.connection)
      c:close()
    end)

    it("answers 413 readably while the client is still sending the body (no reset)", function()
      local c = gw_.connect(gw)
      local chunk = string.rep("x", 65536)
      c.sock:settimeout(5)
      c:send_raw("POST /api/v1/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " ..
        4000000 .. "\r\n\r\n")
      for _ = 1, 18 do assert(c.sock:send(chunk)) end -- over max_body_bytes (1 MiB)
      local st, h, b = c:read_response()
      assert.equal(413, st, tostring(h))
      assert.equal("body_too_large", cjson.decode(b).error.code)
      -- the gateway goes on reading (and dropping) what the client still
      -- sends for a moment: a socket closed with unread input answers it
      -- with a reset, which can discard the 413 before the client reads it
      for _ = 1, 8 do
        local ok, err = c.sock:send(chunk)
        assert.is_truthy(ok, "send after the 413: " .. tostring(err))
        gw_.sleep(0.05)
      end
      c:close()
    end)

    it("answers 431 for headers over max_header_bytes", function()
      local st, body = gw_.request(gw, "GET", "/healthz", nil, { ["X-Big"] = string.rep("h", 20000) })
      assert.equal(431, st); assert.equal("headers_too_large", body.error.code)
    end)

    it("answers 400 for a request that is not HTTP", function()
      local c = gw_.connect(gw)
      c:send_raw("HELLO THERE\r\n\r\n")
      local st, _, body = c:read_response()
      assert.equal(400, st)
      assert.equal("bad_request", cjson.decode(body).error.code)
      c:close()
    end)

    it("answers 404 for unknown paths and 405 for wrong methods", function()
      local st, body = gw_.request(gw, "GET", "/nope")
      assert.equal(404, st); assert.equal("not_found", body.error.code)
      local h
      st, body, h = gw_.request(gw, "GET", "/api/v1/status")
      assert.equal(405, st); assert.equal("POST", h.allow)
    end)

    it("keeps serving after all of it", function()
      local st = gw_.request(gw, "GET", "/healthz")
      assert.equal(200, st)
    end)
  end)

  describe("HTTP/1.1 connections", function()
    it("answers pipelined requests in order on one keep-alive connection", function()
      local id = conv("pipe")
      local c = gw_.connect(gw)
      local req = ""
      for i = 1, 5 do
        req = req .. gw_.build_request("POST", "/api/v1/status",
          cjson.encode({ conversation_id = id, category = "info", text = tostring(i) }))
      end
      c:send_raw(req .. gw_.build_request("GET", "/healthz"))
      for i = 1, 5 do
        local st, _, body = c:read_response()
        assert.equal(202, st)
        assert.equal(i, cjson.decode(body).seq)
      end
      local st = c:read_response()
      assert.equal(200, st)
      c:close()
    end)

    it("answers health and readiness", function()
      local st, b = gw_.request(gw, "GET", "/healthz")
      assert.equal(200, st); assert.equal("ok", b.status)
      st, b = gw_.request(gw, "GET", "/readyz")
      assert.equal(200, st); assert.equal("ready", b.status)
    end)
  end)
end)

-- Hostile input that once took the gateway down: a chunked trailer, and
-- plugins that print, finalize, expand, leak, ping-pong or are handed bad
-- arguments by a subscriber. Each case ends by checking that the gateway
-- still answers and still delivers.
local gw_ = require("gateway")
local ws_ = require("rawws")
local socket = require("socket")

local tmpdir = gw_.tmpdir
local function write(dir, name, src) gw_.write_file(dir .. "/" .. name, src) end

-- The gateway answers a publish and serves history within a few seconds.
local function assert_alive(gw, conv)
  conv = conv or ("alive-" .. math.random(1, 1e9))
  local st, body = gw_.publish(gw, { conversation_id = conv, category = "info", text = "still here" })
  assert.equal(202, st)
  assert.is_number(body.seq)
  return conv
end

-- Wall-clock seconds fn takes.
local function timed(fn)
  local t0 = socket.gettime()
  local a, b, c, d = fn()
  return socket.gettime() - t0, a, b, c, d
end

local function plugin_counters(gw, name)
  local _, a = gw_.request(gw, "GET", "/admin/plugins")
  for _, p in ipairs(a.plugins) do
    if p.name == name then return p end
  end
end

describe("the HTTP reader", function()
  local gw
  setup(function() gw = gw_.start({}) end)
  teardown(function() gw_.stop(gw) end)

  it("ignores trailer fields of a chunked body instead of crashing", function()
    local c = gw_.connect(gw)
    c:send_raw("POST /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" ..
      "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: v\r\nX-Other: w\r\n\r\n")
    local st, h, body = c:read_response()
    assert.equal(400, st, body)
    -- a trailer never replaces a header the handler reads
    local json = '{"conversation_id":"tr","category":"info","text":"x"}'
    c:send_raw("POST /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" ..
      "Transfer-Encoding: chunked\r\n\r\n" ..
      string.format("%x\r\n", #json) .. json .. "\r\n" ..
      "0\r\nContent-Type: text/plain\r\n\r\n")
    st, h, body = c:read_response()
    c:close()
    assert.equal(202, st, body)
    assert_alive(gw)
  end)
end)

describe("a plugin that attacks its host", function()
  local gw, dir
  setup(function()
    dir = tmpdir()
    write(dir, "printer.lua", [[
      local P = { priority = 1 }
      function P.filter(u)
        if u.text:sub(1, 5) == "print" then print("update", u.text, 42, true, nil, u.text:rep(25)) end
      end
      return P ]])
    write(dir, "finalizer.lua", [[
      local P = { priority = 2 }
      function P.filter(u)
        if u.text == "finalize" then
          local ok, err = pcall(setmetatable, {}, { __gc = function() while true do end end })
          u.metadata = { refused = not ok and err or "accepted" }
          return u
        end
        if u.text == "finalize-then-throw" then
          setmetatable({}, { __gc = function() while true do end end })
          error("thrown after registering a finalizer")
        end
      end
      return P ]])
    write(dir, "expander.lua", [[
      local P = { priority = 3 }
      local big = string.rep("x", 1024 * 1024)
      function P.filter(u)
        if u.text == "expand" then
          local t = {}
          for i = 1, 24 do t = { t, t } end
          u.metadata = { t = t }
          return u
        end
        if u.text == "expand-encode" then
          local t = {}
          for i = 1, 24 do t = { t, t } end
          local ok, err = pcall(statusgw.json.encode, t)
          u.metadata = { caught = ok }
          return u
        end
        if u.text == "refs" then
          local t = {}
          for i = 1, 40 do t[i] = big end
          u.metadata = { t = t }
          return u
        end
        if u.text == "encode-over-cap" then
          local t = {}
          for i = 1, 12 do t[i] = big end
          statusgw.json.encode(t)
        end
      end
      return P ]])
    write(dir, "ping.lua", [[
      local P = { priority = 10 }
      function P.filter(u)
        if u.text == "ping" or u.text == "pong" then
          statusgw.emit({ conversation_id = u.conversation_id, category = "info", text = "pong" })
        end
      end
      return P ]])
    write(dir, "pong.lua", [[
      local P = { priority = 11 }
      function P.filter(u)
        if u.text == "pong" then
          statusgw.emit({ conversation_id = u.conversation_id, category = "info", text = "pong" })
        end
      end
      return P ]])
    write(dir, "slow.lua", [[
      local P = { priority = 20 }
      P.subscriber_filters = { slow = function(u, args) return (u.metadata.duration_ms or 0) >= args.min_ms end }
      function P.filter(u)
        if u.text == "tag me" then u.metadata = { tagged = true } return u end
      end
      return P ]])
    gw = gw_.start({ plugins_dir = dir, flush_interval_ms = 20, plugin_memory_bytes = 16 * 1024 * 1024 })
  end)
  teardown(function() gw_.stop(gw) end)

  it("prints values of any size without corrupting memory", function()
    for _, n in ipairs({ 10, 100, 1000, 4000 }) do
      local st = gw_.publish(gw, { conversation_id = "pr", category = "info", text = "print" .. string.rep("p", n - 5 > 0 and n - 5 or 0) })
      assert.equal(202, st)
    end
    assert.matches("event=plugin_print plugin=printer", gw_.log_text(gw))
    assert_alive(gw)
  end)

  it("cannot register a __gc finalizer", function()
    local st, r = gw_.publish(gw, { conversation_id = "fin", category = "info", text = "finalize" })
    assert.equal(202, st)
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/fin/history")
    assert.matches("__gc finalizers are not available", h.updates[1].metadata.refused)
    local elapsed = timed(function()
      for _ = 1, 3 do
        assert.equal(202, (gw_.publish(gw, { conversation_id = "fin", category = "info", text = "finalize-then-throw" })))
      end
    end)
    assert.is_true(elapsed < 5, "took " .. elapsed .. " s")
    assert_alive(gw)
    -- and the reload that closes the old states does not hang either
    local rst = gw_.request(gw, "POST", "/admin/reload")
    assert.equal(200, rst)
  end)

  it("refuses a value that expands past the memory cap while encoding it, not after", function()
    local elapsed, st = timed(function()
      return gw_.publish(gw, { conversation_id = "exp", category = "info", text = "expand" })
    end)
    assert.equal(202, st)
    assert.is_true(elapsed < 2, "took " .. elapsed .. " s")
    local p = plugin_counters(gw, "expander")
    assert.matches("exceeded", p.last_error) -- the memory cap or the time budget, whichever comes first
    -- inside json.encode the call is over its budget: its pcall cannot carry on
    st = gw_.publish(gw, { conversation_id = "exp", category = "info", text = "expand-encode" })
    assert.equal(202, st)
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/exp/history")
    for _, u in ipairs(h.updates) do assert.is_nil(u.metadata and u.metadata.caught) end
    st = gw_.publish(gw, { conversation_id = "exp", category = "info", text = "refs" })
    assert.equal(202, st)
    st = gw_.publish(gw, { conversation_id = "exp", category = "info", text = "encode-over-cap" })
    assert.equal(202, st)
    -- the updates went on unfiltered (a failed filter costs only its call)
    _, h = gw_.request(gw, "GET", "/api/v1/conversations/exp/history")
    assert.equal(4, #h.updates)
    assert_alive(gw)
  end)

  it("stops two plugins that emit to each other at the hop limit, and keeps serving", function()
    local s = assert(gw_.sse(gw, "/api/v1/conversations/pp/events"))
    local st = gw_.publish(gw, { conversation_id = "pp", category = "info", text = "ping" })
    assert.equal(202, st)
    local t0 = socket.gettime()
    -- the gateway answers other clients while the emitted updates run out
    assert_alive(gw)
    gw_.sleep(0.5)
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/pp/history")
    assert.is_true(#h.updates >= 2 and #h.updates <= 12, "history holds " .. #h.updates)
    assert.is_true(socket.gettime() - t0 < 5)
    assert.matches("event=emit_refused plugin=p[io]ng reason=hop_limit", gw_.log_text(gw))
    s:close()
  end)

  it("rejects a subscriber's filter args that make the filter throw, and never disables the plugin", function()
    local ws = assert(ws_.open(gw))
    for i = 1, 8 do
      ws:send_json({ tostring(i), tostring(i), "status:sfa" .. i, "phx_join", { filter = { name = "slow", args = { min_ms = "x" } } } })
      local m = ws:read_msg()
      assert.equal("error", m[5].status)
      assert.equal("invalid_filter", m[5].response.reason)
      assert.matches("fails with these args", m[5].response.message)
    end
    -- the plugin's ingest filter still runs
    gw_.publish(gw, { conversation_id = "sfa", category = "info", text = "tag me" })
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/sfa/history")
    assert.is_true(h.updates[1].metadata.tagged)
    assert.equal("active", plugin_counters(gw, "slow").state)
    ws:close()
  end)

  it("costs a subscriber whose filter throws at delivery only that subscriber", function()
    local ws = assert(ws_.open(gw))
    -- args fit the trial update, but a later update's metadata makes the filter throw
    ws:send_json({ "1", "1", "status:sfb", "phx_join", { categories = { "*" }, filter = { name = "slow", args = { min_ms = 10 } } } })
    assert.equal("ok", ws:read_msg()[5].status)
    for _ = 1, 8 do
      gw_.publish(gw, { conversation_id = "sfb", category = "info", text = "odd", metadata = { duration_ms = "not a number" } })
    end
    gw_.publish(gw, { conversation_id = "sfb", category = "info", text = "tag me" })
    gw_.publish(gw, { conversation_id = "sfb", category = "tool", text = "slow one", metadata = { duration_ms = 50 } })
    -- what the filter could not judge follows the plugin's failure_policy (pass)
    local texts = {}
    for _ = 1, 10 do
      local m, err = ws:read_msg()
      assert.is_table(m, tostring(err) .. gw_.log_text(gw):sub(-1500))
      texts[#texts + 1] = m[5].text
      if m[5].text == "slow one" then break end
    end
    assert.equal("slow one", texts[#texts])
    assert.equal("odd", texts[1])
    assert.equal("active", plugin_counters(gw, "slow").state)
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/sfb/history")
    local tagged = false
    for _, u in ipairs(h.updates) do if u.text == "tag me" then tagged = u.metadata.tagged end end
    assert.is_true(tagged)
    ws:close()
  end)
end)

describe("the network edge", function()
  it("answers 408 to a request whose header trickles in past http_header_timeout_s, however steady the trickle", function()
    local gw = gw_.start({ http_header_timeout_s = 1, http_idle_timeout_s = 60 })
    local c = gw_.connect(gw)
    c:send_raw("POST /api/v1/status HTTP/1.1\r\n")
    local t0 = socket.gettime()
    local status
    c.sock:settimeout(0.3)
    for _ = 1, 20 do -- a byte every 0.3 s: the idle timer alone would never fire
      local ok = c.sock:send("X")
      local line = c.sock:receive("*l")
      if line then status = tonumber(line:match("^HTTP/1%.1 (%d+)")); break end
      if not ok then break end
    end
    local elapsed = socket.gettime() - t0
    c:close()
    assert.equal(408, status)
    assert.is_true(elapsed < 2.5, "took " .. elapsed .. " s")
    -- a body that trickles is held to http_body_timeout_s the same way
    assert_alive(gw)
    gw_.stop(gw)
  end)

  it("keeps an idle keep-alive connection open after a slow request that did arrive in time", function()
    local gw = gw_.start({ http_header_timeout_s = 2, http_idle_timeout_s = 60 })
    local c = gw_.connect(gw)
    c:send_raw("GET /healthz HTTP/1.1\r\n")
    gw_.sleep(0.5)
    c:send_raw("Host: x\r\n\r\n")
    assert.equal(200, (c:read_response()))
    gw_.sleep(2.5) -- past what was left of the header deadline
    c:send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(200, (c:read_response()))
    c:close()
    gw_.stop(gw)
  end)

  it("limits connections per address by default", function()
    local gw = gw_.start({})
    local conns, refused = {}, nil
    for i = 1, 1030 do
      local c = socket.tcp()
      c:settimeout(5)
      assert(c:connect("127.0.0.1", gw.port))
      conns[i] = c
    end
    -- the gateway answers a connection over the limit and closes it
    conns[1030]:settimeout(5)
    local line = conns[1030]:receive("*l")
    refused = line and tonumber(line:match("^HTTP/1%.1 (%d+)"))
    for _, c in ipairs(conns) do c:close() end
    assert.equal(429, refused)
    assert.matches("reason=max_connections_per_ip limit=1024", gw_.log_text(gw))
    gw_.stop(gw)
  end)

  it("never lets subscribers take producers' conversation slots or evict history", function()
    local gw = gw_.start({ max_conversations = 3, flush_interval_ms = 10 })
    for _, id in ipairs({ "p1", "p2", "p3" }) do
      assert.equal(202, (gw_.publish(gw, { conversation_id = id, category = "info", text = id })))
    end
    local ws = assert(ws_.open(gw))
    for i = 1, 3 do -- joins of conversations nobody published to: a cap of their own
      ws:send_json({ tostring(i), tostring(i), "status:watched-" .. i, "phx_join", { categories = { "*" } } })
      assert.equal("ok", ws:read_msg()[5].status)
    end
    ws:send_json({ "4", "4", "status:watched-4", "phx_join", { categories = { "*" } } })
    local over = ws:read_msg()[5]
    assert.equal("error", over.status) -- the subscriber is refused, never a producer
    assert.equal("too_many_conversations", over.response.reason)
    for _, id in ipairs({ "p1", "p2", "p3" }) do -- no history was evicted by a join
      assert.equal(200, (gw_.request(gw, "GET", "/api/v1/conversations/" .. id .. "/history")))
    end
    -- a producer's new conversation evicts an idle one with history, as before
    assert.equal(202, (gw_.publish(gw, { conversation_id = "p4", category = "info", text = "p4" })))
    -- and publishing to a watched conversation delivers to its watcher
    assert.equal(202, (gw_.publish(gw, { conversation_id = "watched-2", category = "info", text = "hello" })))
    local m = ws:read_msg()
    assert.equal("hello", m[5].text)
    ws:close()
    assert_alive(gw, "p4")
    gw_.stop(gw)
  end)
end)

describe("an open gateway and the web pages on its machine", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 20 }) end)
  teardown(function() gw_.stop(gw) end)

  it("refuses WebSockets, event streams and API calls from another site's page", function()
    local ws, st = ws_.open(gw, nil, { Origin = "https://evil.example" })
    assert.is_nil(ws)
    assert.equal(403, st)
    local _, st2, body = gw_.sse(gw, "/api/v1/conversations/o1/events", { Origin = "https://evil.example" })
    assert.equal(403, st2)
    assert.matches("origin_not_allowed", body)
    assert.equal(403, (gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"o1","category":"info","text":"x"}',
      { Origin = "https://evil.example" })))
    -- a page served from this machine may
    local ok = assert(ws_.open(gw, nil, { Origin = "http://localhost:3000" }))
    ok:close()
    assert.equal(202, (gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"o1","category":"info","text":"x"}',
      { Origin = "http://127.0.0.1:8080" })))
  end)

  it("never runs an admin action for a cross-site request", function()
    local st, b = gw_.request(gw, "POST", "/admin/reload", nil, { Origin = "https://evil.example" })
    assert.equal(403, st)
    st, b = gw_.request(gw, "POST", "/admin/reload", nil, { ["Sec-Fetch-Site"] = "cross-site" })
    assert.equal(403, st)
    assert.equal("cross_site_request", b.error.code)
    assert.equal(200, (gw_.request(gw, "POST", "/admin/reload", nil, { ["Sec-Fetch-Site"] = "same-origin" })))
    assert.is_nil(gw_.log_text(gw):find("trigger=admin loaded=0 failed=0 removed=0\n.*trigger=admin.*trigger=admin"))
  end)

  it("answers only loopback host names, so DNS rebinding finds nothing", function()
    local c = gw_.connect(gw)
    c:send_raw("GET /api/v1/conversations HTTP/1.1\r\nHost: rebind.evil.example:" .. gw.port .. "\r\n\r\n")
    local st, _, body = c:read_response()
    c:close()
    assert.equal(403, st)
    assert.matches("host_not_allowed", body)
    for _, host in ipairs({ "localhost:" .. gw.port, "127.0.0.1", "[::1]:" .. gw.port, "app.localhost" }) do
      c = gw_.connect(gw)
      c:send_raw("GET /healthz HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n")
      assert.equal(200, (c:read_response()), host)
      c:send_raw("GET /api/v1/conversations HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n")
      assert.equal(200, (c:read_response()), host)
      c:close()
    end
  end)
end)

describe("behind a proxy", function()
  it("believes X-Forwarded-For only from trusted_proxies, for admin access, keyless publishing and the log", function()
    -- without trusted_proxies the header is ignored: loopback stays loopback
    local plain = gw_.start({})
    assert.equal(200, (gw_.request(plain, "GET", "/admin/plugins", nil, { ["X-Forwarded-For"] = "203.0.113.7" })))
    gw_.stop(plain)
    local gw = gw_.start({ access_log = true, security = {
      jwt_secret = "spec-jwt-secret-0123456789abcdef0123456789",
      trusted_proxies = { "127.0.0.1" }, metrics_key_required = true, admin_key = "admin_0123456789abcdef" } })
    local remote = { ["X-Forwarded-For"] = "198.51.100.1, 203.0.113.7" }
    -- a keyless publish from another host: refused unless the config opts in
    local st, b = gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"px","category":"info","text":"x"}', remote)
    assert.equal(401, st)
    assert.matches("allow_keyless_remote_publish", b.error.message)
    -- from this machine it is fine
    assert.equal(202, (gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"px","category":"info","text":"x"}')))
    -- /metrics needs a key now
    assert.equal(401, (gw_.request(gw, "GET", "/metrics")))
    assert.equal(200, (gw_.request(gw, "GET", "/metrics", nil, { Authorization = "Bearer admin_0123456789abcdef" })))
    gw_.sleep(0.1)
    assert.matches("event=access peer=203%.0%.113%.7 method=POST", gw_.log_text(gw))
    gw_.stop(gw)
    local gw2 = gw_.start({ security = { trusted_proxies = { "127.0.0.1" } } })
    st = gw_.request(gw2, "GET", "/admin/plugins", nil, remote)
    assert.equal(403, st) -- "loopback only" is not whatever the proxy forwards
    assert.equal(200, (gw_.request(gw2, "GET", "/admin/plugins")))
    gw_.stop(gw2)
  end)
end)

describe("WebSocket limits", function()
  local gw
  setup(function() gw = gw_.start({ ws_max_message_bytes = 65536, flush_interval_ms = 20 }) end)
  teardown(function() gw_.stop(gw) end)

  it("refuses a frame whose header announces more than the limit at once, with 1009", function()
    local ws = assert(ws_.open(gw))
    ws:send(ws_.frame("", { length = 4 * 1024 * 1024 }):sub(1, 14)) -- the header alone
    local f, tcp_closed = ws:expect_close(3)
    assert.is_table(f, "no close frame before the bytes arrived")
    assert.equal(1009, f.code)
    ws:close()
  end)

  it("closes with 1009, not a TCP reset, when 4 MiB arrive in 64 KiB fragments", function()
    local ws = assert(ws_.open(gw))
    local chunk = string.rep("x", 65536)
    local sent_ok = true
    ws.sock:settimeout(5)
    for i = 1, 64 do
      local ok = ws.sock:send(ws_.frame(chunk, { fin = i == 64, opcode = i == 1 and 1 or 0 }))
      if not ok then sent_ok = false; break end
    end
    local f, err = ws:expect_close(5)
    assert.is_table(f, "read failed: " .. tostring(err) .. " (a reset discards the close frame)")
    assert.equal(1009, f.code)
    -- the gateway keeps reading (and dropping) what is still in flight
    -- until the client closes: a socket closed with unread input would
    -- answer it with a reset
    for _ = 1, 8 do
      local ok, e = ws.sock:send(ws_.frame(chunk, { opcode = 1 }))
      assert.is_truthy(ok, "send after the close frame: " .. tostring(e))
      gw_.sleep(0.05)
    end
    ws:close()
  end)

  it("refuses a control frame over 125 bytes with 1002, whatever length it announces (found by the ws fuzzer: a length that wrapped hung the gateway)", function()
    for _, n in ipairs({ 200, math.maxinteger, -16 }) do -- -16: 2^64 - 16 as the 64-bit length field
      local ws = assert(ws_.open(gw))
      local hdr
      if n == 200 then hdr = string.char(0x89, 0x80 | 126) .. string.pack(">I2", n)
      else hdr = string.char(0x89, 0x80 | 127) .. string.pack(">i8", n) end
      ws:send(hdr .. "\18\52\86\120ab")
      local f = ws:expect_close(3)
      assert.is_table(f, "no close frame for length " .. n)
      assert.equal(1002, f.code)
      ws:close()
    end
    assert_alive(gw)
  end)

  it("answers a close frame with a one-byte payload with 1002", function()
    local ws = assert(ws_.open(gw))
    ws:send(ws_.frame("x", { opcode = 8 }))
    local f = ws:expect_close(3)
    assert.equal(1002, f.code)
    ws:close()
  end)

  it("refuses an upgrade over HTTP/1.0 or with a key that is not 16 bytes", function()
    local c = gw_.connect(gw)
    c:send_raw("GET /socket/websocket?vsn=2.0.0 HTTP/1.0\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" ..
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    local line = c.sock:receive("*l")
    c:close()
    assert.matches("^HTTP/1%.1 400", line)
    local ws, st = ws_.open(gw, nil, { ["Sec-WebSocket-Key"] = "AAAAAAAAAAAAAAAAAAAAAAAA" }) -- 18 bytes
    assert.is_nil(ws)
    assert.equal(400, st)
  end)

  it("counts re-sent joins against the subscription change limit", function()
    local ws = assert(ws_.open(gw))
    local limited
    for i = 1, 40 do
      ws:send_json({ tostring(i), tostring(i), "status:rejoin", "phx_join", { categories = { "*" }, filter = { text = { contains = "x" .. i } } } })
      local m
      repeat m = ws:read_msg() until m[4] == "phx_reply"
      if m[5].status == "error" then limited = m[5].response; break end
    end
    assert.is_table(limited)
    assert.equal("rate_limit_exceeded", limited.reason)
    ws:close()
  end)
end)

describe("error paths", function()
  local gw
  setup(function() gw = gw_.start({ security = { api_keys = { { key = "pk_read_0123456789abcdef", rate = 1, burst = 1 } } } }) end)
  teardown(function() gw_.stop(gw) end)

  it("answers an invalid conversation id in a path 400, not a made-up 503", function()
    for _, p in ipairs({ "/api/v1/conversations/%FF/events", "/api/v1/conversations/%FF/history", "/api/v1/conversations/a%20b/events" }) do
      local st, b = gw_.request(gw, "GET", p, nil, { Authorization = "Bearer pk_read_0123456789abcdef" })
      assert.equal(400, st, p)
      assert.equal("invalid_conversation_id", b.error.code)
    end
    local st, b = gw_.request(gw, "GET", "/nope/%FF%FE")
    assert.equal(404, st)
    assert.equal("not_found", b.error.code)
  end)

  it("reads history from a since far past the newest seq without crashing (found by the http fuzzer)", function()
    local auth = { Authorization = "Bearer pk_read_0123456789abcdef" }
    gw_.sleep(1.1) -- the key's token is back
    assert.equal(202, (gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"far","category":"info","text":"x"}', auth)))
    for _, since in ipairs({ "5", "2147483648", "4294967301", "18446744073709551615" }) do
      local st, b = gw_.request(gw, "GET", "/api/v1/conversations/far/history?since=" .. since, nil, auth)
      assert.equal(200, st, since)
      assert.equal(0, #b.updates)
    end
    -- past 64 bits (and cut short by a buffer before): refused, not wrapped
    local st, b = gw_.request(gw, "GET", "/api/v1/conversations/far/history?since=" .. string.rep("9", 40), nil, auth)
    assert.equal(400, st)
    assert.equal("invalid_parameter", b.error.code)
    -- the Phoenix history event takes the same path
    local ws = assert(ws_.open(gw, "/socket/websocket?vsn=2.0.0"))
    ws:send_json({ "1", "1", "status:far", "phx_join", { categories = { "*" } } })
    local joined = ws:read_msg()
    assert.equal("ok", joined[5].status)
    ws:send_text('["1","2","status:far","history",{"since":9223372036854775807}]') -- exact, by hand
    local m = ws:read_msg()
    assert.equal("ok", m[5].status)
    assert.equal(0, #m[5].response.updates)
    ws:close()
  end)

  it("spends no publish tokens on reading history with an API key", function()
    local auth = { Authorization = "Bearer pk_read_0123456789abcdef" }
    gw_.sleep(1.1) -- the key's token is back (one a second, bursts of one)
    assert.equal(202, (gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"rd","category":"info","text":"x"}', auth)))
    gw_.sleep(1.1) -- the token is back
    for _ = 1, 5 do assert.equal(200, (gw_.request(gw, "GET", "/api/v1/conversations/rd/history", nil, auth))) end
    assert.equal(202, (gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"rd","category":"info","text":"y"}', auth)))
    local st, b, h = gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"rd","category":"info","text":"z"}', auth)
    assert.equal(429, st)
    assert.equal("1", h["retry-after"])
  end)
end)

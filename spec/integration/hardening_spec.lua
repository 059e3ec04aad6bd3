-- Hostile input that once took the gateway down: a chunked trailer, and
-- plugins that print, finalize, expand, leak, ping-pong or are handed bad
-- arguments by a subscriber. Each case ends by checking that the gateway
-- still answers and still delivers.
local gw_ = require("gateway")
local ws_ = require("rawws")
local socket = require("socket")

local function tmpdir()
  local p = io.popen("mktemp -d"); local d = p:read("l"); p:close(); return d
end
local function write(dir, name, src)
  local f = assert(io.open(dir .. "/" .. name, "w")); f:write(src); f:close()
end

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
    c:send_raw("POST /api/v1/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
      "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: v\r\nX-Other: w\r\n\r\n")
    local st, h, body = c:read_response()
    assert.equal(400, st, body)
    -- a trailer never replaces a header the handler reads
    local json = '{"conversation_id":"tr","category":"info","text":"x"}'
    c:send_raw("POST /api/v1/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
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

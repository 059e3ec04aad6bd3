-- RFC 6455 strictness with hand-made frames over a raw socket, and the
-- Phoenix V2 framing as seen on the wire.
local gw_ = require("gateway")
local ws_ = require("rawws")
local cjson = gw_.json

describe("WebSocket handshake", function()
  local gw
  setup(function() gw = gw_.start({ ws_max_message_bytes = 1024 }) end)
  teardown(function() gw_.stop(gw) end)

  it("upgrades with the RFC 6455 accept key", function()
    local ws, h = ws_.open(gw)
    assert.is_table(ws)
    assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", h["sec-websocket-accept"])
    assert.equal("websocket", h.upgrade:lower())
    ws:close()
  end)

  it("answers phoenix to the phoenix.js bearer-token subprotocol offer", function()
    local ws, h = ws_.open(gw, nil, { ["Sec-WebSocket-Protocol"] = "phoenix, base64url.bearer.phx.dG9rZW4" })
    assert.is_table(ws)
    assert.equal("phoenix", h["sec-websocket-protocol"])
    ws:close()
  end)

  it("refuses a plain GET with 426, a wrong version with 426 and a bad key with 400", function()
    local st = gw_.request(gw, "GET", "/socket/websocket?vsn=2.0.0")
    assert.equal(426, st)
    local ws, status = ws_.open(gw, nil, { ["Sec-WebSocket-Version"] = "8" })
    assert.is_nil(ws); assert.equal(426, status)
    ws, status = ws_.open(gw, nil, { ["Sec-WebSocket-Key"] = "short" })
    assert.is_nil(ws); assert.equal(400, status)
    ws, status = ws_.open(gw, "/socket/websocket?vsn=1.0.0")
    assert.is_nil(ws); assert.equal(400, status)
  end)
end)

describe("WebSocket frames", function()
  local gw
  setup(function() gw = gw_.start({ ws_max_message_bytes = 1024, flush_interval_ms = 20 }) end)
  teardown(function() gw_.stop(gw) end)

  local function closes_with(code, bytes)
    local ws = assert(ws_.open(gw))
    ws:send(bytes)
    local f, tcp_closed = ws:expect_close()
    assert.is_table(f, "expected a close frame")
    assert.equal(code, f.code)
    assert.is_true(tcp_closed)
    ws:close()
    return f
  end

  it("closes 1002 for an unmasked client frame", function()
    closes_with(1002, ws_.frame("[null,\"1\",\"phoenix\",\"heartbeat\",{}]", { mask = false }))
  end)

  it("closes 1002 for reserved bits", function()
    closes_with(1002, ws_.frame("x", { rsv = 4 }))
  end)

  it("closes 1002 for a reserved opcode", function()
    closes_with(1002, ws_.frame("x", { opcode = 0x3 }))
    closes_with(1002, ws_.frame("x", { opcode = 0xB }))
  end)

  it("closes 1002 for a control frame over 125 bytes", function()
    closes_with(1002, ws_.frame(string.rep("p", 126), { opcode = 0x9 }))
  end)

  it("closes 1002 for a fragmented control frame", function()
    closes_with(1002, ws_.frame("ping", { opcode = 0x9, fin = false }))
  end)

  it("closes 1002 for a continuation with nothing to continue", function()
    closes_with(1002, ws_.frame("x", { opcode = 0x0 }))
  end)

  it("closes 1002 for a new message inside a fragmented one", function()
    closes_with(1002, ws_.frame("[null,", { fin = false }) .. ws_.frame("x", { opcode = 1 }))
  end)

  it("closes 1002 for a close frame with an invalid code", function()
    closes_with(1002, ws_.frame(string.pack(">I2", 999), { opcode = 0x8 }))
  end)

  it("closes 1007 for invalid UTF-8 in a text message", function()
    closes_with(1007, ws_.frame("\xff\xfe\xfd"))
  end)

  it("closes 1007 for invalid UTF-8 split across fragments", function()
    closes_with(1007, ws_.frame("ok \xe2\x82", { fin = false }) .. ws_.frame("\x28", { opcode = 0 }))
  end)

  it("closes 1009 for a message over the configured maximum", function()
    closes_with(1009, ws_.frame(string.rep("a", 2000)))
  end)

  it("closes 1003 for a binary message and for a message that is not Phoenix V2", function()
    closes_with(1003, ws_.frame("\1\2\3", { opcode = 0x2 }))
    closes_with(1003, ws_.frame('{"topic":"phoenix"}'))
  end)

  it("answers a ping with a pong carrying the same payload", function()
    local ws = assert(ws_.open(gw))
    ws:send(ws_.frame("are you there", { opcode = 0x9 }))
    local f = ws:read()
    assert.equal(0xA, f.opcode)
    assert.equal("are you there", f.payload)
    ws:close()
  end)

  it("echoes a client close and then closes TCP", function()
    local ws = assert(ws_.open(gw))
    ws:send(ws_.frame(string.pack(">I2", 1000) .. "bye", { opcode = 0x8 }))
    local f, tcp_closed = ws:expect_close()
    assert.equal(1000, f.code)
    assert.is_true(tcp_closed)
    ws:close()
  end)

  it("reassembles a fragmented text message", function()
    local ws = assert(ws_.open(gw))
    ws:send(ws_.frame('[null,"7","phoe', { fin = false }) .. ws_.frame('nix","heartbeat",{}]', { opcode = 0 }))
    local m = ws:read_msg()
    assert.same({ cjson.null, "7", "phoenix", "phx_reply", { status = "ok", response = {} } }, m)
    ws:close()
  end)

  it("keeps serving HTTP after all of it", function()
    assert.equal(200, (gw_.request(gw, "GET", "/healthz")))
  end)
end)

describe("Phoenix V2 on the wire", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 20, ws_idle_timeout_s = 1 }) end)
  teardown(function() gw_.stop(gw) end)

  it("replies to heartbeats and joins, and pushes in the broadcast form", function()
    local ws = assert(ws_.open(gw))
    ws:send_json({ cjson.null, "1", "phoenix", "heartbeat", {} })
    local m = ws:read_msg()
    assert.equal("phx_reply", m[4]); assert.equal("1", m[2]); assert.equal("ok", m[5].status)
    ws:send_json({ "3", "3", "status:wire", "phx_join", { categories = { "*" } } })
    m = ws:read_msg()
    assert.same({ "3", "3", "status:wire", "phx_reply" }, { m[1], m[2], m[3], m[4] })
    assert.equal("ok", m[5].status)
    gw_.publish(gw, { conversation_id = "wire", category = "info", text = "hi" })
    m = ws:read_msg()
    assert.equal(cjson.null, m[1]); assert.equal(cjson.null, m[2])
    assert.equal("status:wire", m[3]); assert.equal("status_update", m[4])
    assert.equal("hi", m[5].text)
    ws:close()
  end)

  it("replies ok to phx_leave, then sends phx_close, and stops pushing", function()
    local ws = assert(ws_.open(gw))
    ws:send_json({ "5", "5", "status:leave", "phx_join", { categories = { "*" } } })
    ws:read_msg()
    ws:send_json({ "5", "6", "status:leave", "phx_leave", {} })
    local reply = ws:read_msg()
    assert.same({ "5", "6", "phx_reply" }, { reply[1], reply[2], reply[4] })
    local close = ws:read_msg()
    assert.same({ "5", "status:leave", "phx_close" }, { close[1], close[3], close[4] })
    gw_.publish(gw, { conversation_id = "leave", category = "info", text = "after leave" })
    local m, err = ws:read_msg(0.3)
    assert.is_nil(m); assert.equal("timeout", err)
    ws:close()
  end)

  it("answers unmatched topics like Phoenix", function()
    local ws = assert(ws_.open(gw))
    ws:send_json({ "1", "1", "room:lobby", "phx_join", {} })
    local m = ws:read_msg()
    assert.equal("error", m[5].status)
    assert.equal("unmatched topic", m[5].response.reason)
    ws:send_json({ "1", "2", "status:never-joined", "get_subscriptions", {} })
    m = ws:read_msg()
    assert.equal("unmatched topic", m[5].response.reason)
    ws:close()
  end)

  it("closes a socket that sends nothing for the idle timeout", function()
    local ws = assert(ws_.open(gw))
    local f, tcp_closed = ws:expect_close(5)
    assert.equal(1000, f.code)
    assert.equal("idle timeout", f.reason)
    assert.is_true(tcp_closed)
    ws:close()
  end)

  it("counts any client frame, a ping included, as activity", function()
    local ws = assert(ws_.open(gw))
    for _ = 1, 4 do
      gw_.sleep(0.5)
      ws:send(ws_.frame("", { opcode = 0x9 }))
      local f = ws:read()
      assert.equal(0xA, f.opcode)
    end
    ws:close()
  end)
end)

describe("WebSocket slow consumers and shutdown", function()
  it("closes 4008 past the output cap and serves the rest", function()
    local gw = gw_.start({ flush_interval_ms = 10, output_cap_bytes = 65536 })
    local ws = assert(ws_.open(gw))
    ws:send_json({ "1", "1", "status:slowws", "phx_join", { categories = { "*" } } })
    ws:read_msg()
    local text = string.rep("z", 4000)
    for _ = 1, 20 do
      local items = {}
      for i = 1, 100 do items[i] = { conversation_id = "slowws", category = "info", text = text } end
      gw_.request(gw, "POST", "/api/v1/status/bulk", items)
    end
    local f = ws:expect_close(10)
    assert.equal(4008, f.code)
    assert.equal("slow consumer", f.reason)
    assert.matches("event=slow_consumer transport=websocket", gw_.log_text(gw))
    ws:close()
    gw_.stop(gw)
  end)

  it("flushes queued updates and closes 1001 on SIGTERM", function()
    local gw = gw_.start({ flush_interval_ms = 60000, batch_size = 100 })
    local ws = assert(ws_.open(gw))
    ws:send_json({ "1", "1", "status:bye", "phx_join", { categories = { "*" } } })
    ws:read_msg()
    for i = 1, 3 do gw_.publish(gw, { conversation_id = "bye", category = "info", text = tostring(i) }) end
    gw_.signal(gw, "TERM")
    local seqs = {}
    while true do
      local m, err, f = ws:read_msg()
      if not m then
        assert.equal("close", err)
        assert.equal(1001, f.code)
        break
      end
      seqs[#seqs + 1] = m[5].seq
    end
    assert.same({ 1, 2, 3 }, seqs)
    assert.equal(0, gw_.wait_exit(gw, 10))
    gw.stopped = true
    ws:close()
  end)
end)

describe("WebSocket messages near the limit", function()
  it("takes a message larger than 64 KiB when ws_max_message_bytes allows it, split across reads", function()
    local gw = gw_.start({ ws_max_message_bytes = 200000 })
    local ws = assert(ws_.open(gw))
    local frame = ws_.frame('[null,"9","phoenix","heartbeat",{"pad":"' .. string.rep("x", 100000) .. '"}]')
    ws:send(frame:sub(1, 70000))
    gw_.sleep(0.1)
    ws:send(frame:sub(70001))
    local m = ws:read_msg()
    assert.equal("9", m[2])
    assert.equal("ok", m[5].status)
    ws:close()
    gw_.stop(gw)
  end)
end)

-- The durable store (store = "sqlite"): real SQLite files, real restarts,
-- real SIGKILLs. What was acknowledged survives with its seq and epoch;
-- resuming clients see no gap; idempotency keys outlive a restart; bad
-- databases are refused at start with exit status 2.
package.path = "spec/helpers/?.lua;" .. package.path
local gw_ = require("gateway")
local rawws = require("rawws")
local cjson = require("cjson")
local socket = require("socket")

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo rc=$?")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return out:gsub("rc=%d+%s*$", ""), rc
end

local function publish(gw, conv, text, extra)
  local u = { conversation_id = conv, category = "info", text = text }
  for k, v in pairs(extra or {}) do u[k] = v end
  local status, body = gw_.publish(gw, u)
  assert.are.equal(202, status, cjson.encode(body or {}))
  return body
end

-- Publishes from + 1 .. from + 10 in one write, each to conv_of(i) with text
-- "n<i>": whether it was sent.
local function send_ten(c, from, conv_of)
  local reqs = {}
  for i = from + 1, from + 10 do
    reqs[#reqs + 1] = gw_.build_request("POST", "/api/v1/status",
      cjson.encode({ conversation_id = conv_of(i), category = "info", text = "n" .. i }))
  end
  return c.sock:send(table.concat(reqs)) ~= nil
end

local function history(gw, conv, query)
  return gw_.request(gw, "GET", "/api/v1/conversations/" .. conv .. "/history" .. (query or ""))
end

describe("the sqlite store", function()
  local dir, db, gw
  before_each(function()
    dir = gw_.tmpdir()
    db = dir .. "/var/statusgw.db" -- var/ does not exist yet: the gateway makes it
  end)
  after_each(function()
    if gw then pcall(gw_.stop, gw) end
    gw = nil
    os.execute("rm -rf " .. dir)
  end)

  local function start(extra)
    local opts = { store = "sqlite", store_path = db, flush_interval_ms = 20 }
    for k, v in pairs(extra or {}) do opts[k] = v end
    gw = gw_.start(opts)
    return gw
  end

  it("keeps history, epoch and seq across a restart, and serves history before anything new is published", function()
    start()
    local first = publish(gw, "keep", "one")
    publish(gw, "keep", "two")
    gw_.stop(gw)
    start()
    local status, h = history(gw, "keep")
    assert.are.equal(200, status)
    assert.are.equal(first.epoch, h.epoch)
    assert.are.equal(2, h.last_seq)
    assert.are.same({ "one", "two" }, { h.updates[1].text, h.updates[2].text })
    local third = publish(gw, "keep", "three")
    assert.are.equal(3, third.seq)
    assert.are.equal(first.epoch, third.epoch)
    -- a conversation nobody published to is still unknown
    assert.are.equal(404, (history(gw, "never")))
  end)

  it("trims to history_size and reports the oldest kept, across a restart", function()
    start({ history_size = 3 })
    for i = 1, 5 do publish(gw, "trim", "u" .. i) end
    gw_.stop(gw)
    start({ history_size = 3 })
    local _, h = history(gw, "trim")
    assert.are.equal(3, #h.updates)
    assert.are.equal(3, h.updates[1].seq)
    assert.are.equal(3, h.oldest_seq)
  end)

  it("deduplicates a retry after a restart by its idempotency key", function()
    start()
    local a = publish(gw, "idem", "once", { idempotency_key = "job-1" })
    gw_.stop(gw)
    start()
    local b = publish(gw, "idem", "once, again", { idempotency_key = "job-1" })
    assert.are.equal(a.seq, b.seq)
    assert.is_true(b.duplicate)
    local _, h = history(gw, "idem")
    assert.are.equal(1, #h.updates)
  end)

  it("resumes an event stream after a restart with the missed updates and no gap", function()
    start()
    local e = publish(gw, "sse-r", "one").epoch
    publish(gw, "sse-r", "two")
    publish(gw, "sse-r", "three")
    gw_.stop(gw)
    start()
    local stream = assert(gw_.sse(gw, "/api/v1/conversations/sse-r/events", { ["Last-Event-ID"] = e .. ":1" }))
    publish(gw, "sse-r", "four")
    local seen, gap = {}, false
    for _ = 1, 6 do
      local ev = stream:next(3)
      if not ev then break end
      if ev.event == "gap" then gap = true end
      if ev.event == "status_update" then seen[#seen + 1] = ev.json.text end
      if #seen == 3 then break end
    end
    stream:close()
    assert.is_false(gap)
    assert.are.same({ "two", "three", "four" }, seen)
  end)

  it("recovers a Phoenix join with epoch and last_seq after a restart", function()
    start()
    local e = publish(gw, "phx-r", "one").epoch
    publish(gw, "phx-r", "two")
    gw_.stop(gw)
    start()
    local ws = assert(rawws.open(gw))
    ws:send_json({ "1", "1", "status:phx-r", "phx_join", { categories = { "*" }, epoch = e, last_seq = 1 } })
    local reply = ws:read_msg(5)
    local push = ws:read_msg(5)
    ws:close()
    assert.are.equal("ok", reply[5].status)
    assert.is_true(reply[5].response.recovered)
    assert.are.equal(e, reply[5].response.epoch)
    assert.are.equal("two", push[5].text)
  end)

  it("loses nothing it acknowledged when killed with SIGKILL mid-stream (three times)", function()
    -- history keeps every update of a round, so each acknowledged one must be there
    local keep_all = { history_size = 1000 }
    start(keep_all)
    local acked = {}
    for round = 1, 3 do
      local conv = "kill-" .. round
      local c = gw_.connect(gw)
      c.sock:settimeout(2)
      -- a stream: up to 20 publishes in flight, sent 10 at a time as answers come
      local sent, n = 0, 0
      while sent < 300 or n < sent do
        if sent < 300 and sent - n <= 10 then
          if not send_ten(c, sent, function() return conv end) then break end
          sent = sent + 10
        end
        local status, _, body = c:read_response()
        if not status then break end
        if status == 202 then
          local r = cjson.decode(body)
          acked[#acked + 1] = { conv = conv, seq = math.tointeger(r.seq), epoch = r.epoch, text = "n" .. (n + 1) }
        end
        n = n + 1
        if n == 40 then gw_.signal(gw, "KILL") end
      end
      c:close()
      assert.truthy(gw_.wait_exit(gw, 5))
      gw.stopped = true
      start(keep_all)
    end
    assert.is_true(#acked >= 120, "acknowledged " .. #acked)
    -- each killed conversation goes on after its last stored seq, in its epoch
    local last = {}
    for _, a in ipairs(acked) do
      if not last[a.conv] or a.seq > last[a.conv].seq then last[a.conv] = a end
    end
    for conv, a in pairs(last) do
      local r = publish(gw, conv, "after the kill")
      assert.are.equal(a.epoch, r.epoch)
      assert.is_true(r.seq > a.seq, conv .. ": seq " .. r.seq .. " after " .. a.seq)
    end
    for _, a in ipairs(acked) do
      local status, h = history(gw, a.conv)
      assert.are.equal(200, status, a.conv)
      assert.are.equal(a.epoch, h.epoch)
      local found
      for _, u in ipairs(h.updates) do
        if u.seq == a.seq then found = u end
      end
      assert.truthy(found, a.conv .. " seq " .. a.seq .. " was acknowledged and is gone")
      assert.are.equal(a.text, found.text)
    end
  end)

  it("loses nothing it acknowledged when killed with SIGKILL while a log file is sealed and applied", function()
    -- the log is applied every two seconds: kills at 2.2, 3.1 and 4.4 s into a
    -- steady stream fall while one file is applied and the other takes copies
    local keep = { history_size = 1000 }
    start(keep)
    local acked, replayed = {}, 0
    for round, after in ipairs({ 2.2, 3.1, 4.4 }) do
      local function conv(i) return "apply-" .. round .. "-" .. (i % 500) end
      local c = gw_.connect(gw)
      c.sock:settimeout(2)
      local sent, n, t0, killed = 0, 0, socket.gettime(), false
      while true do
        if not killed and sent - n <= 10 then
          if not send_ten(c, sent, conv) then break end
          sent = sent + 10
        end
        local status, _, body = c:read_response()
        if not status then break end
        n = n + 1
        if status == 202 then
          local r = cjson.decode(body)
          acked[#acked + 1] = { conv = conv(n), seq = math.tointeger(r.seq), epoch = r.epoch, text = "n" .. n }
        end
        if not killed and socket.gettime() - t0 >= after then
          gw_.signal(gw, "KILL")
          killed = true
        end
      end
      c:close()
      assert.is_true(killed, "the stream ended before the kill")
      assert.truthy(gw_.wait_exit(gw, 5))
      gw.stopped = true
      start(keep)
      local _, replays = gw_.log_text(gw):gsub("event=store_log_replayed", "")
      replayed = replayed + replays
    end
    assert.is_true(#acked >= 1000, "acknowledged " .. #acked)
    assert.is_true(replayed >= 3, "replayed " .. replayed .. " log files")
    local by_conv = {}
    for _, a in ipairs(acked) do
      by_conv[a.conv] = by_conv[a.conv] or {}
      table.insert(by_conv[a.conv], a)
    end
    for cv, list in pairs(by_conv) do
      local status, h = history(gw, cv, "?limit=1000")
      assert.are.equal(200, status, cv)
      local have = {}
      for _, u in ipairs(h.updates) do have[u.seq] = u end
      for _, a in ipairs(list) do
        assert.are.equal(a.epoch, h.epoch)
        assert.truthy(have[a.seq], cv .. " seq " .. a.seq .. " was acknowledged and is gone (acked " .. #list .. ", last_seq " .. tostring(h.last_seq) .. ", held " .. #h.updates .. ", first " .. tostring(h.updates[1] and h.updates[1].seq) .. ")")
        assert.are.equal(a.text, have[a.seq].text)
      end
    end
  end)

  it("answers pipelined requests in order while publishes wait for their commit", function()
    start()
    local c = gw_.connect(gw)
    local function post(text) -- one publish; text nil: a body that is not JSON
      local body = text and cjson.encode({ conversation_id = "order", category = "info", text = text }) or "{nope"
      return gw_.build_request("POST", "/api/v1/status", body)
    end
    -- publishes, a refused one, a read that must see the publishes before
    -- it, a bulk, and a last publish that closes the connection
    c:send_raw(table.concat({
      post("a"), post(nil), post("b"),
      gw_.build_request("GET", "/api/v1/conversations/order/history"),
      post("c"),
      gw_.build_request("POST", "/api/v1/status/bulk", cjson.encode({
        { conversation_id = "order", category = "info", text = "d" },
        { conversation_id = "order", category = "info", text = "e" } })),
      gw_.build_request("POST", "/api/v1/status",
        cjson.encode({ conversation_id = "order", category = "info", text = "f" }), { Connection = "close" }),
      post("never read"),
    }))
    local got = {}
    while true do
      local status, h, body = c:read_response()
      if not status then break end
      got[#got + 1] = { status = status, body = cjson.decode(body), close = h.connection }
    end
    c:close()
    local statuses = {}
    for i, g in ipairs(got) do statuses[i] = g.status end
    assert.are.same({ 202, 400, 202, 200, 202, 202, 202 }, statuses)
    assert.are.equal(1, got[1].body.seq)
    assert.are.equal("invalid_json", got[2].body.error.code)
    assert.are.equal(2, got[3].body.seq)
    local texts = {}
    for _, u in ipairs(got[4].body.updates) do texts[#texts + 1] = u.text end
    assert.are.same({ "a", "b" }, texts)
    assert.are.equal(3, got[5].body.seq)
    assert.are.same({ 4, 5 }, { got[6].body.results[1].seq, got[6].body.results[2].seq })
    assert.are.equal(6, got[7].body.seq)
    assert.are.equal("close", got[7].close)
    -- what came after the closing request was never handled
    local status, h = history(gw, "order")
    assert.are.equal(200, status)
    assert.are.equal(6, #h.updates)
  end)

  it("keeps what a client that hung up on its pipelined publishes sent", function()
    start()
    local c = gw_.connect(gw)
    local reqs = {}
    for i = 1, 50 do
      reqs[#reqs + 1] = gw_.build_request("POST", "/api/v1/status",
        cjson.encode({ conversation_id = "gone", category = "info", text = "g" .. i }))
    end
    c:send_raw(table.concat(reqs))
    c:close() -- before any answer
    local h
    for _ = 1, 50 do
      local status
      status, h = history(gw, "gone")
      if status == 200 and #h.updates == 50 then break end
      socket.sleep(0.05)
    end
    assert.are.equal(50, #h.updates)
    assert.are.equal("g50", h.updates[50].text)
    assert.are.equal(202, (gw_.publish(gw, { conversation_id = "gone", category = "info", text = "after" })))
  end)

  it("forgets idle conversations past conversation_ttl_s, rows and all", function()
    start({ conversation_ttl_s = 1, cleanup_interval_s = 1 })
    publish(gw, "idle", "x")
    socket.sleep(2.6)
    gw_.stop(gw)
    start()
    assert.are.equal(404, (history(gw, "idle")))
  end)

  it("refuses at start, with exit status 2, a file that is no database, a newer schema and a folder it cannot use", function()
    local cfg = dir .. "/c.lua"
    local function try(path)
      gw_.write_file(cfg, string.format("return { store = 'sqlite', store_path = %q, plugins_dir = %q }", path, dir))
      return sh(gw_.bin .. " --config " .. cfg .. " --listen 127.0.0.1:" .. gw_.free_port())
    end
    gw_.write_file(dir .. "/junk.db", string.rep("this is not a database\n", 200))
    local out, rc = try(dir .. "/junk.db")
    assert.are.equal(2, rc, out)
    assert.matches("store_path '[^']*junk.db'", out)
    os.execute("sqlite3 " .. dir .. "/new.db 'PRAGMA user_version = 99' >/dev/null 2>&1 || " ..
      "lua5.4 -e 'os.exit(1)'")
    out, rc = try(dir .. "/new.db")
    assert.are.equal(2, rc, out)
    assert.matches("schema version 99, newer than this statusgw reads", out)
    out, rc = try("/proc/statusgw/x.db")
    assert.are.equal(2, rc, out)
    assert.matches("cannot make the folder", out)
  end)

  it("replays after a crash what only its log held, and drops a torn batch at the log's end", function()
    start()
    local first = publish(gw, "torn", "one")
    publish(gw, "torn", "two")
    publish(gw, "torn", "three")
    -- within the second before the log is applied: only the log has them
    gw_.signal(gw, "KILL")
    gw_.wait_exit(gw, 5)
    -- the batches, in the log's first file: each a header (magic, length,
    -- checksum, the file's cycle) and its records; zeros after them
    local log = io.open(db .. "-log", "r+b")
    local data = log:read("a")
    local off, cycle = 1, nil
    while data:sub(off, off + 3) == "SGL2" do
      local len, _, c = string.unpack("<I4I4I4", data, off + 4)
      cycle = cycle or c
      off = off + 16 + len
    end
    assert.truthy(cycle, "the log held no batch: the updates were applied already")
    assert.are.equal(string.rep("\0", 64), data:sub(off, off + 63))
    -- a batch torn by a crash mid-write, where the next batch goes: a
    -- header of this cycle and part of its records
    log:seek("set", off - 1)
    log:write("SGL2" .. string.pack("<I4I4I4", 255, 0x01020304, cycle) .. "partial")
    log:close()
    start()
    local _, h = history(gw, "torn")
    assert.are.equal(first.epoch, h.epoch)
    assert.are.same({ "one", "two", "three" }, { h.updates[1].text, h.updates[2].text, h.updates[3].text })
    assert.are.equal(3, h.last_seq)
    assert.truthy(gw_.log_text(gw):find("event=store_log_tail_dropped", 1, true))
    assert.truthy(gw_.log_text(gw):find("event=store_log_replayed", 1, true))
    assert.are.equal(4, publish(gw, "torn", "four").seq)
    gw_.stop(gw)
    -- applied at the stop: the log's files are empty, the database has them
    local out = sh("sqlite3 " .. db .. " 'SELECT last_seq FROM conversations WHERE id = \"torn\"'")
    assert.are.equal("4", out:match("%d+"))
    for _, name in ipairs({ "-log", "-log2" }) do
      local f = io.open(db .. name, "rb")
      assert.are.equal(0, f:seek("end"), name)
      f:close()
    end
  end)

  it("replays both of the log's files after a crash, the older cycle first, and nothing of a cycle before", function()
    os.execute("mkdir -p " .. dir .. "/var")
    local function sum(s) -- the log's checksum: four lanes of 8 bytes, then the rest a byte at a time
      local k = 0x9e3779b97f4a7c15
      local h, i = { k ~ #s, k + 1, k + 2, k + 3 }, 1
      while i + 31 <= #s do
        for l = 1, 4 do
          h[l] = (h[l] ~ string.unpack("<i8", s, i + 8 * (l - 1))) * 0x100000001b3
          h[l] = h[l] ~ (h[l] >> 29)
        end
        i = i + 32
      end
      local x = h[1] ~ (h[2] * 3) ~ (h[3] * 5) ~ (h[4] * 7)
      for j = i, #s do x = (x ~ s:byte(j)) * 0x100000001b3 end
      return (x ~ (x >> 32)) & 0xffffffff
    end
    local epoch = "fedcba9876543210"
    local function batch(cycle, from, to)
      local recs = {}
      for seq = from, to do
        local json = cjson.encode({ conversation_id = "twofiles", seq = seq, epoch = epoch, category = "info",
          text = "update " .. seq, timestamp = "2026-12-01T00:00:00.000Z", metadata = {} })
        recs[#recs + 1] = string.pack("<s1", "twofiles") .. epoch ..
          string.pack("<I8i8s1s4", seq, 1764547200000 + seq, "info", json)
      end
      local body = table.concat(recs)
      return "SGL2" .. string.pack("<I4I4I4", #body, sum(body), cycle) .. body
    end
    -- the second file holds the older cycle (sealed, not yet applied), the
    -- first the newer one, then zeros, then a batch the file held in a
    -- cycle before (applied then: never read again)
    local f = io.open(db .. "-log2", "wb")
    f:write(batch(7, 1, 2) .. batch(7, 3, 3))
    f:close()
    f = io.open(db .. "-log", "wb")
    f:write(batch(8, 4, 5) .. batch(5, 6, 9) .. string.rep("\0", 4096))
    f:close()
    start()
    local status, h = history(gw, "twofiles")
    assert.are.equal(200, status)
    assert.are.equal(epoch, h.epoch)
    assert.are.equal(5, h.last_seq)
    local texts = {}
    for _, u in ipairs(h.updates) do texts[#texts + 1] = u.text end
    assert.are.same({ "update 1", "update 2", "update 3", "update 4", "update 5" }, texts)
    assert.is_nil(gw_.log_text(gw):find("store_log_tail_dropped", 1, true))
    assert.are.equal(6, publish(gw, "twofiles", "new").seq)
    -- and the other way round: the older cycle in the first file
    gw_.stop(gw)
    f = io.open(db .. "-log", "wb")
    f:write(batch(20, 7, 8))
    f:close()
    f = io.open(db .. "-log2", "wb")
    f:write(batch(21, 9, 9))
    f:close()
    start()
    _, h = history(gw, "twofiles")
    assert.are.equal(9, h.last_seq)
    assert.are.same({ "update 8", "update 9" }, { h.updates[#h.updates - 1].text, h.updates[#h.updates].text })
    assert.are.equal("new", h.updates[#h.updates - 3].text)
  end)

  it("replays a log in the first format (SGL1) an older gateway left at a crash", function()
    os.execute("mkdir -p " .. dir .. "/var")
    local function sum_v1(s) -- that format's checksum
      local h, i = 0x9e3779b97f4a7c15 ~ #s, 1
      while i + 7 <= #s do
        h = (h ~ string.unpack("<i8", s, i)) * 0x100000001b3
        h = h ~ (h >> 29)
        i = i + 8
      end
      for j = i, #s do h = (h ~ s:byte(j)) * 0x100000001b3 end
      return (h ~ (h >> 32)) & 0xffffffff
    end
    local epoch, recs = "0123456789abcdef", {}
    for seq, text in ipairs({ "old one", "old two" }) do
      local json = cjson.encode({ conversation_id = "v1log", seq = seq, epoch = epoch, category = "info",
        text = text, timestamp = "2026-12-01T00:00:00.000Z", metadata = {} })
      recs[#recs + 1] = string.pack("<s1", "v1log") .. epoch ..
        string.pack("<I8i8s1s4", seq, 1764547200000 + seq, "info", json)
    end
    local body = table.concat(recs)
    local f = io.open(db .. "-log", "wb")
    f:write("SGL1" .. string.pack("<I4I4I4", #body, sum_v1(body), 0) .. body)
    f:close()
    start()
    local status, h = history(gw, "v1log")
    assert.are.equal(200, status)
    assert.are.equal(epoch, h.epoch)
    assert.are.same({ "old one", "old two" }, { h.updates[1].text, h.updates[2].text })
    assert.is_nil(gw_.log_text(gw):find("store_log_tail_dropped", 1, true))
    assert.are.equal(3, publish(gw, "v1log", "new").seq)
  end)

  it("migrates a version 1 database (a row per update) to version 2, history and seqs kept", function()
    os.execute("mkdir -p " .. dir .. "/var")
    local sql = [[
PRAGMA auto_vacuum = INCREMENTAL;
CREATE TABLE conversations (id TEXT PRIMARY KEY, epoch TEXT NOT NULL, last_seq INTEGER NOT NULL, last_activity_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX conversations_activity ON conversations(last_activity_ms);
CREATE TABLE updates (conv TEXT NOT NULL, seq INTEGER NOT NULL, category TEXT NOT NULL, ts_ms INTEGER NOT NULL, json BLOB NOT NULL, PRIMARY KEY (conv, seq)) WITHOUT ROWID;
CREATE TABLE idempotency (conv TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, expires_ms INTEGER NOT NULL, PRIMARY KEY (conv, key)) WITHOUT ROWID;
CREATE INDEX idempotency_expiry ON idempotency(expires_ms);
INSERT INTO conversations VALUES ('old', '0123456789abcdef', 1, strftime('%s','now') * 1000);
]]
    for seq = 1, 3 do
      sql = sql .. string.format("INSERT INTO updates VALUES ('old', %d, 'info', %d, '%s');\n", seq, 1700000000000 + seq,
        cjson.encode({ conversation_id = "old", seq = seq, category = "info", text = "v1 " .. seq, metadata = {},
          timestamp = "2023-11-14T22:13:2" .. seq .. ".000Z" }))
    end
    gw_.write_file(dir .. "/v1.sql", sql .. "PRAGMA user_version = 1;\n")
    local out, rc = sh("sqlite3 " .. db .. " < " .. dir .. "/v1.sql")
    assert.are.equal(0, rc, out)
    start()
    assert.truthy(gw_.log_text(gw):find("event=store_migrated", 1, true))
    local _, h = history(gw, "old")
    assert.are.equal("0123456789abcdef", h.epoch)
    assert.are.equal(3, h.last_seq)
    assert.are.same({ "v1 1", "v1 2", "v1 3" }, { h.updates[1].text, h.updates[2].text, h.updates[3].text })
    assert.are.equal(4, publish(gw, "old", "v2").seq)
    gw_.stop(gw)
    out = sh("sqlite3 " .. db .. " 'PRAGMA user_version; SELECT count(*) FROM sqlite_master WHERE name = \"updates\"'")
    assert.are.same({ "2", "0" }, { out:match("(%d+)%s+(%d+)") })
  end)

  it("refuses publishes with 503 while the disk takes no writes, loses nothing acknowledged, and recovers by itself", function()
    start()
    publish(gw, "full", "before")
    -- a file-size limit just past what the files hold now: the next
    -- commits fail as on a full disk (once the room the log made ahead, on
    -- blocks already allocated, is used up: 8 MB)
    sh(string.format("prlimit --pid %d --fsize=%d:", gw.pid, 64 * 1024)) -- the soft limit: raised again below
    local big = string.rep("x", 3000)
    local acked, refused, ready503 = {}, 0, false
    local c = gw_.connect(gw)
    c.sock:settimeout(1)
    for i = 1, 4000 do
      c:send_raw(gw_.build_request("POST", "/api/v1/status",
        cjson.encode({ conversation_id = "full", category = "info", text = big .. i })))
      local status, h, body = c:read_response()
      if status == 202 then acked[#acked + 1] = cjson.decode(body).seq
      elseif status == 503 then
        refused = refused + 1
        assert.are.equal("store_unavailable", cjson.decode(body).error.code)
        assert.truthy(h["retry-after"])
        if refused == 5 then break end
      elseif not status then -- an answer that waits for the failing commit
        break
      end
    end
    c:close()
    local rstatus, rbody = gw_.request(gw, "GET", "/readyz")
    ready503 = rstatus == 503 and rbody.status == "store_unavailable"
    assert.is_true(refused > 0 or ready503, "no refusal while the disk took no writes")
    assert.truthy(gw_.log_text(gw):find("event=store_write_failed", 1, true))
    -- the disk takes writes again: the gateway recovers by itself
    sh(string.format("prlimit --pid %d --fsize=unlimited:", gw.pid))
    local ok = false
    for _ = 1, 50 do
      local s2 = gw_.request(gw, "GET", "/readyz")
      if s2 == 200 then ok = true break end
      socket.sleep(0.1)
    end
    assert.is_true(ok, "not ready again")
    publish(gw, "full", "after")
    assert.truthy(gw_.log_text(gw):find("event=store_recovered", 1, true))
    gw_.stop(gw)
    start()
    -- every acknowledged update history still reaches (the newest 100) is there
    local _, h = history(gw, "full", "?limit=100")
    local have = {}
    for _, u in ipairs(h.updates) do have[u.seq] = true end
    assert.is_true(#acked > 0)
    for _, seq in ipairs(acked) do
      if seq > h.last_seq - 100 then assert.is_true(have[seq], "acknowledged seq " .. seq .. " is gone") end
    end
    assert.is_true(h.last_seq > acked[#acked])
    assert.are.equal("after", h.updates[#h.updates].text)
  end)

  it("keeps only cache_bytes of recent updates in memory, and reads the rest from the database", function()
    start({ cache_bytes = 65536 })
    local big = string.rep("y", 1000)
    for c = 1, 4 do
      local items = {}
      for i = 1, 100 do items[i] = { conversation_id = "cache-" .. c, category = "info", text = big .. i } end
      local status = gw_.request(gw, "POST", "/api/v1/status/bulk", items)
      assert.are.equal(202, status)
    end
    local _, _, _, m = gw_.request(gw, "GET", "/metrics")
    local cached = tonumber(m:match("statusgw_store_cache_bytes (%d+)"))
    assert.truthy(cached, m)
    assert.is_true(cached <= 65536, "cache holds " .. cached .. " bytes")
    -- 400 KB of updates: most are read back from the database, all of them right
    for c = 1, 4 do
      local status, h = history(gw, "cache-" .. c)
      assert.are.equal(200, status)
      assert.are.equal(100, #h.updates)
      for i, u in ipairs(h.updates) do
        assert.are.equal(i, u.seq)
        assert.are.equal(big .. i, u.text)
      end
    end
  end)

  it("works with store_sync full and off as with normal", function()
    for _, sync in ipairs({ "full", "off" }) do
      os.execute("rm -rf " .. dir .. "/var")
      start({ store_sync = sync })
      local a = publish(gw, "sync-" .. sync, "one")
      gw_.stop(gw)
      start({ store_sync = sync })
      local status, h = history(gw, "sync-" .. sync)
      assert.are.equal(200, status, sync)
      assert.are.equal(a.epoch, h.epoch)
      assert.are.equal("one", h.updates[1].text)
      gw_.stop(gw)
      gw = nil
    end
  end)
end)

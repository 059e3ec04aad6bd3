-- Plugins in the running daemon: builders on publish, live filters,
-- aggregators, subscriber filters, reload, and faults that never stop
-- delivery.
local gw_ = require("gateway")
local ws_ = require("rawws")
local cjson = gw_.json

local tmpdir = gw_.tmpdir
local function write(dir, name, src) gw_.write_file(dir .. "/" .. name, src) end
local function copy(dir, ...)
  for _, f in ipairs({ ... }) do os.execute(string.format("cp plugins/%s %s/", f, dir)) end
end

describe("shipped plugins in the daemon", function()
  local gw, dir
  setup(function()
    dir = tmpdir()
    copy(dir, "builders.lua", "redact.lua", "rate_limit.lua", "summary.lua")
    write(dir, "slow.lua", [[
      local P = {}
      P.subscriber_filters = { slow = function(u, args) return (u.metadata.duration_ms or 0) >= args.min_ms end }
      return P ]])
    gw = gw_.start({ plugins_dir = dir, flush_interval_ms = 20, log_level = "debug",
      plugins = { rate_limit = { enabled = true, rate = 0.001, burst = 3, categories = {} },
        summary = { enabled = true, interval_ms = 200 }, redact = { enabled = true } } })
  end)
  teardown(function() gw_.stop(gw) end)

  it("builds metadata on publish, with timestamp, and lets the producer's keys win except computed ones", function()
    local st, r = gw_.publish(gw, { conversation_id = "b1", category = "tool", text = "Running search",
      builder = "timing", args = { duration_ms = 1500 }, metadata = { duration_ms = 1, note = "mine" } })
    assert.equal(202, st)
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/b1/history")
    local md = h.updates[1].metadata
    assert.equal(1500, md.duration_ms)
    assert.equal("1.5s", md.duration_human)
    assert.equal("mine", md.note)
    assert.matches("Z$", md.timestamp)
    assert.equal(r.seq, h.updates[1].seq)
  end)

  it("uses a builder's new text", function()
    gw_.publish(gw, { conversation_id = "b2", category = "progress", text = "Indexing", builder = "progress", args = { current = 1, total = 4 } })
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/b2/history")
    assert.equal("Indexing (25%)", h.updates[1].text)
    assert.equal("1/4", h.updates[1].metadata.progress)
  end)

  it("answers 400 for an unknown builder", function()
    local st, b = gw_.publish(gw, { conversation_id = "b3", category = "tool", text = "x", builder = "nope" })
    assert.equal(400, st)
    assert.equal("unknown_builder", b.error.code)
  end)

  it("redacts secrets before they are stored or delivered", function()
    local s = assert(gw_.sse(gw, "/api/v1/conversations/r1/events"))
    gw_.publish(gw, { conversation_id = "r1", category = "tool", text = "curl -H 'Authorization: Bearer abc.def.ghi'", metadata = { password = "hunter2" } })
    local ev = s:updates(1)[1]
    assert.equal("curl -H 'Authorization: Bearer [REDACTED]'", ev.json.text)
    assert.equal("[REDACTED]", ev.json.metadata.password)
    s:close()
  end)

  it("refuses a publish over the rate limit with 429 and Retry-After, and counts it per plugin", function()
    local statuses, refused = {}, nil
    for i = 1, 5 do
      local st, b, h = gw_.publish(gw, { conversation_id = "rl", category = "planning", text = tostring(i) })
      statuses[i] = st
      if st == 429 then refused = { b = b, h = h } end
    end
    assert.same({ 202, 202, 202, 429, 429 }, statuses)
    assert.equal("rate_limited", refused.b.error.code)
    assert.matches("^%d+$", refused.h["retry-after"])
    assert.equal(tonumber(refused.h["retry-after"]), refused.b.error.retry_after)
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/rl/history")
    assert.equal(3, #h.updates)
    local _, _, _, metrics = gw_.request(gw, "GET", "/metrics")
    local n = tonumber(metrics:match('statusgw_plugin_updates_refused_total{plugin="rate_limit"} (%d+)'))
    assert.is_true(n >= 2)
    assert.matches('statusgw_plugin_updates_dropped_total{plugin="rate_limit"} 0', metrics)
  end)

  it("emits aggregator summaries on the conversation", function()
    local s = assert(gw_.sse(gw, "/api/v1/conversations/agg/events?categories=summary"))
    gw_.publish(gw, { conversation_id = "agg", category = "tool", text = "a", metadata = { tool = "t", duration_ms = 10 } })
    gw_.publish(gw, { conversation_id = "agg", category = "error", text = "bad" })
    local ev = s:updates(1, 5)[1]
    assert.equal("summary", ev.json.category)
    assert.equal("summary", ev.json.source)
    assert.equal(2, ev.json.metadata.total)
    assert.equal(1, ev.json.metadata.errors)
    s:close()
  end)

  it("runs a plugin subscriber filter named in a Phoenix join", function()
    local ws = assert(ws_.open(gw))
    ws:send_json({ "1", "1", "status:sf", "phx_join", { categories = { "*" }, filter = { name = "slow", args = { min_ms = 1000 } } } })
    local reply, err, f = ws:read_msg()
    assert.is_table(reply, tostring(err) .. " " .. tostring(f and f.code) .. " " .. tostring(f and f.reason) .. gw_.log_text(gw):sub(-800))
    assert.equal("ok", reply[5].status)
    gw_.publish(gw, { conversation_id = "sf", category = "tool", text = "fast", metadata = { duration_ms = 5 } })
    gw_.publish(gw, { conversation_id = "sf", category = "tool", text = "slow", metadata = { duration_ms = 5000 } })
    local m = ws:read_msg()
    assert.equal("slow", m[5].text)
    ws:send_json({ "2", "2", "status:sf2", "phx_join", { filter = { name = "nope" } } })
    m = ws:read_msg()
    assert.equal("error", m[5].status)
    assert.equal("invalid_filter", m[5].response.reason)
    ws:close()
  end)

  it("shows plugins and their counters on /admin/plugins", function()
    local st, a = gw_.request(gw, "GET", "/admin/plugins")
    assert.equal(200, st)
    local names = {}
    for _, p in ipairs(a.plugins) do names[p.name] = p end
    assert.is_table(names.builders); assert.is_table(names.redact)
    assert.is_true(names.redact.counters.calls > 0)
    assert.equal("active", names.redact.state)
    -- lowest priority first
    assert.equal("redact", a.plugins[1].name)
    assert.is_true(names.redact.counters.skipped > 0) -- filter_when: clean updates skip the call
  end)

  -- Publishes that run plugins wait for the end of the loop turn and go
  -- through the plugins together; answers must still come in order.
  it("answers pipelined publishes through plugins in order, refusals included", function()
    local c = gw_.connect(gw)
    local req = ""
    for i = 1, 5 do -- burst 3: the last two are over the rate limit
      local u = { conversation_id = "pipe-plug", category = "info", text = "n" .. i }
      if i == 2 then u.builder, u.args, u.category = "llm", { model = "m" }, "engine" end
      req = req .. gw_.build_request("POST", "/api/v1/status", cjson.encode(u))
    end
    c:send_raw(req .. gw_.build_request("GET", "/healthz"))
    local seqs = {}
    for i = 1, 5 do
      local st, h, body = c:read_response()
      local r = cjson.decode(body)
      if st == 429 then
        assert.equal("rate_limited", r.error.code)
        assert.matches("^%d+$", h["retry-after"])
        seqs[i] = r.error.code
      else
        assert.equal(202, st)
        seqs[i] = r.seq
      end
    end
    assert.same({ 1, 2, 3, 4, "rate_limited" }, seqs)
    assert.equal(200, (c:read_response()))
    c:close()
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/pipe-plug/history")
    assert.equal("m", h.updates[2].metadata.model)
  end)

  it("takes a bulk request through the plugins together, answering per item in input order", function()
    local items = {
      { conversation_id = "bulk-plug", category = "info", text = "1" },
      { conversation_id = "bulk-plug", category = "tool", text = "2", builder = "tool", args = { tool_name = "t" } },
      { conversation_id = "bulk-plug", category = "info", text = "3 sk-abcdefghijklmnop" },
      { conversation_id = "bulk-plug", category = "nope", text = "4" },
      { conversation_id = "bulk-plug", category = "info", text = "5" },
      { conversation_id = "bulk-plug", category = "info", text = "6" }, -- the fourth info: over burst 3
      { conversation_id = "bulk-plug", category = "tool", text = "7", builder = "nope" },
    }
    local st, r = gw_.request(gw, "POST", "/api/v1/status/bulk", items)
    assert.equal(202, st)
    assert.equal(4, r.accepted) -- the refused one is an error of its own, not accepted
    assert.equal(0, r.dropped)
    assert.equal(3, r.rejected)
    local res = r.results
    assert.same({ 1, 2, 3 }, { res[1].seq, res[2].seq, res[3].seq })
    assert.equal("invalid_category", res[4].error.code)
    assert.equal(4, res[5].seq)
    assert.equal("rate_limited", res[6].error.code)
    assert.is_true(res[6].error.retry_after >= 1)
    assert.equal("unknown_builder", res[7].error.code)
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/bulk-plug/history")
    assert.equal("t", h.updates[2].metadata.tool)
    assert.equal("3 [REDACTED]", h.updates[3].text)
  end)

  it("answers many connections' publishes of one loop turn, each on its own connection", function()
    local conns = {}
    for i = 1, 20 do
      conns[i] = gw_.connect(gw)
      conns[i]:send_raw(gw_.build_request("POST", "/api/v1/status",
        cjson.encode({ conversation_id = "many-" .. i, category = "tool", text = "bearer abc" .. i })))
    end
    for i = 1, 20 do
      local st, _, body = conns[i]:read_response()
      assert.equal(202, st)
      local r = cjson.decode(body)
      assert.equal("many-" .. i, r.conversation_id)
      assert.equal(1, r.seq)
      conns[i]:close()
    end
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/many-7/history")
    assert.equal("bearer [REDACTED]", h.updates[1].text)
  end)

  it("closes after the answer when a publish through plugins asks for Connection: close", function()
    local c = gw_.connect(gw)
    c:send_raw(gw_.build_request("POST", "/api/v1/status",
      cjson.encode({ conversation_id = "closing", category = "tool", builder = "tool", args = { tool_name = "t" } }),
      { Connection = "close" }))
    local st, h = c:read_response()
    assert.equal(202, st)
    assert.equal("close", h.connection)
    assert.is_nil((c:read_head())) -- then the gateway closes
    c:close()
  end)

  it("still publishes an update whose producer hung up before the answer, and keeps serving", function()
    for i = 1, 10 do
      local c = gw_.connect(gw)
      c:send_raw(gw_.build_request("POST", "/api/v1/status",
        cjson.encode({ conversation_id = "gone", category = "error", text = "e" .. i })))
      c:close()
    end
    local _, h
    for _ = 1, 50 do
      _, h = gw_.request(gw, "GET", "/api/v1/conversations/gone/history")
      if h and h.updates and #h.updates == 10 then break end
      gw_.sleep(0.02)
    end
    assert.equal(10, #h.updates)
    assert.equal(200, (gw_.request(gw, "GET", "/healthz")))
  end)
end)

describe("plugin faults in the daemon", function()
  local gw, dir
  setup(function()
    dir = tmpdir()
    write(dir, "a_loops.lua", "local P = { priority = 1 } function P.filter(u) if u.text == 'loop' then while true do end end end return P")
    write(dir, "b_throws.lua", "local P = { priority = 2 } function P.filter(u) if u.text == 'throw' then error('thrown on purpose') end end return P")
    write(dir, "c_eats.lua", "local P = { priority = 3 } function P.filter(u) if u.text == 'eat' then local t = {} for i = 1, 1e9 do t[i] = string.rep('m', 100000) .. i end end end return P")
    write(dir, "d_garbage.lua", "local P = { priority = 4 } function P.filter(u) if u.text == 'garbage' then return { category = 12 } end end return P")
    write(dir, "e_broken.lua", "local P = {\nfunction P.filter(u) end\nreturn P")
    write(dir, "g_backtracks.lua", "local P = { priority = 5 } function P.filter(u) if u.text == 'backtrack' then string.find(string.rep('a', 3000), '(.-)(.-)(.-)(.-)b') end end return P")
    write(dir, "f_tag.lua", "local P = { priority = 9 } function P.filter(u) u.metadata = u.metadata or {} u.metadata.tag = 'v1' return u end return P")
    gw = gw_.start({ plugins_dir = dir, flush_interval_ms = 20, plugin_memory_bytes = 8 * 1024 * 1024, plugin_max_failures = 1000 })
  end)
  teardown(function() gw_.stop(gw) end)

  it("keeps delivering to a live subscriber through loops, throws, runaway memory, garbage and runaway pattern matching", function()
    local s = assert(gw_.sse(gw, "/api/v1/conversations/faults/events"))
    local texts = { "ok1", "loop", "throw", "eat", "garbage", "backtrack", "ok2" }
    for _, t in ipairs(texts) do
      local st = gw_.publish(gw, { conversation_id = "faults", category = "info", text = t })
      assert.equal(202, st)
    end
    local evs = s:updates(#texts)
    assert.equal(#texts, #evs)
    for i, t in ipairs(texts) do
      assert.equal(t, evs[i].json.text)
      assert.equal("v1", evs[i].json.metadata.tag)
    end
    local _, a = gw_.request(gw, "GET", "/admin/plugins")
    local by = {}
    for _, p in ipairs(a.plugins) do by[p.name] = p.counters end
    assert.equal(1, by.a_loops.timeouts)
    assert.equal(1, by.b_throws.errors)
    assert.equal(1, by.c_eats.out_of_memory)
    assert.equal(1, by.d_garbage.errors)
    assert.equal(1, by.g_backtracks.timeouts)
    assert.equal(1, #a.failed)
    assert.matches("e_broken.lua:2:", a.failed[1].error)
    assert.matches("event=plugin_error plugin=b_throws", gw_.log_text(gw))
    s:close()
  end)

  it("reloads on POST /admin/reload and SIGHUP, keeping the old version when the new one is broken", function()
    local s = assert(gw_.sse(gw, "/api/v1/conversations/reload/events"))
    write(dir, "f_tag.lua", "local P = { priority = 9 } function P.filter(u) u.metadata = u.metadata or {} u.metadata.tag = 'v2' return u end return P")
    local st, report = gw_.request(gw, "POST", "/admin/reload")
    assert.equal(200, st)
    local loaded = table.concat(report.loaded, ",")
    assert.matches("f_tag", loaded)
    gw_.publish(gw, { conversation_id = "reload", category = "info", text = "after v2" })
    assert.equal("v2", s:updates(1)[1].json.metadata.tag)

    write(dir, "f_tag.lua", "local P = { priority = 9 } function P.filter(u) u.metadata.tag = 'v3' return u en return P")
    gw_.signal(gw, "HUP")
    gw_.sleep(0.3)
    gw_.publish(gw, { conversation_id = "reload", category = "info", text = "after broken v3" })
    assert.equal("v2", s:updates(1)[1].json.metadata.tag) -- the old version kept running
    assert.matches("event=plugin_load_failed file=\"[^\"]*f_tag.lua\" kept_previous=1", gw_.log_text(gw))
    assert.matches("trigger=SIGHUP", gw_.log_text(gw))
    -- the stream never dropped
    gw_.publish(gw, { conversation_id = "reload", category = "info", text = "still here" })
    assert.equal("still here", s:updates(1)[1].json.text)
    s:close()
  end)
end)

-- The plugin host itself: sandbox, limits, faults, ordering, reload, API.
local ph = require("plugin_host")
local cjson = require("cjson")

local function upd(t) t.category = t.category or "info"; t.text = t.text or "x"; return t end

local function counters(host, name)
  for _, p in ipairs(host:admin().plugins) do
    if p.name == name then return p.counters, p end
  end
end

describe("plugin sandbox", function()
  it("offers no files, programs, bytecode, modules or reflection", function()
    local host = ph.host({ ["probe.lua"] = [[
      local P = {}
      function P.filter(u)
        u.text = table.concat({ tostring(io), tostring(require), tostring(load), tostring(loadfile),
          tostring(dofile), tostring(debug), tostring(package), tostring(string.dump),
          tostring(os.execute), tostring(os.getenv), tostring(collectgarbage), tostring(coroutine),
          type(os.time()), type(os.clock()), type(os.date("!%Y")) }, ",")
        return u
      end
      return P
    ]] })
    local keep, u = host:filter(upd({}))
    assert.is_true(keep)
    assert.equal("nil,nil,nil,nil,nil,nil,nil,nil,nil,nil,nil,nil,number,number,string", u.text)
  end)

  it("refuses precompiled chunks", function()
    local host, report = ph.host({ ["bin.lua"] = "\27Lua\84\0 compiled" })
    assert.equal(0, #report.loaded)
    assert.matches("binary", report.failed[1].error)
  end)

  it("gives plugins json encode/decode/null, now_ms and log", function()
    local host = ph.host({ ["api.lua"] = [[
      local P = {}
      function P.filter(u)
        local t = statusgw.json.decode('{"a":[1,2,{"b":null}],"c":"d"}')
        assert(t.a[3].b == statusgw.json.null)
        statusgw.log("info", "hello from a plugin")
        u.metadata = { roundtrip = statusgw.json.encode({ x = 1 }), now = statusgw.now_ms() > 1700000000000 }
        return u
      end
      return P
    ]] })
    local _, u = host:filter(upd({}))
    assert.equal('{"x":1}', u.metadata.roundtrip)
    assert.is_true(u.metadata.now)
  end)
end)

describe("a filter's result as JSON text", function()
  it("is whole at every length, across every growth of the encoding buffer", function()
    -- a result whose text fills its buffer exactly once moved it after the
    -- text was taken (found by the luajson fuzzer); the sanitizer run of
    -- these specs reads every byte
    -- a builder's metadata: numbers grow the text a byte or two at a
    -- time, and it ends with "]}", so some length ends exactly where a
    -- buffer does
    local host = ph.host({ ["grow.lua"] = [[
      local P = {}
      P.builders = { grow = function(args)
        local list = { args.first }
        for i = 2, args.m do list[i] = 1 end
        return { n = list }
      end }
      return P ]] })
    for m = 150, 1100 do
      for _, first in ipairs({ 1, 11 }) do
        local st, md = host:build("grow", { m = m, first = first }, {})
        assert.equal("ok", st)
        assert.equal(m, #md.n)
      end
    end
  end)
end)

describe("statusgw.json.encode", function()
  it("writes escapes, UTF-8 and long strings as jansson does, and refuses bytes that are not UTF-8", function()
    local host = ph.host({ ["enc.lua"] = [[
      local P = {}
      function P.filter(u)
        local long = string.rep('quote " backslash \\ tab \t é ✓ ', 100)
        local ok, err = pcall(statusgw.json.encode, { bad = "\xff" })
        u.metadata = {
          short = statusgw.json.encode({ s = 'a"b\\c\n\1é' }),
          long = statusgw.json.encode({ long }),
          back = statusgw.json.decode(statusgw.json.encode({ long }))[1] == long,
          list = statusgw.json.encode({ 1, 2, { x = {} } }),
          bad = not ok and err or "accepted",
        }
        return u
      end
      return P ]] })
    local _, u = host:filter(upd({}))
    assert.equal('{"s":"a\\"b\\\\c\\n\\u0001é"}', u.metadata.short)
    assert.equal(cjson.encode({ string.rep('quote " backslash \\ tab \t é ✓ ', 100) }), u.metadata.long)
    assert.is_true(u.metadata.back)
    assert.equal('[1,2,{"x":{}}]', u.metadata.list)
    assert.matches("not valid UTF%-8", u.metadata.bad)
  end)
end)

describe("the update a plugin sees", function()
  -- Metadata reaches a plugin as text and is decoded on first use; every
  -- way of looking at it must see the same table a plain decode would.
  local md = { tool = "search", params = { q = "x", n = 2 }, list = { 1, 2, 3 } }

  local function run(body)
    local host = ph.host({ ["u.lua"] = "local P = {} function P.filter(u) " .. body .. " end return P" })
    local keep, u = host:filter(upd({ metadata = md }))
    assert.is_true(keep)
    return u
  end

  it("reads metadata fields", function()
    local u = run("u.text = u.metadata.tool .. u.metadata.params.q .. #u.metadata.list; return u")
    assert.equal("searchx3", u.text)
    assert.same(md, u.metadata)
  end)

  it("walks the update with pairs and meets metadata as a table", function()
    local u = run([[local ks = {}
      for k, v in pairs(u) do ks[#ks + 1] = k .. ":" .. type(v) end
      table.sort(ks); u.text = table.concat(ks, ","); return u]])
    assert.equal("category:string,conversation_id:string,metadata:table,text:string", u.text)
  end)

  it("encodes the whole update with its metadata", function()
    local u = run("u.text = statusgw.json.encode(u); return u")
    local back = require("cjson").decode(u.text)
    assert.same(md, back.metadata)
    assert.equal("x", back.text)
  end)

  it("replaces or removes metadata", function()
    assert.same({ only = true }, run("u.metadata = { only = true }; return u").metadata)
    local removed = run("u.metadata = nil; u.text = tostring(u.metadata); return u")
    assert.equal("nil", removed.text)
    assert.is_nil(removed.metadata)
  end)

  it("keeps the update's metatable: a plugin cannot strip it from under the undecoded metadata", function()
    local host = ph.host({ ["strip.lua"] = [[
      local P = {}
      function P.filter(u) setmetatable(u, nil) u.text = "changed" return u end
      return P ]] })
    local keep, u = host:filter(upd({ text = "original", metadata = { a = 1 } }))
    assert.is_true(keep)
    assert.equal("original", u.text)
    assert.same({ a = 1 }, u.metadata)
    local c, p = counters(host, "strip")
    assert.equal(1, c.errors)
    assert.matches("protected metatable", p.last_error)
  end)

  it("keeps metadata it never touched when it returns the update", function()
    local u = run("u.text = 'changed'; return u")
    assert.equal("changed", u.text)
    assert.same(md, u.metadata)
  end)

  -- text, source and the idempotency key are filled in on first use too
  local full = { conversation_id = "c1", source = "svc", idempotency_key = "k-1", text = "hello", metadata = { a = 1 } }
  local function run_full(body)
    local host = ph.host({ ["f.lua"] = "local P = {} function P.filter(u) " .. body .. " end return P" })
    local keep, u = host:filter(upd(full))
    assert.is_true(keep)
    return u
  end

  it("reads every field of the update, each as often as it likes", function()
    local u = run_full([[u.text = table.concat({ u.text, u.source, u.idempotency_key, u.text,
      u.conversation_id, u.category, tostring(u.metadata.a), tostring(u.nothing) }, ","); return u]])
    assert.equal("hello,svc,k-1,hello,c1,info,1,nil", u.text)
  end)

  it("lists every field with pairs, and nothing hidden", function()
    local u = run_full([[local ks = {}
      for k, v in pairs(u) do ks[#ks + 1] = tostring(k) .. ":" .. type(v) end
      table.sort(ks); u.text = table.concat(ks, ","); return u]])
    assert.equal("category:string,conversation_id:string,idempotency_key:string,metadata:table," ..
      "source:string,text:string", u.text)
  end)

  it("encodes every field, read or not", function()
    local u = run_full("local _ = u.source; u.text = statusgw.json.encode(u); return u")
    local back = require("cjson").decode(u.text)
    assert.same({ conversation_id = "c1", category = "info", text = "hello", source = "svc",
      idempotency_key = "k-1", metadata = { a = 1 } }, back)
  end)

  it("removes a field whether or not it was read first", function()
    assert.is_nil(run_full("u.source = nil; return u").source)
    assert.is_nil(run_full("local s = u.source; u.source = nil; u.text = s; return u").source)
    assert.equal("svc", run_full("local s = u.source; u.source = nil; u.text = s; return u").text)
    -- set, then read back: the plugin's value, not the original
    assert.equal("mine", run_full("u.source = 'mine'; u.text = u.source; return u").text)
    assert.equal("svc", run_full("u.text = u.source; return u").source)
  end)

  it("sees no field rawget does not show once it was read", function()
    local u = run_full([[local before = rawget(u, "source")
      local _ = u.source
      u.text = tostring(before) .. "," .. tostring(rawget(u, "source")); return u]])
    assert.equal("nil,svc", u.text)
  end)
end)

describe("plugin string functions", function()
  it("find plain substrings exactly where stock Lua does", function()
    -- the sandbox has its own plain find (16 places at a time, memmem over
    -- 32 bytes); stock string.find in the spec's Lua is the reference
    local host = ph.host({ ["finder.lua"] = [[
      local P = {}
      function P.filter(u)
        local out = {}
        for i, c in ipairs(u.metadata.cases) do
          out[i] = { string.find(c[1], c[2], c[3], true) }
        end
        u.metadata = { found = out }
        return u
      end
      return P
    ]] })
    math.randomseed(7)
    local letters = { "a", "b", "k", "s", "-", "_", "S" } -- few letters: many near misses
    local function word(n)
      local t = {}
      for i = 1, n do t[i] = letters[math.random(#letters)] end
      return table.concat(t)
    end
    local cases = {}
    for _ = 1, 400 do
      local h = word(math.random(0, 90))
      local n
      if #h > 0 and math.random() < 0.5 then -- a needle that occurs (or overlaps the end)
        local i = math.random(#h)
        n = h:sub(i, i + math.random(0, 40))
      else
        n = word(math.random(0, 40))
      end
      cases[#cases + 1] = { h, n, math.random(-5, #h + 2) }
    end
    cases[#cases + 1] = { string.rep("ab", 40) .. "abc", "abc", 1 }
    cases[#cases + 1] = { string.rep("a", 64), string.rep("a", 33), 1 }
    cases[#cases + 1] = { string.rep("a", 64) .. "b", string.rep("a", 33) .. "b", 1 }
    local keep, u = host:filter(upd({ metadata = { cases = cases } }))
    assert.is_true(keep)
    assert.equal(#cases, #u.metadata.found)
    for i, c in ipairs(cases) do
      local want = { string.find(c[1], c[2], c[3], true) }
      assert.same(want, u.metadata.found[i], ("find(%q, %q, %d)"):format(c[1], c[2], c[3]))
    end
  end)
end)

describe("builder arguments", function()
  it("arrive with integers and reals as the producer sent them, int64 limits included", function()
    local host = ph.host({ ["echo.lua"] = [[
      return { builders = { echo = function(args)
        local types = {}
        for k, v in pairs(args) do types[k] = math.type(v) or type(v) end
        return { types = types, values = args }
      end } } ]] })
    -- 18 digits and fewer are read on a short path; 19 take the long one
    local args = { a = math.maxinteger, b = math.mininteger, c = -5, d = 1500.5, e = 0, f = 1e300,
      h = { 1, -2, 3.25 }, i = 999999999999999999, j = -999999999999999999,
      k = 1000000000000000000, l = 1000.0, m = -0.5 }
    local st, md = host:build("echo", args, {})
    assert.equal("ok", st)
    assert.same({ a = "integer", b = "integer", c = "integer", d = "float", e = "integer", f = "float",
      h = "table", i = "integer", j = "integer", k = "integer", l = "float", m = "float" }, md.types)
    assert.same(args, md.values)
  end)
end)

describe("plugin case mapping", function()
  it("lowers and uppers every byte as stock Lua does", function()
    local host = ph.host({ ["cases.lua"] = [[
      local P = {}
      local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
      function P.filter(u)
        local t = {}
        for i = 0, 255 do t[#t + 1] = string.char(i) end
        local all = table.concat(t) .. "Mixed Case ÄÖ"
        u.metadata = { lower = hex(string.lower(all)), upper = hex(all:upper()) }
        return u
      end
      return P
    ]] })
    local keep, u = host:filter(upd({}))
    assert.is_true(keep)
    local t = {}
    for i = 0, 255 do t[#t + 1] = string.char(i) end
    local all = table.concat(t) .. "Mixed Case ÄÖ"
    local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
    assert.equal(hex(string.lower(all)), u.metadata.lower)
    assert.equal(hex(string.upper(all)), u.metadata.upper)
  end)
end)

describe("plugin faults", function()
  local faults = {
    loops = "local P = {} function P.filter(u) while true do end end return P",
    swallows = [[local P = {} function P.filter(u)
      while true do pcall(function() while true do end end) end end return P]],
    throws = "local P = {} function P.filter(u) error('boom') end return P",
    eats = [[local P = {} function P.filter(u) local t = {} local i = 0
      while true do i = i + 1 t[i] = string.rep('x', 1000) .. i end end return P]],
    eats_in_pcall = [[local P = {} function P.filter(u)
      for _ = 1, 100 do pcall(function() local t = {} for i = 1, 1e9 do t[i] = {} end end) end
      u.text = 'survived'; return u end return P]],
    garbage = "local P = {} function P.filter(u) return 42 end return P",
    bad_update = "local P = {} function P.filter(u) u.category = 'nope' return u end return P",
    cyclic = "local P = {} function P.filter(u) u.metadata = {} u.metadata.self = u.metadata return u end return P",
    -- pattern matching runs in C, without Lua instructions for the hook to count
    backtracks = [[local P = {} function P.filter(u)
      string.find(string.rep('a', 3000), '(.-)(.-)(.-)(.-)b') end return P]],
    backtracks_in_pcall = [[local P = {} function P.filter(u) local s = string.rep('a', 3000)
      for _ = 1, 10 do pcall(string.gsub, s, '.-.-.-.-b', 'x') end
      u.text = 'survived'; return u end return P]],
  }
  local kinds = { loops = "timeouts", swallows = "timeouts", throws = "errors", eats = "out_of_memory",
    eats_in_pcall = "out_of_memory", garbage = "errors", bad_update = "errors", cyclic = "errors",
    backtracks = "timeouts", backtracks_in_pcall = "timeouts" }
  for name, src in pairs(faults) do
    it("costs only the call when a filter " .. name .. ": the update passes unchanged", function()
      local host = ph.host({ [name .. ".lua"] = src }, { plugin_max_instructions = 2000000, plugin_memory_bytes = 4 * 1024 * 1024, plugin_timeout_ms = 200 })
      local keep, u = host:filter(upd({ conversation_id = "c", text = "original" }))
      assert.is_true(keep)
      assert.equal("original", u.text)
      local c = counters(host, name)
      assert.equal(1, c[kinds[name]], name .. " should count as " .. kinds[name])
      assert.equal(1, c.calls)
      -- and the plugin still works for the next call
      keep = host:filter(upd({ text = "next" }))
      assert.is_true(keep)
    end)
  end

  -- metamethods on what a plugin hands the host must not run outside its
  -- call: an __index that throws there would abort the whole gateway
  local trap = "{ __index = function(t, k) error('trap ' .. tostring(k)) end, "
    .. "__newindex = function(t, k) error('trap ' .. tostring(k)) end }"

  it("loads a plugin table whose metatable throws, reading only its own fields", function()
    local host, report = ph.host({ ["trap.lua"] = [[
      local P = { name = "trap", filter = function(u) u.text = "seen"; return u end }
      return setmetatable(P, ]] .. trap .. [[)
    ]] })
    assert.equal(1, #report.loaded)
    local keep, u = host:filter(upd({ text = "original" }))
    assert.is_true(keep)
    assert.equal("seen", u.text)
  end)

  it("takes a filter's replacement and a builder's result with throwing metatables as plain tables", function()
    local host = ph.host({ ["trap.lua"] = [[
      local trap = ]] .. trap .. [[
      local P = { builders = { b = function(args) return setmetatable({ built = true }, trap) end } }
      function P.filter(u)
        return setmetatable({ conversation_id = u.conversation_id, category = "info", text = "replaced",
          seq = 5, builder = "x" }, trap)
      end
      return P
    ]] })
    local keep, u = host:filter(upd({ conversation_id = "c", text = "original" }))
    assert.is_true(keep)
    assert.equal("replaced", u.text)
    local st, md = host:build("b", {}, {})
    assert.equal("ok", st)
    assert.is_true(md.built)
    assert.is_string(md.timestamp)
  end)

  it("disables a plugin after consecutive failures, until the next reload", function()
    local host = ph.host({ ["throws.lua"] = "local P = {} function P.filter(u) error('boom') end return P" }, { plugin_max_failures = 3 })
    for _ = 1, 5 do host:filter(upd({})) end
    local c, p = counters(host, "throws")
    assert.equal(3, c.calls)
    assert.equal("disabled", p.state)
    assert.matches("boom", p.last_error)
    host:reload()
    local _, p2 = counters(host, "throws")
    assert.equal("active", p2.state)
  end)

  it("applies failure_policy drop", function()
    local host = ph.host({ ["strict.lua"] = "local P = { failure_policy = 'drop' } function P.filter(u) error('no') end return P" })
    local keep, by = host:filter(upd({}))
    assert.is_false(keep)
    assert.equal("strict", by)
  end)

  it("reports a plugin that fails to load with file and line, and loads the others", function()
    local host, report = ph.host({ "plugins/builders.lua", ["broken.lua"] = "local P = {}\nfunction P.filter(u)\n  return u +\nend\nreturn P" })
    assert.same({ "builders" }, report.loaded)
    assert.equal(1, #report.failed)
    assert.matches("broken.lua:4:", report.failed[1].error)
    assert.equal("ok", (host:build("llm", { model = "m" }, {})))
  end)

  it("reports an init that throws", function()
    local _, report = ph.host({ ["initfail.lua"] = "local P = {}\nfunction P.init(c) error('missing key: url') end\nreturn P" })
    assert.matches("initfail.lua:2: missing key: url %(in init%)", report.failed[1].error)
  end)

  it("keeps the previous version when a reload has a syntax error", function()
    local host, _, dir = ph.host({ ["tag.lua"] = "local P = {} function P.filter(u) u.text = 'v1' return u end return P" })
    assert.equal("v1", select(2, host:filter(upd({}))).text)
    ph.write(dir, "tag.lua", "local P = {} function P.filter(u) u.text = 'v2' return u end return P")
    host:reload()
    assert.equal("v2", select(2, host:filter(upd({}))).text)
    ph.write(dir, "tag.lua", "local P = {} function P.filter(u) u.text = 'v3' return u en return P")
    local report = host:reload()
    assert.equal(1, #report.failed)
    assert.is_true(report.failed[1].previous_version_kept)
    assert.equal("v2", select(2, host:filter(upd({}))).text)
  end)

  it("unloads a plugin whose file is gone", function()
    local host, _, dir = ph.host({ ["gone.lua"] = "local P = {} function P.filter(u) return false end return P" })
    assert.is_false((host:filter(upd({}))))
    os.remove(dir .. "/gone.lua")
    local report = host:reload()
    assert.same({ "gone" }, report.removed)
    assert.is_true((host:filter(upd({}))))
  end)
end)

describe("plugin pipeline", function()
  it("runs filters lowest priority first", function()
    local host = ph.host({
      ["a.lua"] = "local P = { priority = 20 } function P.filter(u) u.text = u.text .. 'a' return u end return P",
      ["b.lua"] = "local P = { priority = 10 } function P.filter(u) u.text = u.text .. 'b' return u end return P",
      ["c.lua"] = "local P = { priority = 30 } function P.filter(u) u.text = u.text .. 'c' return u end return P",
    })
    assert.equal("xbac", select(2, host:filter(upd({ text = "x" }))).text)
  end)

  it("stops at the first filter that drops", function()
    local host = ph.host({
      ["drop.lua"] = "local P = { priority = 1 } function P.filter(u) if u.text == 'spam' then return false end end return P",
      ["count.lua"] = "local P = { priority = 2 } local n = 0 function P.filter(u) n = n + 1 u.text = tostring(n) return u end return P",
    })
    local keep, by = host:filter(upd({ text = "spam" }))
    assert.is_false(keep); assert.equal("drop", by)
    assert.equal("1", select(2, host:filter(upd({ text = "ham" }))).text)
  end)

  it("calls a filter with filter_when only for updates holding one of its words", function()
    local host = ph.host({ ["words.lua"] = [[
      local P = { filter_when = { "Secret", "sk-" } }
      function P.filter(u) u.text = "called" return u end
      return P ]] })
    local function called(u) return select(2, host:filter(upd(u))).text == "called" end
    assert.is_false(called({ text = "nothing to see", metadata = { a = "b" }, source = "svc" }))
    assert.is_true(called({ text = "a SECRET here" }))                      -- any case
    assert.is_true(called({ text = "x", metadata = { my_secret = 1 } }))    -- a metadata key
    assert.is_true(called({ text = "x", metadata = { k = { "sk-abc" } } })) -- a nested value
    assert.is_true(called({ text = "x", source = "secretive" }))
    assert.is_true(called({ conversation_id = "sk-conv", text = "x" }))
    -- updates too big to search in one piece are searched field by field
    assert.is_true(called({ text = "x", metadata = { big = string.rep("a", 3000) .. "seCret" } }))
    assert.is_false(called({ text = string.rep("b", 3000), metadata = { big = string.rep("a", 3000) } }))
    local c, p = counters(host, "words")
    assert.equal(6, c.calls)
    assert.equal(2, c.skipped)
    assert.same({ "secret", "sk-" }, p.provides.filter_when)
  end)

  local function finds_like_plain_search()
    -- random words and texts over a few letters: many near misses, words
    -- at the very start and end, texts shorter and longer than 16 bytes
    math.randomseed(11)
    -- ("@" and "`" differ only in the bit that folds case)
    local letters = { "a", "B", "s", "k", "-", "_", "@", "`" }
    local function word(n)
      local t = {}
      for i = 1, n do t[i] = letters[math.random(#letters)] end
      return table.concat(t)
    end
    for _ = 1, 25 do
      local words = {}
      for i = 1, math.random(1, 6) == 6 and 32 or math.random(1, 12) do words[i] = word(math.random(1, 5)) end
      local src = "return { filter_when = { '" .. table.concat(words, "', '") .. "' }, " ..
        "filter = function(u) u.text = 'called' return u end }"
      local host = ph.host({ ["w.lua"] = src })
      for _ = 1, 20 do
        local text, source = word(math.random(0, 70)), word(math.random(1, 20))
        local all = (text .. "\0" .. "conv\0info\0" .. source):lower() -- the source ends it
        local want = false
        for _, w in ipairs(words) do want = want or all:find(w:lower(), 1, true) ~= nil end
        local _, u = host:filter(upd({ conversation_id = "conv", text = text, source = source }))
        assert.equal(want, u.text == "called", ("words %s, text %q"):format(table.concat(words, " "), text))
      end
    end
    -- the edges: a word that only ends the update, or only starts it, in
    -- updates shorter and longer than one 16-byte step; none across fields
    local host = ph.host({ ["w.lua"] = "return { filter_when = { 'kab' }, filter = function(u) u.text = 'called' return u end }" })
    local function called(u) return select(2, host:filter(upd(u))).text == "called" end
    for _, n in ipairs({ 0, 3, 20, 40 }) do
      local pad = string.rep("z", n)
      assert.is_true(called({ conversation_id = "c", text = pad, source = "zzKAB" }), "at the end after " .. n)
      assert.is_true(called({ conversation_id = "c", text = "kAb" .. pad }), "at the start before " .. n)
      assert.is_false(called({ conversation_id = "c", text = pad .. "ka", source = "bzz" }), "across fields " .. n)
    end
    -- too big for one piece: each field on its own, words ending it exactly
    local big = string.rep("z", 2100)
    for _, n in ipairs({ 5, 17, 33 }) do
      local source = string.rep("z", n - 3) .. "kab"
      assert.is_true(called({ conversation_id = "c", text = big, source = source }), "a field of " .. n)
      assert.is_false(called({ conversation_id = "c", text = big, source = source:sub(1, -2) }), "a field of " .. n - 1)
    end
  end

  it("finds filter_when words exactly where a plain lowercase search does", finds_like_plain_search)

  it("finds the same without SIMD, in the portable loop", function()
    ph.simd(false)
    local ok, err = pcall(finds_like_plain_search)
    ph.simd(true)
    assert(ok, err)
  end)

  it("lets init set filter_when from the configuration", function()
    local host = ph.host({ ["words.lua"] = [[
      local P = {}
      function P.init(c) P.filter_when = c.words end
      function P.filter(u) return false end
      return P ]] }, { plugins = { words = { words = { "spam" } } } })
    assert.is_true((host:filter(upd({ text = "ham" }))))
    assert.is_false((host:filter(upd({ text = "Spam!" }))))
  end)

  it("refuses a filter_when that is not a short list of words", function()
    for _, bad in ipairs({ "'word'", "{}", "{ 1 }", "{ '' }", "{ 'a\\0b' }", "{ string.rep('x', 33) }",
                           "(function() local t = {} for i = 1, 33 do t[i] = 'w' .. i end return t end)()" }) do
      local _, report = ph.host({ ["bad.lua"] = "return { filter_when = " .. bad .. ", filter = function() end }" })
      assert.equal(0, #report.loaded, bad)
      assert.matches("filter_when must be a list of 1 to 32 strings of 1 to 32 bytes %(no NUL%)", report.failed[1].error)
    end
    local _, report = ph.host({ ["nofilter.lua"] = "return { filter_when = { 'x' } }" })
    assert.matches("filter_when needs a filter function", report.failed[1].error)
  end)

  it("runs subscriber filters with their args", function()
    local host = ph.host({ ["slow.lua"] = [[
      local P = {}
      P.subscriber_filters = { slow = function(u, args) return (u.metadata.duration_ms or 0) >= args.min_ms end }
      return P ]] })
    assert.is_true(host:subscriber_filter("slow", { metadata = { duration_ms = 1500 } }, { min_ms = 1000 }))
    assert.is_false(host:subscriber_filter("slow", { metadata = { duration_ms = 10 } }, { min_ms = 1000 }))
  end)

  it("validates what a plugin emits", function()
    local host = ph.host({ ["emitter.lua"] = [[
      local P = {}
      P.aggregator = { interval_ms = 1000,
        observe = function(s, u) s.seen = true end,
        summarize = function(s, conv)
          local ok, err = statusgw.emit({ conversation_id = conv, category = "bogus", text = "x" })
          assert(ok == nil and err:match("invalid_category"))
          return { text = "fine" }
        end }
      return P ]] })
    host:observe("c1", { conversation_id = "c1", category = "info", text = "x" })
    local out = host:summarize()
    assert.equal(1, #out)
    assert.equal("fine", out[1].text)
  end)

  it("emits an update it was given, with the fields it never read", function()
    local host = ph.host({ ["fwd.lua"] = [[
      local P = {}
      function P.filter(u)
        if u.conversation_id == "c1" then
          u.conversation_id = "copy"
          assert(statusgw.emit(u))
        end
      end
      return P ]] })
    host:filter(upd({ conversation_id = "c1", text = "hello", source = "svc", metadata = { a = 1 } }))
    local out = host:summarize()
    assert.equal(1, #out)
    assert.same({ "copy", "hello", "svc", 1 },
      { out[1].conversation_id, out[1].text, out[1].source, out[1].metadata.a })
  end)

  it("exposes webhook forwarders", function()
    local host = ph.host({ ["fw.lua"] = [[
      local P = {}
      P.webhooks = { errors = {
        match = function(u) return u.category == "error" end,
        format = function(ups) return statusgw.json.encode({ n = #ups }), { ["X-Kind"] = "errors" } end } }
      return P ]] })
    assert.is_true(host:webhook_match("errors", { category = "error", text = "x" }))
    assert.is_false(host:webhook_match("errors", { category = "info", text = "x" }))
    local body, headers = host:webhook_format("errors", { { text = "a" }, { text = "b" } })
    assert.equal('{"n":2}', body)
    assert.equal("errors", headers["X-Kind"])
  end)
end)

describe("check-plugin", function()
  it("lists what a plugin provides", function()
    local d = ph.check("plugins/builders.lua")
    assert.equal("builders", d.name)
    table.sort(d.provides.builders)
    assert.same({ "error", "llm", "progress", "timing", "tool", "workflow" }, d.provides.builders)
    assert.is_false(d.provides.filter)
    d = ph.check("plugins/summary.lua")
    assert.equal(5000, d.provides.aggregator.interval_ms)
  end)

  it("gives file:line for a broken plugin", function()
    local dir = ph.tmpdir()
    ph.write(dir, "bad.lua", "local P = {}\n\nP.filter = function(u) return u..end\nreturn P\n")
    local d, err = ph.check(dir .. "/bad.lua")
    assert.is_nil(d)
    assert.matches("bad.lua:3:", err)
  end)
end)

describe("webhook_formats plugin", function()
  local host
  setup(function() host = ph.host({ "plugins/webhook_formats.lua" }) end)
  local ups = {
    { conversation_id = "c1", seq = 1, category = "tool", text = "Executing search_code", metadata = {}, timestamp = "t" },
    { conversation_id = "c1", seq = 2, category = "error", text = "timeout", metadata = { error_type = "timeout" }, timestamp = "t", source = "svc" },
  }

  it("formats a generic JSON batch", function()
    local body = host:webhook_format("json_batch", ups)
    local b = require("cjson").decode(body)
    assert.equal("status.batch", b.type)
    assert.equal(2, b.count)
    assert.equal("timeout", b.updates[2].text)
  end)

  it("formats a chat message, one line per update", function()
    local b = require("cjson").decode((host:webhook_format("chat", ups)))
    assert.equal(":wrench: [c1] tool: Executing search_code\n:red_circle: [c1] error: timeout", b.text)
  end)

  it("selects errors for the monitoring forwarder and formats events", function()
    assert.is_false(host:webhook_match("errors", ups[1]))
    assert.is_true(host:webhook_match("errors", ups[2]))
    local body, headers = host:webhook_format("errors", { ups[2] })
    local b = require("cjson").decode(body)
    assert.equal("error", b.events[1].level)
    assert.equal("timeout", b.events[1].error_type)
    assert.equal("svc", b.events[1].tags.source)
    assert.equal("errors", headers["X-Statusgw-Kind"])
  end)
end)

describe("statusgw.truncate", function()
  local host = ph.host({ ["t.lua"] = [[
return { name = "t", builders = { t = function(args)
  if args.marker then return { out = statusgw.truncate(args.s, args.max, args.marker) } end
  return { out = statusgw.truncate(args.s, args.max) }
end } }]] })
  local function t(s, max, marker)
    local rc, md = host:build("t", { s = s, max = max, marker = marker })
    assert.equal("ok", rc)
    return md.out
  end

  it("leaves what fits, and cuts what does not to max bytes, the marker included", function()
    assert.equal("hello", t("hello", 5))
    assert.equal("he...", t("hello!", 5))
    assert.equal("hel…", t("hello world", 6, "…")) -- the marker's bytes count: … is three
    assert.equal("..", t("hello", 2)) -- no room but for part of the marker
    assert.equal("", t("hello", 0, ""))
  end)

  it("never cuts inside a UTF-8 character", function()
    assert.equal("é...", t("ééé", 5)) -- 6 bytes; 2 + 3 fit, a third byte would split the second é
    assert.equal("ab...", t("ab€cd", 6)) -- € is 3 bytes: it does not fit before the marker
    local out = t(string.rep("€", 100), 50)
    assert.is_true(#out <= 50)
    assert.truthy(utf8.len(out))
  end)
end)

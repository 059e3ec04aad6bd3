-- The plugin author's kit: statusgw plugin new (a plugin and a spec that
-- passes as written), plugin test (busted against the real host), plugin
-- run (the dry run: what each plugin does to each update, what each call
-- costs, and errors that name the file and line).
package.path = "spec/helpers/?.lua;" .. package.path
local gw_ = require("gateway")
local cjson = require("cjson")

local function slurp(path)
  local h = assert(io.open(path))
  local s = h:read("a")
  h:close()
  return s
end

-- The sanitizer build's statusgw_plugin.so needs the sanitizer runtimes
-- loaded before lua5.4 (busted) starts.
local function preload()
  if not gw_.bin:find("/asan/") then return "" end
  local function lib(name)
    local p = io.popen("cc -print-file-name=" .. name)
    local s = p:read("l")
    p:close()
    return s
  end
  return string.format("LD_PRELOAD='%s %s' ASAN_OPTIONS=detect_leaks=0 ", lib("libasan.so"), lib("libubsan.so"))
end

-- statusgw ARGS in dir (stdin from a file, or nothing): stdout, stderr, status.
local function run(args, opts)
  opts = opts or {}
  local tmp = gw_.tmpdir()
  local cmd = string.format("cd %q && %s%s %s >%s/out 2>%s/err <%s; echo $? >%s/rc", opts.cwd or ".",
    opts.env or "", gw_.bin, args, tmp, tmp, opts.stdin or "/dev/null", tmp)
  os.execute(cmd)
  local out, err, rc = slurp(tmp .. "/out"), slurp(tmp .. "/err"), tonumber(slurp(tmp .. "/rc"))
  os.execute("rm -rf " .. tmp)
  return out, err, rc
end

local root = io.popen("pwd"):read("l")
if not gw_.bin:find("^/") then gw_.bin = root .. "/" .. gw_.bin end

describe("statusgw plugin new and plugin test", function()
  it("writes a plugin of every kind and a spec that passes as written", function()
    local dir = gw_.tmpdir()
    local out, err, rc = run("plugin new audit --dir " .. dir)
    assert.equal(0, rc, err)
    assert.matches("wrote " .. dir .. "/audit.lua and " .. dir .. "/audit_spec.lua", out, 1, true)
    local src = slurp(dir .. "/audit.lua")
    assert.matches("function P.filter(update)", src, 1, true)
    assert.is_nil(src:find("P.builders", 1, true)) -- a filter unless other kinds are asked for
    out, err, rc = run("plugin new everything --filter --builder --subscriber-filter --aggregator --forwarder --dir " .. dir)
    assert.equal(0, rc, err)
    src = slurp(dir .. "/everything.lua")
    for _, part in ipairs({ "P.filter", "P.builders", "P.subscriber_filters", "P.aggregator", "P.webhooks" }) do
      assert.matches(part, src, 1, true)
    end
    -- loads in the sandbox, and provides what it says
    local desc
    out, err, rc = run("check-plugin " .. dir .. "/everything.lua")
    assert.equal(0, rc, err)
    desc = cjson.decode(out)
    assert.same({ "everything" }, desc.provides.builders)
    assert.same({ "everything" }, desc.provides.webhooks)
    assert.is_true(desc.provides.filter)
    out, err, rc = run("plugin test " .. dir, { env = preload() })
    assert.equal(0, rc, out .. err)
    assert.matches("8 successes / 0 failures / 0 errors", out, 1, true)
    os.execute("rm -rf " .. dir)
  end)

  it("plugin test fails when a spec fails, and says what is missing", function()
    local dir = gw_.tmpdir()
    run("plugin new strict --dir " .. dir)
    local spec = slurp(dir .. "/strict_spec.lua"):gsub('"login password=%[REDACTED%] ok"', '"something else"')
    local f = io.open(dir .. "/strict_spec.lua", "w")
    f:write(spec)
    f:close()
    local out, err, rc = run("plugin test " .. dir, { env = preload() })
    assert.equal(1, rc, out .. err)
    assert.matches("1 failure", out, 1, true)
    local empty = gw_.tmpdir()
    out, err, rc = run("plugin test " .. empty)
    assert.equal(2, rc)
    assert.matches("no *_spec.lua in " .. empty, err, 1, true)
    os.execute("rm -rf " .. dir .. " " .. empty)
  end)

  it("refuses a bad name, an existing plugin, an unknown kind", function()
    local dir = gw_.tmpdir()
    local _, err, rc = run("plugin new Bad-Name --dir " .. dir)
    assert.equal(2, rc)
    assert.matches("lower-case letter", err, 1, true)
    assert.equal(0, select(3, run("plugin new twice --dir " .. dir)))
    _, err, rc = run("plugin new twice --dir " .. dir)
    assert.equal(2, rc)
    assert.matches(dir .. "/twice.lua already exists: nothing written", err, 1, true)
    _, err, rc = run("plugin new x --sorter --dir " .. dir)
    assert.equal(2, rc)
    assert.matches("unexpected '--sorter'", err, 1, true)
    _, err, rc = run("plugin new x", { cwd = dir }) -- no plugins/ where it runs
    assert.equal(2, rc)
    assert.matches("no directory 'plugins' here: give --dir DIR", err, 1, true)
    os.execute("rm -rf " .. dir)
  end)
end)

describe("statusgw plugin run", function()
  local dir
  before_each(function() dir = gw_.tmpdir() end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  local function write(name, src)
    local f = io.open(dir .. "/" .. name, "w")
    f:write(src)
    f:close()
    return dir .. "/" .. name
  end

  local UPDATES = table.concat({
    '{"conversation_id":"c1","category":"info","text":"token=abc123 sent","metadata":{"secret":"s3","n":1}}',
    '{"conversation_id":"c1","category":"info","text":"debug: warm cache"}',
    '{"conversation_id":"c2","category":"tool","text":"slow search","metadata":{"duration_ms":2500}}',
    '{"conversation_id":"c2","category":"error","text":"boom"}',
    '{"conversation_id":"c3","category":"nonsense","text":"x"}',
    '{"conversation_id":"c3","category":"tool","text":"limit me"}',
    "",
  }, "\n")

  local PLUGINS = {
    ["a_mask.lua"] = [[
local P = { name = "a_mask", priority = 10 }
function P.filter(u)
  if u.text:find("token=", 1, true) then
    u.text = u.text:gsub("token=%w+", "token=***")
    u.metadata.secret = nil
    u.metadata.masked = true
    return u
  end
end
return P]],
    ["b_drop.lua"] = [[
return { name = "b_drop", priority = 20, filter = function(u)
  if u.text:sub(1, 6) == "debug:" then return false end
  if u.text == "limit me" then return statusgw.refuse(429, "rate_limited", "slow down", 3) end
end }]],
    ["c_view.lua"] = [[
local P = { name = "c_view", enabled = false }
P.subscriber_filters = { slow = function(u, args) return ((u.metadata or {}).duration_ms or 0) >= args.min_ms end }
P.aggregator = { interval_ms = 1000, observe = function(s, u) s.n = (s.n or 0) + 1 end,
  summarize = function(s, conv) if s.n then local n = s.n; s.n = nil; return { text = n .. " updates" } end end }
P.webhooks = { alerts = { match = function(u) return u.category == "error" end,
  format = function(us) return statusgw.json.encode({ count = #us, first = us[1].text }), { ["X-Kind"] = "alerts" } end } }
return P]],
  }

  it("says what each plugin did to each update, in priority order", function()
    for name, src in pairs(PLUGINS) do write(name, src) end
    local updates = write("updates.ndjson", UPDATES)
    local out, err, rc = run(string.format("plugin run %s --updates %s --json --args slow='{\"min_ms\":1000}'",
      dir, updates))
    assert.equal(0, rc, err)
    local r = cjson.decode(out)
    assert.equal(6, r.updates)
    assert.equal(1, r.invalid)
    local names = {}
    for i, p in ipairs(r.plugins) do names[i] = p.name end
    assert.same({ "a_mask", "b_drop", "c_view" }, names)
    assert.is_false(r.plugins[3].enabled) -- off in a directory unless the config enables it
    local rep = r.reports
    -- #1 changed by a_mask (text and metadata, key by key), kept by b_drop
    assert.equal("changed", rep[1].steps[1].action)
    local diff = {}
    for _, d in ipairs(rep[1].steps[1].diff) do diff[d.field] = { d.before, d.after } end
    assert.same({ "token=abc123 sent", "token=*** sent" }, diff.text)
    assert.same({ "s3" }, { diff["metadata.secret"][1] })
    assert.is_nil(diff["metadata.secret"][2])
    assert.same({ true }, { diff["metadata.masked"][2] })
    assert.is_nil(diff["metadata.n"])
    assert.equal("kept", rep[1].steps[2].action)
    assert.equal(1, rep[1].delivered.seq)
    -- #2 dropped by b_drop: never delivered
    assert.equal("dropped", rep[2].steps[2].action)
    assert.equal("b_drop", rep[2].steps[2].plugin)
    assert.is_nil(rep[2].delivered)
    -- #5 invalid as the gateway would answer it
    assert.equal("invalid_category", rep[5].invalid.code)
    -- #6 refused with its status, code and Retry-After
    local st = rep[6].steps[2]
    assert.same({ "refused", 429, "rate_limited", 3 }, { st.action, st.status, st.code, st.retry_after })
    -- costs for every kind of call made
    local calls = {}
    for _, c in ipairs(r.costs) do calls[c.plugin .. "." .. c.call] = c end
    assert.equal(5, calls["a_mask.filter"].calls)
    assert.is_true(calls["a_mask.filter"].median_us > 0)
    assert.equal(5, calls["b_drop.filter"].calls) -- all but #5, which never reached the filters
    assert.is_nil(calls["c_view.observe"])
    assert.same({ 50, 1000000, 16777216 }, { r.limits.timeout_ms, r.limits.instructions, r.limits.memory_bytes })
  end)

  it("runs a file named on its own even when it waits to be enabled: subscriber filters, summaries, bodies", function()
    local file = write("c_view.lua", PLUGINS["c_view.lua"])
    local updates = write("updates.ndjson", UPDATES)
    local out, err, rc = run(string.format("plugin run %s --updates %s --json --args slow='{\"min_ms\":1000}'",
      file, updates))
    assert.equal(0, rc, err)
    local r = cjson.decode(out)
    assert.is_true(r.plugins[1].enabled)
    assert.equal("withheld", r.reports[1].delivered.subscriber_filters.slow)
    assert.equal("delivered", r.reports[3].delivered.subscriber_filters.slow)
    assert.same({ "alerts" }, r.reports[4].delivered.forwarders)
    local sums = {}
    for _, s in ipairs(r.summaries) do sums[s.update.conversation_id] = s.update.text end
    assert.same({ c1 = "2 updates", c2 = "2 updates", c3 = "1 updates" }, sums)
    assert.equal(1, #r.forwarders)
    local f = r.forwarders[1]
    assert.same({ "alerts", 1, 1, "boom", "alerts" }, { f.forwarder, f.matched, f.body.count, f.body.first, f.headers["X-Kind"] })
  end)

  it("reads the shipped sample by default and speaks plainly on a terminal", function()
    local out, err, rc = run("plugin run plugins/redact.lua", { cwd = root })
    assert.equal(0, rc, err)
    assert.matches("1 plugin over plugins/samples/updates.ndjson", out, 1, true)
    assert.matches("redact             changed   text: \"Calling API with Authorization: Bearer sk_live_", out, 1, true)
    assert.matches("→ \"Calling API with Authorization: Bearer [REDACTED]\"", out, 1, true)
    assert.matches("updates every plugin kept as they were: --all shows them", out, 1, true)
    assert.matches("redact             filter", out, 1, true)
    local lines = 0
    for _ in io.lines(root .. "/plugins/samples/updates.ndjson") do lines = lines + 1 end
    assert.equal(1000, lines)
  end)

  it("calls a subscriber filter --args does not name with {}", function()
    local file = write("any.lua", [[
return { name = "any", subscriber_filters = { any = function(u, args) return next(args) == nil end } }]])
    local updates = write("one.ndjson", '{"conversation_id":"c1","category":"info","text":"x"}\n')
    local out, err, rc = run("plugin run " .. file .. " --updates " .. updates .. " --json")
    assert.equal(0, rc, err)
    assert.equal("delivered", cjson.decode(out).reports[1].delivered.subscriber_filters.any)
  end)

  it("reads standard input, and warns about a call near its limit", function()
    local file = write("busy.lua", [[
return { name = "busy", filter = function(u)
  local x = 0
  for i = 1, 300000 do x = x + i end  -- about 600,000 instructions of the 1,000,000 allowed
end }]])
    local updates = write("one.ndjson", '{"conversation_id":"c1","category":"info","text":"x"}\n')
    local out, err, rc = run("plugin run " .. file .. " --updates -", { stdin = updates })
    assert.equal(0, rc, err)
    assert.matches("warning: busy filter: a call ran %d+ of plugin_max_instructions 1000000", out)
  end)

  it("names the plugin's file and line for a failing call (exit 1) and for one that does not load (exit 2)", function()
    local file = write("thrower.lua", 'return { name = "thrower", filter = function(u)\n  local t = nil\n  return t.x\nend }\n')
    local updates = write("one.ndjson", '{"conversation_id":"c1","category":"info","text":"x"}\n')
    local out, err, rc = run("plugin run " .. file .. " --updates " .. updates .. "")
    assert.equal(1, rc, out .. err)
    assert.matches(file:gsub("%p", "%%%0") .. ":3: attempt to index a nil value", out) -- the file as given
    local broken = write("broken.lua", "return {\n  name = 'broken',\n  filter = function(u) return u end end\n}\n")
    out, err, rc = run("plugin run " .. broken .. " --updates " .. updates .. "")
    assert.equal(2, rc)
    assert.matches("broken.lua:3:", err, 1, true)
    -- a setting the plugin refuses, once the run enables it: its message, exit 2
    local config = write("bad.lua", "return { plugins = { sampling = { every = 0 } } }\n")
    out, err, rc = run("plugin run " .. root .. "/plugins/contrib/sampling.lua --config " .. config .. " --updates " .. updates)
    assert.equal(2, rc, out .. err)
    assert.matches("sampling.lua:%d+: plugins.sampling.every must be at least 1", err)
    out, err, rc = run("plugin run " .. dir .. "/nothing.lua")
    assert.equal(2, rc)
    assert.matches("no such file", err, 1, true)
  end)
end)

describe("the gallery over the shipped sample", function()
  it("runs every plugins/contrib plugin over the 1,000 sample updates within its limits", function()
    local dir = gw_.tmpdir()
    local config = dir .. "/statusgw.lua"
    local f = io.open(config, "w")
    f:write('return { plugins_dir = "' .. root .. '/plugins", plugins = { pagerduty = { routing_key = "R0ABCDEF0123456789ABCDEF01234567" },\n'
      .. '  route = { routes = { { conversations = "conv-1*", categories = { "error" }, to = "feed" } } } } }\n')
    f:close()
    local ran = 0
    for file in io.popen("ls " .. root .. "/plugins/contrib/*.lua | grep -v _spec.lua"):lines() do
      local out, err, rc = run(string.format("plugin run %s --config %s --json --args min_duration='{\"ms\":1000}' "
        .. "--args text_matches='{\"pattern\":\"time%%s?out\"}' --args tool_in='{\"tools\":[\"run_tests\"]}'", file, config))
      assert.equal(0, rc, file .. ": " .. err)
      local r = cjson.decode(out)
      assert.equal(1000, r.updates, file)
      assert.same({}, r.errors, file)
      assert.same({}, r.warnings, file)
      assert.is_true(#r.costs > 0, file)
      ran = ran + 1
    end
    assert.equal(13, ran)
    os.execute("rm -rf " .. dir)
  end)
end)

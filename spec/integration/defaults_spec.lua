-- A first run as a new user has it: the shipped config delivers every
-- update it acknowledges, unchanged; rate limiting (once enabled) refuses
-- instead of dropping; config mistakes are caught before they bite; an
-- installed copy works from any directory; the access log and the command
-- line say what a user needs.
local gw_ = require("gateway")
local cjson = gw_.json
local socket = require("socket")

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo rc=$?")
  local out = p:read("a")
  p:close()
  return out, tonumber(out:match("rc=(%d+)%s*$"))
end
local tmpdir = gw_.tmpdir
local write = gw_.write_file
local root = (sh("pwd"):match("^(%S+)"))
local bin = gw_.bin:sub(1, 1) == "/" and gw_.bin or (root .. "/" .. gw_.bin)

-- n single publishes on one keep-alive connection, pipelined in runs of
-- 100; returns the statuses and the decoded answers.
local function burst(gw, conv, n)
  local c = gw_.connect(gw)
  local statuses, bodies = {}, {}
  local i = 0
  while i < n do
    local req = {}
    local run = math.min(100, n - i)
    for k = 1, run do
      req[k] = gw_.build_request("POST", "/api/v1/status",
        cjson.encode({ conversation_id = conv, category = "progress", text = "item " .. (i + k) }))
    end
    c:send_raw(table.concat(req))
    for _ = 1, run do
      local st, h, body = c:read_response()
      statuses[#statuses + 1] = st
      bodies[#bodies + 1] = { json = cjson.decode(body), retry_after = h["retry-after"] }
    end
    i = i + run
  end
  c:close()
  return statuses, bodies
end

local function bulk(gw, conv, n)
  local items = {}
  for k = 1, n do items[k] = { conversation_id = conv, category = "progress", text = "bulk " .. k } end
  local st, body = gw_.request(gw, "POST", "/api/v1/status/bulk", items)
  assert.equal(202, st)
  return body
end

-- every status_update the stream holds within a quiet second
local function drain(s, want)
  local got = {}
  while true do
    local evs, err = s:updates(1, #got < want and 5 or 1)
    if #evs == 0 then break end
    got[#got + 1] = evs[1].json
  end
  return got
end

-- The shipped config as it is, in a copy of the checkout's layout (etc/,
-- plugins/), so that its database (../var/statusgw.db) starts empty.
local function shipped_copy()
  local dir = tmpdir()
  os.execute(string.format("mkdir -p %s/etc && cp %s/etc/statusgw.lua %s/etc/ && ln -s %s/plugins %s/plugins",
    dir, root, dir, root, dir))
  return dir
end

-- The gallery's plugins (plugins/contrib), loaded with the shipped ones.
local GALLERY = { "slack", "discord", "teams", "pagerduty", "opsgenie", "cloudevents", "sampling", "dedupe", "pii", "route",
  "tool_timing", "workflow_digest", "subscriber_filters" }

describe("the shipped config", function()
  local gw, dir
  setup(function()
    dir = shipped_copy()
    gw = gw_.start({ config_file = dir .. "/etc/statusgw.lua" })
  end)
  teardown(function() gw_.stop(gw); os.execute("rm -rf " .. dir) end)

  it("keeps its database beside the checkout's etc/, in var/", function()
    gw_.publish(gw, { conversation_id = "where", category = "info", text = "x" })
    local f = io.open(dir .. "/var/statusgw.db")
    assert.truthy(f, "no var/statusgw.db")
    f:close()
    local _, _, _, m = gw_.request(gw, "GET", "/metrics")
    assert.truthy(m:find('statusgw_store_up{store="sqlite"} 1', 1, true))
  end)

  it("delivers every update of a 1,000-POST burst and a 1,000-item bulk, unchanged and with nothing extra", function()
    local s = assert(gw_.sse(gw, "/api/v1/conversations/first-run/events"))
    local statuses, bodies = burst(gw, "first-run", 1000)
    for k = 1, 1000 do
      assert.equal(202, statuses[k])
      assert.equal(k, bodies[k].json.seq)
    end
    local got = drain(s, 1000)
    assert.equal(1000, #got)
    local b = bulk(gw, "first-run", 1000)
    assert.equal(1000, b.accepted)
    assert.equal(0, b.rejected)
    assert.equal(0, b.dropped)
    local more = drain(s, 1000)
    assert.equal(1000, #more)
    for k = 1, 1000 do
      assert.equal(k, got[k].seq)
      assert.equal("item " .. k, got[k].text)
      assert.equal(1000 + k, more[k].seq)
      assert.equal("bulk " .. k, more[k].text)
    end
    s:close()
  end)

  it("has the traffic-changing plugins loaded but off, and says so", function()
    local _, a = gw_.request(gw, "GET", "/admin/plugins")
    local state = {}
    for _, p in ipairs(a.plugins) do state[p.name] = p.enabled and p.state or "off" end
    local expected = { builders = "active", webhook_formats = "active", redact = "off", rate_limit = "off", summary = "off" }
    for _, name in ipairs(GALLERY) do expected[name] = "off" end -- plugins/contrib: every one off until enabled
    assert.same(expected, state)
    assert.same({}, a.failed)
    -- a secret goes through as sent: nothing redacts unless asked
    gw_.publish(gw, { conversation_id = "as-sent", category = "tool", text = "password=hunter2" })
    local _, h = gw_.request(gw, "GET", "/api/v1/conversations/as-sent/history")
    assert.equal("password=hunter2", h.updates[1].text)
  end)
end)

describe("the shipped config with rate_limit enabled", function()
  local gw, dir
  setup(function()
    dir = tmpdir()
    write(dir .. "/statusgw.lua", string.format([[
      local c = dofile(%q)
      c.plugins_dir = %q
      c.plugins.rate_limit.enabled = true
      c.store_path = %q
      return c ]], root .. "/etc/statusgw.lua", root .. "/plugins", dir .. "/statusgw.db"))
    gw = gw_.start({ config_file = dir .. "/statusgw.lua" })
  end)
  teardown(function() gw_.stop(gw); os.execute("rm -rf " .. dir) end)

  it("refuses the excess of a burst with 429 and Retry-After, and delivers every update it acknowledged", function()
    local s = assert(gw_.sse(gw, "/api/v1/conversations/limited/events"))
    local statuses, bodies = burst(gw, "limited", 1000)
    local acked, refused = 0, 0
    for k = 1, 1000 do
      if statuses[k] == 202 then
        acked = acked + 1
        assert.equal(acked, bodies[k].json.seq)
      else
        assert.equal(429, statuses[k])
        assert.equal("rate_limited", bodies[k].json.error.code)
        assert.matches("^%d+$", bodies[k].retry_after)
        refused = refused + 1
      end
    end
    assert.is_true(acked >= 100 and refused > 0, acked .. " acknowledged")
    local got = drain(s, acked)
    assert.equal(acked, #got)
    -- in bulk, `accepted` counts only what is delivered
    local b = bulk(gw, "limited", 1000)
    assert.is_true(b.rejected > 0)
    assert.equal(1000, b.accepted + b.rejected)
    local more = drain(s, b.accepted)
    assert.equal(b.accepted, #more)
    for k, r in ipairs(b.results) do
      if not r.seq then assert.equal("rate_limited", r.error.code) end
    end
    s:close()
  end)
end)

describe("configuration errors", function()
  local dir
  setup(function() dir = tmpdir(); os.execute("mkdir -p " .. dir .. "/plugins") end)
  teardown(function() os.execute("rm -rf " .. dir) end)

  -- the config body (plugins_dir is the temp plugins directory unless set)
  local function check(body)
    write(dir .. "/c.lua", "return {\n plugins_dir = " .. string.format("%q", dir .. "/plugins") .. ",\n" .. body .. "\n}")
    return sh(bin .. " --check-config --config " .. dir .. "/c.lua")
  end

  it("rejects unknown keys at every depth, with a did-you-mean", function()
    local cases = {
      { "batch_sise = 5", "unknown key 'batch_sise' %(did you mean 'batch_size'%?%)" },
      { "security = { api_key = {} }", "security: unknown key 'api_key' %(did you mean 'api_keys'%?%)" },
      { "security = { api_keys = { { key = 'pk_0123456789abcdef', nmae = 'x' } } }",
        "security.api_keys%[1%]: unknown key 'nmae' %(did you mean 'name'%?%)" },
      { "webhooks = { endpoints = { { name = 'a', url = 'http://127.0.0.1:9/x', secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', batch_szie = 5 } } }",
        "webhooks endpoint 'a': unknown key 'batch_szie' %(did you mean 'batch_size'%?%)" },
      { "webhooks = { retry_schedule = {} }", "webhooks: unknown key 'retry_schedule' %(did you mean 'retry_schedule_s'%?%)" },
      { "plugins = { rate_limt = { rate = 5 } }", "plugins.rate_limt names no plugin" },
      { "store = 'redis'", 'store must be "memory" or "sqlite", got "redis"' },
      { "store_sync = 'sometimes'", 'store_sync must be "normal", "full" or "off", got "sometimes"' },
      { "store_delay_ms = -1", "store_delay_ms must be between 0 and 60000, got %-1" },
      { "stroe = 'memory'", "unknown key 'stroe' %(did you mean 'store'%?%)" },
    }
    for _, c in ipairs(cases) do
      local out, rc = check(c[1])
      assert.equal(2, rc, c[1] .. " -> " .. out)
      assert.matches(c[2], out)
    end
  end)

  it("checks a plugin's declared setting types and names the plugins directory", function()
    os.execute(string.format("cp %s/plugins/rate_limit.lua %s/plugins/", root, dir))
    local out, rc = check("plugins = { rate_limit = { enabled = true, rate = 'fast' } }")
    assert.equal(2, rc, out)
    assert.matches("plugins.rate_limit.rate must be a number, got string", out)
    out, rc = check("plugins = { rate_limt = {} }")
    assert.matches("did you mean 'rate_limit'", out)
    out, rc = check("plugins = { rate_limit = { enabled = true, rate = 5 } }")
    assert.equal(0, rc, out)
    os.execute("rm " .. dir .. "/plugins/rate_limit.lua")
    -- the daemon refuses to start on the same mistake, exit status 2
    write(dir .. "/d.lua", "return { plugins_dir = 'nowhere', listen = '127.0.0.1:1' }")
    out, rc = sh(bin .. " --config " .. dir .. "/d.lua")
    assert.equal(2, rc, out)
    assert.matches("plugins_dir '" .. dir:gsub("%p", "%%%0") .. "/nowhere' is not a directory", out)
  end)

  it("refuses a dead-letter file that cannot be written when webhooks are configured", function()
    local out, rc = check("webhooks = { dead_letter_file = '/proc/statusgw/dl.jsonl', endpoints = { { name = 'a', url = 'http://127.0.0.1:9/x', secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' } } }")
    assert.equal(2, rc, out)
    assert.matches("dead_letter_file '/proc/statusgw/dl.jsonl' cannot be written", out)
  end)

  it("logs a plugin that fails to load at start with its file and the reason", function()
    local pdir = tmpdir()
    write(pdir .. "/broken.lua", "local P = {\nreturn P")
    local gw = gw_.start({ plugins_dir = pdir })
    local log = gw_.log_text(gw)
    gw_.stop(gw)
    assert.matches('level=error event=plugin_load_failed file="' .. pdir:gsub("%p", "%%%0") .. '/broken.lua"', log)
    assert.matches("broken.lua:2:", log)
    os.execute("rm -rf " .. pdir)
  end)
end)

describe("an installed gateway", function()
  it("installs, finds its plugins when started from /, and uninstalls", function()
    local prefix = tmpdir()
    local out, rc = sh("make --no-print-directory install PREFIX=" .. prefix .. " STATEDIR=" .. prefix .. "/var/lib/statusgw")
    assert.equal(0, rc, out)
    local unit = gw_.read_file(prefix .. "/lib/systemd/system/statusgw.service")
    assert.matches("ExecStart=" .. prefix:gsub("%p", "%%%0") .. "/bin/statusgw %-%-config " .. prefix:gsub("%p", "%%%0") .. "/etc/statusgw/statusgw.lua", unit)
    assert.matches("DynamicUser=yes", unit)
    local gw = gw_.start({ config_file = prefix .. "/etc/statusgw/statusgw.lua", cwd = "/" })
    local _, a = gw_.request(gw, "GET", "/admin/plugins")
    gw_.stop(gw)
    assert.equal(5 + #GALLERY, #a.plugins) -- the gallery is installed too
    assert.same({}, a.failed)
    -- the installed config keeps its database in the state directory
    assert.truthy(gw_.read_file(prefix .. "/var/lib/statusgw/statusgw.db"), "no database in STATEDIR")
    out, rc = sh("make --no-print-directory uninstall PREFIX=" .. prefix .. " STATEDIR=" .. prefix .. "/var/lib/statusgw")
    assert.equal(0, rc, out)
    assert.is_nil(gw_.read_file(prefix .. "/bin/statusgw"))
    assert.is_nil(gw_.read_file(prefix .. "/etc/statusgw/statusgw.lua"))
    os.execute("rm -rf " .. prefix)
  end)
end)

describe("relative paths in a config file", function()
  it("resolve against the file's directory, not the working directory", function()
    local dir = tmpdir()
    os.execute("mkdir -p " .. dir .. "/conf/myplugins")
    os.execute(string.format("cp %s/plugins/builders.lua %s/conf/myplugins/", root, dir))
    write(dir .. "/conf/statusgw.lua", "return { plugins_dir = 'myplugins' }")
    local gw = gw_.start({ config_file = dir .. "/conf/statusgw.lua", cwd = "/" })
    local _, a = gw_.request(gw, "GET", "/admin/plugins")
    gw_.stop(gw)
    assert.equal(1, #a.plugins)
    assert.equal(dir .. "/conf/myplugins", a.directory)
    os.execute("rm -rf " .. dir)
  end)
end)

describe("the access log", function()
  local gw
  setup(function()
    gw = gw_.start({ access_log = true,
      security = { api_keys = { { key = "pk_test_0123456789abcdef", name = "tool-executor", rate = 1, burst = 1 } } } })
  end)
  teardown(function() gw_.stop(gw) end)

  it("writes one key=value line per request, failed publishes included", function()
    local auth = { Authorization = "Bearer pk_test_0123456789abcdef" }
    assert.equal(202, (gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"al","category":"info","text":"x"}', auth)))
    assert.equal(429, (gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"al","category":"info","text":"x"}', auth)))
    assert.equal(400, (gw_.request(gw, "POST", "/api/v1/status", '{"conversation_id":"al","category":"nope","text":"x"}', auth)))
    assert.equal(415, (gw_.request(gw, "POST", "/api/v1/status", "x", { Authorization = auth.Authorization, ["Content-Type"] = "text/plain" })))
    assert.equal(401, (gw_.request(gw, "POST", "/api/v1/status", "{}")))
    gw_.sleep(0.1)
    local log = gw_.log_text(gw)
    assert.matches('event=access peer=127.0.0.1 method=POST path="/api/v1/status" status=202 bytes=%d+ duration_ms=[%d.]+ key="tool%-executor" error=%-', log)
    assert.matches('status=429 bytes=%d+ duration_ms=[%d.]+ key="tool%-executor" error=rate_limited', log)
    assert.matches('status=400 bytes=%d+ duration_ms=[%d.]+ key="tool%-executor" error=invalid_category', log)
    assert.matches("status=415 .* error=unsupported_media_type", log)
    assert.matches("status=401 .* key=%- error=unauthorized", log)
  end)

  it("is off unless asked for", function()
    local quiet = gw_.start({})
    gw_.publish(quiet, { conversation_id = "q", category = "info", text = "x" })
    local log = gw_.log_text(quiet)
    gw_.stop(quiet)
    assert.is_nil(log:find("event=access", 1, true))
  end)
end)

describe("the command line", function()
  it("lists check-plugin in --help, answers check-plugin --help, and checks every file given", function()
    local out, rc = sh(bin .. " --help")
    assert.equal(0, rc)
    assert.matches("check%-plugin", out)
    out, rc = sh(bin .. " check-plugin --help")
    assert.equal(0, rc, out)
    assert.matches("usage: statusgw check%-plugin", out)
    local dir = tmpdir()
    write(dir .. "/bad.lua", "local P = {\nreturn P")
    out, rc = sh(bin .. " check-plugin " .. root .. "/plugins/builders.lua " .. dir .. "/bad.lua " .. root .. "/plugins/redact.lua")
    assert.equal(1, rc, out)
    assert.matches('"name": "builders"', out)
    assert.matches('"name": "redact"', out)
    -- the error names the file as given
    assert.matches(dir:gsub("%p", "%%%0") .. "/bad.lua:2:", out)
    os.execute("rm -rf " .. dir)
  end)
end)

describe("GET /api/v1/stats", function()
  it("writes rates and uptime rounded, not as raw doubles", function()
    local gw = gw_.start({})
    for i = 1, 7 do gw_.publish(gw, { conversation_id = "st", category = "info", text = tostring(i) }) end
    local _, st, _, raw = gw_.request(gw, "GET", "/api/v1/stats")
    gw_.stop(gw)
    assert.is_number(st.rate_per_s.last_1m)
    assert.is_nil(raw:find("%d%.%d%d%d%d%d"), raw)
  end)
end)

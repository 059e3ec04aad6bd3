-- The statusgw command line against the real daemon: publish (one, and
-- 10,000 in bulk from a file), tokens the gateway accepts, the admin views,
-- and exit statuses that say what went wrong (0 done, 1 refused or
-- unreachable, 2 usage or config).
package.path = "spec/helpers/?.lua;" .. package.path
local gw_ = require("gateway")
local cjson = require("cjson")

-- Run the CLI; its stdout, stderr and exit status.
local function cli(gw, args, env, stdin)
  local dir = gw_.tmpdir()
  local url = gw and ("STATUSGW_URL=http://127.0.0.1:" .. gw.port .. " ") or ""
  local cmd = string.format("%s%s %s %s >%s/out 2>%s/err%s; echo $? > %s/rc", url, env or "", gw_.bin, args, dir,
    dir, stdin and (" <" .. stdin) or " </dev/null", dir)
  os.execute(cmd)
  local function slurp(f)
    local h = io.open(dir .. "/" .. f)
    local s = h:read("a")
    h:close()
    return s
  end
  local out, err, rc = slurp("out"), slurp("err"), tonumber(slurp("rc"))
  os.execute("rm -rf " .. dir)
  return out, err, rc
end

local function history(gw, conv)
  local _, h = gw_.request(gw, "GET", "/api/v1/conversations/" .. conv .. "/history?limit=1000")
  return h
end

describe("statusgw publish", function()
  local gw
  setup(function() gw = gw_.start({ flush_interval_ms = 20, history_size = 1000 }) end)
  teardown(function() gw_.stop(gw) end)

  it("publishes one update with typed metadata, and says what it got", function()
    local out, err, rc = cli(gw, "publish cli-one tool 'Executing search_code' --meta tool=search_code --meta duration_ms=850 --meta cached=false --source cli")
    assert.equal(0, rc, err)
    assert.matches("^published cli%-one seq=1 epoch=%x+", out)
    local u = history(gw, "cli-one").updates[1]
    assert.equal("Executing search_code", u.text)
    assert.equal("search_code", u.metadata.tool)
    assert.equal(850, u.metadata.duration_ms)
    assert.equal(false, u.metadata.cached)
    assert.equal("cli", u.source)
    out, err, rc = cli(gw, "publish cli-one info again --json")
    assert.equal(0, rc, err)
    assert.equal(2, cjson.decode(out).seq)
  end)

  it("says why the gateway refused (1) and how to call it (2)", function()
    local _, err, rc = cli(gw, "publish cli-one nope 'x'")
    assert.equal(1, rc)
    assert.matches("400 invalid_category: category must be one of", err)
    _, err, rc = cli(gw, "publish cli-one")
    assert.equal(2, rc)
    assert.matches("usage: statusgw publish", err)
    _, err, rc = cli(gw, "publish a b c --meta novalue")
    assert.equal(2, rc)
    assert.matches("%-%-meta wants key=value", err)
    _, err, rc = cli(gw, "publish a info x --wat")
    assert.equal(2, rc)
    assert.matches("unknown option '%-%-wat'", err)
    local out
    out, _, rc = cli(gw, "publish --help")
    assert.equal(0, rc)
    assert.matches("%-%-bulk", out)
    _, err, rc = cli(nil, "publish a info x", "STATUSGW_URL=http://127.0.0.1:1")
    assert.equal(1, rc)
    assert.matches("cannot reach http://127%.0%.0%.1:1", err)
  end)

  it("publishes 10,000 lines in bulk from a file, with progress and a summary", function()
    local dir = gw_.tmpdir()
    local f = io.open(dir .. "/in.ndjson", "w")
    for i = 1, 10000 do
      f:write(cjson.encode({ conversation_id = "cli-bulk-" .. (i % 10), category = "progress", text = "step " .. i }), "\n")
    end
    f:close()
    local out, err, rc = cli(gw, "publish --bulk", nil, dir .. "/in.ndjson")
    assert.equal(0, rc, err)
    assert.equal("10000 updates: 10000 accepted, 0 refused\n", out)
    assert.matches("10000 lines sent, 10000 accepted, 0 refused", err) -- the progress line
    local total = 0
    for i = 0, 9 do total = total + history(gw, "cli-bulk-" .. i).last_seq end
    assert.equal(10000, total)
    os.execute("rm -rf " .. dir)
  end)

  it("counts refused lines in bulk and names them, exit 1", function()
    local dir = gw_.tmpdir()
    local f = io.open(dir .. "/in.ndjson", "w")
    f:write('{"conversation_id":"cli-mixed","category":"info","text":"ok"}\n')
    f:write('{"conversation_id":"cli-mixed","category":"bogus","text":"bad"}\n')
    f:write("\n")
    f:write("not json\n")
    f:write('{"conversation_id":"cli-mixed","category":"info","text":"ok too"}\n')
    f:close()
    local out, err, rc = cli(gw, "publish --bulk", nil, dir .. "/in.ndjson")
    assert.equal(1, rc)
    assert.equal("4 updates: 2 accepted, 2 refused\n", out)
    assert.matches("line 2: invalid_category", err)
    assert.matches("line 4: invalid_json", err)
    assert.equal(2, history(gw, "cli-mixed").last_seq)
    os.execute("rm -rf " .. dir)
  end)
end)

describe("statusgw token", function()
  local secret = "cli-spec-jwt-secret-0123456789abcdef01"
  local dir, cfg, gw
  setup(function()
    dir = gw_.tmpdir()
    cfg = dir .. "/statusgw.lua"
    gw_.write_file(cfg, string.format("return { plugins_dir = %q, security = { jwt_secret = %q, api_keys = { { key = 'pk_cli_0123456789abcdef', name = 'cli' } }, admin_key = 'admin_cli_0123456789' } }", dir, secret))
    gw = gw_.start({ flush_interval_ms = 20, security = { jwt_secret = secret,
      api_keys = { { key = "pk_cli_0123456789abcdef", name = "cli" } }, admin_key = "admin_cli_0123456789" } })
  end)
  teardown(function()
    gw_.stop(gw)
    os.execute("rm -rf " .. dir)
  end)

  it("mints a token the gateway accepts for its conversations only", function()
    local out, err, rc = cli(nil, "token --config " .. cfg .. " --sub alice --conversations 'team-a-*,shared' --ttl 10m")
    assert.equal(0, rc, err)
    local tok = out:gsub("%s+$", "")
    assert.matches("^[%w_-]+%.[%w_-]+%.[%w_-]+$", tok)
    local s, status = gw_.sse(gw, "/api/v1/conversations/team-a-1/events?token=" .. tok)
    assert.truthy(s, tostring(status))
    s:close()
    local _, st = gw_.sse(gw, "/api/v1/conversations/team-b-1/events?token=" .. tok)
    assert.equal(403, st)
    -- an admin token reads every conversation
    out = cli(nil, "token --config " .. cfg .. " --sub ops --admin")
    s = gw_.sse(gw, "/api/v1/events?conversations=*&token=" .. out:gsub("%s+$", ""))
    assert.truthy(s)
    s:close()
  end)

  it("refuses what it cannot sign (2)", function()
    local _, err, rc = cli(nil, "token --sub alice")
    assert.equal(2, rc)
    assert.matches("usage: statusgw token", err)
    local plain = dir .. "/plain.lua"
    gw_.write_file(plain, "return {}")
    _, err, rc = cli(nil, "token --config " .. plain .. " --sub a --admin")
    assert.equal(2, rc)
    assert.matches("sets no security.jwt_secret", err)
    _, err, rc = cli(nil, "token --config " .. cfg .. " --sub a --admin --ttl forever")
    assert.equal(2, rc)
    assert.matches("%-%-ttl wants", err)
  end)

  it("shows the admin views as tables with the admin key, and says how to pass it", function()
    cli(gw, "publish cli-view info hello", "STATUSGW_API_KEY=pk_cli_0123456789abcdef")
    local out, err, rc = cli(gw, "stats", "STATUSGW_ADMIN_KEY=admin_cli_0123456789")
    assert.equal(0, rc, err)
    assert.matches("published 1 ", out)
    assert.matches("cli%-view", out)
    out, err, rc = cli(gw, "plugins --key admin_cli_0123456789")
    assert.equal(0, rc, err)
    assert.matches("PLUGIN%s+STATE%s+CALLS", out)
    out, err, rc = cli(gw, "webhooks --key admin_cli_0123456789")
    assert.equal(0, rc, err)
    assert.matches("ENDPOINT%s+STATE%s+QUEUE", out)
    assert.matches("no webhook endpoint configured", out)
    _, err, rc = cli(gw, "plugins")
    assert.equal(1, rc)
    assert.matches("401 unauthorized", err)
    assert.matches("STATUSGW_ADMIN_KEY", err)
    out, _, rc = cli(nil, "help")
    assert.equal(0, rc)
    for _, c in ipairs({ "publish", "token", "stats", "plugins", "webhooks" }) do assert.matches(c, out) end
  end)
end)

describe("statusgw tail", function()
  local dir, gw
  local stops = {} -- every tail started, stopped even when an assertion fails
  before_each(function() dir = gw_.tmpdir() end)
  after_each(function()
    for _, stop in ipairs(stops) do stop() end
    stops = {}
    if gw then pcall(gw_.stop, gw) end
    os.execute("rm -rf " .. dir)
  end)

  -- the tail in the background; returns a function that reads what it
  -- printed so far, and one that stops it
  local function follow(port, args)
    os.execute(string.format("STATUSGW_URL=http://127.0.0.1:%d %s tail %s >%s/tail.out 2>%s/tail.err & echo $! >%s/tail.pid",
      port, gw_.bin, args, dir, dir, dir))
    local function read(f)
      local h = io.open(dir .. "/" .. f)
      local s = h and h:read("a") or ""
      if h then h:close() end
      return s
    end
    local pid = read("tail.pid"):gsub("%s+", "")
    local function stop() os.execute("kill " .. pid .. " 2>/dev/null") end
    stops[#stops + 1] = stop
    return function() return read("tail.out"), read("tail.err") end, stop
  end

  local function wait_for(readf, pattern)
    for _ = 1, 100 do
      local out, err = readf()
      if out:find(pattern) then return out, err end
      gw_.sleep(0.05)
    end
    return readf()
  end

  it("follows conversations, resumes across a gateway restart without a duplicate, and shows a gap", function()
    local opts = { store = "sqlite", store_path = dir .. "/s.db", plugins_dir = dir, flush_interval_ms = 20, history_size = 3, sse_retry_ms = 200 }
    gw = gw_.start(opts)
    opts.port = gw.port
    local read, stop = follow(gw.port, "ta tb --json")
    gw_.sleep(0.3)
    gw_.publish(gw, { conversation_id = "ta", category = "tool", text = "one", metadata = { tool = "x" } })
    gw_.publish(gw, { conversation_id = "tb", category = "error", text = "two" })
    wait_for(read, '"two"')
    gw_.stop(gw)
    gw = gw_.start(opts)
    gw_.publish(gw, { conversation_id = "tb", category = "info", text = "three" })
    local out, err = wait_for(read, '"three"')
    stop()
    local texts = {}
    for line in out:gmatch("[^\n]+") do texts[#texts + 1] = cjson.decode(line).text end
    assert.same({ "one", "two", "three" }, texts, err)
    assert.matches("reconnecting", err)
    -- human lines, and a gap when history no longer holds what was missed
    read, stop = follow(gw.port, "ta")
    gw_.sleep(0.3)
    gw_.publish(gw, { conversation_id = "ta", category = "tool", text = "four", metadata = { tool = "search_code", ms = 5 } })
    out = wait_for(read, "four")
    assert.matches("tool%s+ta%s+four%s+", out)
    assert.matches("tool=search_code", out)
    assert.matches("ms=5", out)
    gw_.stop(gw)
    gw = gw_.start(opts)
    for i = 5, 9 do gw_.publish(gw, { conversation_id = "ta", category = "info", text = "n" .. i }) end
    out = wait_for(read, "n9")
    stop()
    assert.matches("%-%- gap in ta: seqs %d+%-%d+ are lost %(history_trimmed%)", out)
    assert.is_nil(out:find("n5", 1, true)) -- trimmed, and said so
  end)

  it("refuses what it cannot follow", function()
    gw = gw_.start({})
    local _, err, rc = cli(gw, "tail")
    assert.equal(2, rc)
    assert.matches("usage: statusgw tail", err)
    _, err, rc = cli(gw, "tail 'bad id'")
    assert.equal(2, rc)
    assert.matches("not a conversation id", err)
    _, err, rc = cli(gw, "tail '*'") -- every conversation is --all, with an admin token
    assert.equal(2, rc)
  end)
end)

-- plugins/redact.lua, run in the real plugin host.
local ph = require("plugin_host")

-- The update as the filter leaves it (it must keep it).
local function run(host, u)
  u.category = u.category or "info"
  local keep, out = host:filter(u)
  assert.is_true(keep)
  return out
end

describe("redact plugin", function()
  local host
  setup(function()
    host = ph.host({ "plugins/redact.lua" }, { plugins = { redact = { patterns = { "%d%d%d%-%d%d%-%d%d%d%d" }, keys = { "ssn" } } } })
  end)

  local function filtered(u) return run(host, u) end

  it("masks bearer tokens in text", function()
    local u = filtered({ text = "calling with Authorization: Bearer eyJhbGciOi.abc-def_123" })
    assert.equal("calling with Authorization: Bearer [REDACTED]", u.text)
  end)

  it("masks API keys of common shapes", function()
    local u = filtered({ text = "key sk-proj-abcdef1234567890 and ghp_abcdefABCDEF123456 and AKIAABCDEFGHIJKLMNOP" })
    assert.is_nil(u.text:find("sk%-proj"))
    assert.is_nil(u.text:find("ghp_abc"))
    assert.is_nil(u.text:find("AKIAABCD"))
    assert.equal(3, select(2, u.text:gsub("%[REDACTED%]", "")))
  end)

  it("masks api_key assignments", function()
    local u = filtered({ text = "GET /v1?api_key=abc123&x=1" })
    assert.equal("GET /v1?api_key=[REDACTED]&x=1", u.text)
  end)

  it("masks assignments to secret key names in text: password=, token:, any case", function()
    assert.equal("login password=[REDACTED] ok", filtered({ text = "login password=hunter2 ok" }).text)
    assert.equal("Token: [REDACTED], user: bob", filtered({ text = "Token: abc123, user: bob" }).text)
    assert.equal("PASSWD = [REDACTED]", filtered({ text = "PASSWD = s3cr3t" }).text)
    assert.equal("secret_sauce=ketchup", filtered({ text = "secret_sauce=ketchup" }).text)
  end)

  it("masks configured patterns", function()
    assert.equal("ssn [REDACTED] on file", filtered({ text = "ssn 123-45-6789 on file" }).text)
  end)

  it("masks secrets in metadata, nested, by value and by key name", function()
    local u = filtered({ text = "ok", metadata = { headers = { authorization = "Basic Zm9vOmJhcg==" },
      params = { password = "hunter2", q = "use sk-live-abcdefghijkl" }, ssn = "x", tool = "search" } })
    assert.equal("[REDACTED]", u.metadata.headers.authorization)
    assert.equal("[REDACTED]", u.metadata.params.password)
    assert.equal("use [REDACTED]", u.metadata.params.q)
    assert.equal("[REDACTED]", u.metadata.ssn)
    assert.equal("search", u.metadata.tool)
  end)

  it("leaves clean updates alone", function()
    local u = filtered({ conversation_id = "c1", text = "Executing search_code", metadata = { tool = "search_code" } })
    assert.equal("Executing search_code", u.text)
    assert.equal("search_code", u.metadata.tool)
  end)
end)

describe("redact plugin without configured patterns", function()
  -- Without patterns the gateway calls the filter only for updates that
  -- hold a probe word or a secret key name (filter_when); these cover that
  -- path: each secret must still be found through it.
  local host
  setup(function() host = ph.host({ "plugins/redact.lua" }) end)

  local function filtered(u) return run(host, u) end

  it("masks a secret in the text", function()
    assert.equal("use [REDACTED] now", filtered({ text = "use sk-live-abcdefghijkl now" }).text)
    assert.equal("retry with password=[REDACTED]", filtered({ text = "retry with password=hunter2" }).text)
  end)

  it("masks a secret in a nested metadata string and under a secret key name", function()
    local u = filtered({ text = "ok", metadata = { a = { b = { c = "Bearer abc.def" } }, Password = "hunter2" } })
    assert.equal("Bearer [REDACTED]", u.metadata.a.b.c)
    assert.equal("[REDACTED]", u.metadata.Password)
  end)

  it("leaves an update without secrets as it is, metadata included", function()
    local u = filtered({ text = "Running search_code", metadata = { tool = "search_code", params = { q = "retry loop", limit = 10 } } })
    assert.equal("Running search_code", u.text)
    assert.same({ tool = "search_code", params = { q = "retry loop", limit = 10 } }, u.metadata)
  end)

  it("is called only for updates that hold a probe word or a secret key name", function()
    local fresh = ph.host({ "plugins/redact.lua" }, { plugins = { redact = { keys = { "SSN" } } } })
    run(fresh, { text = "Running search_code", metadata = { tool = "search_code" } })
    run(fresh, { text = "ok", metadata = { ssn = "123" } })
    local p = fresh:admin().plugins[1]
    assert.equal(1, p.counters.calls)
    assert.equal(1, p.counters.skipped)
    local words = {}
    for _, w in ipairs(p.provides.filter_when) do words[w] = true end
    assert.is_true(words.bearer and words.password and words.secret and words.ssn)
    assert.is_nil(words.access_token) -- "token" already covers it
  end)

  it("is called for every update when patterns are configured", function()
    local p = ph.host({ "plugins/redact.lua" }, { plugins = { redact = { patterns = { "x" } } } }):admin().plugins[1]
    assert.are_not.equal("table", type(p.provides.filter_when)) -- JSON null: no words, every update
  end)
end)

-- plugins/builders.lua, run in the real plugin host.
local ph = require("plugin_host")

describe("builders plugin", function()
  local raw_host
  setup(function() raw_host = ph.host({ "plugins/builders.lua" }) end)

  -- The host stamps every built metadata with a timestamp (DESIGN §5);
  -- the assertions below are about what each builder computes.
  local host = {
    build = function(_, ...)
      local st, md, text = raw_host:build(...)
      if md then
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", md.timestamp)
        md.timestamp = nil
      end
      return st, md, text
    end,
  }

  it("builds llm metadata", function()
    local st, md = host:build("llm", { model = "gpt-4", provider = "openai" }, { text = "x" })
    assert.equal("ok", st)
    assert.same({ model = "gpt-4", provider = "openai" }, md)
  end)

  it("builds tool metadata, cutting string params over 100 bytes to 100 + ...", function()
    local long = string.rep("q", 150)
    local st, md = host:build("tool", { tool_name = "search_code", params = { query = long, n = 5, short = "ok" } }, {})
    assert.equal("ok", st)
    assert.equal("search_code", md.tool)
    assert.equal(string.rep("q", 100) .. "...", md.params.query)
    assert.equal(5, md.params.n)
    assert.equal("ok", md.params.short)
  end)

  it("cuts a param before a UTF-8 character that would straddle byte 100", function()
    -- 99 ASCII bytes, then "é" (2 bytes) over bytes 100 and 101
    local _, md = host:build("tool", { tool_name = "t", params = { q = string.rep("a", 99) .. "é" .. "zz" } }, {})
    assert.equal(string.rep("a", 99) .. "...", md.params.q)
    -- "✓" (3 bytes) ending exactly at byte 100 stays
    _, md = host:build("tool", { tool_name = "t", params = { q = string.rep("a", 97) .. "✓" .. "zz" } }, {})
    assert.equal(string.rep("a", 97) .. "✓...", md.params.q)
  end)

  it("keeps a param of exactly 100 bytes whole", function()
    local _, md = host:build("tool", { tool_name = "t", params = { q = string.rep("a", 100) } }, {})
    assert.equal(string.rep("a", 100), md.params.q)
  end)

  it("builds workflow progress and percentage, safe for a total of 0", function()
    local _, md = host:build("workflow", { workflow = "deploy", completed_steps = 3, total_steps = 7 }, {})
    assert.same({ workflow = "deploy", progress = "3/7", percentage = 43 }, md)
    _, md = host:build("workflow", { workflow = "empty", completed_steps = 0, total_steps = 0 }, {})
    assert.equal("0/0", md.progress)
    assert.equal(0, md.percentage)
  end)

  it("builds error metadata", function()
    local _, md = host:build("error", { error_type = "timeout", message = "upstream took 30s" }, {})
    assert.same({ error_type = "timeout", message = "upstream took 30s" }, md)
  end)

  it("formats durations as ms, seconds and minutes", function()
    local cases = { { 850, "850ms" }, { 1500, "1.5s" }, { 66000, "1.1m" }, { 0, "0ms" }, { 999, "999ms" }, { 1000, "1.0s" } }
    for _, c in ipairs(cases) do
      local _, md = host:build("timing", { duration_ms = c[1] }, {})
      assert.equal(c[1], md.duration_ms)
      assert.equal(c[2], md.duration_human)
    end
  end)

  it("computes the duration from started_at_ms", function()
    local now = os.time() * 1000
    local _, md = host:build("timing", { started_at_ms = now - 2500 }, {})
    assert.is_true(md.duration_ms >= 1500 and md.duration_ms < 10000)
    assert.matches("^%d+%.%ds$", md.duration_human)
  end)

  it("builds progress and suffixes the text with the percentage", function()
    local st, md, text = host:build("progress", { current = 3, total = 10 }, { text = "Indexing files" })
    assert.equal("ok", st)
    assert.same({ current = 3, total = 10, percentage = 30, progress = "3/10" }, md)
    assert.equal("Indexing files (30%)", text)
    local _, md0, t0 = host:build("progress", { current = 0, total = 0 }, { text = "Waiting" })
    assert.equal(0, md0.percentage)
    assert.equal("Waiting (0%)", t0)
  end)

  it("says unknown for a builder nobody provides", function()
    assert.equal("unknown", (host:build("nope", {}, {})))
  end)
end)

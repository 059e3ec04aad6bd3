-- The status model, through the gateway's own C validation and encoding.
local model = require("statusgw_model")
local cjson = require("cjson")

local function check(t)
  return model.validate(cjson.encode(t))
end

describe("status model validation", function()
  it("accepts a full update", function()
    local ok, conv, cat = check({ conversation_id = "conv-123", category = "tool",
      text = "Executing search_code", metadata = { tool = "search_code" }, source = "tool-executor" })
    assert.is_true(ok)
    assert.equal("conv-123", conv)
    assert.equal("tool", cat)
  end)

  it("routes a null or missing conversation_id to system", function()
    local ok, conv = model.validate('{"conversation_id":null,"category":"info","text":"x"}')
    assert.is_true(ok); assert.equal("system", conv)
    ok, conv = check({ category = "info", text = "x" })
    assert.is_true(ok); assert.equal("system", conv)
  end)

  it("knows the seven original categories and summary, with descriptions", function()
    local cats = model.categories()
    for _, c in ipairs({ "engine", "tool", "workflow", "progress", "error", "info", "planning", "summary" }) do
      assert.is_string(cats[c])
      assert.is_true((check({ category = c, text = "x" })))
    end
    assert.equal("Tool execution status", cats.tool)
    assert.equal("Planning and decision-making updates", cats.planning)
  end)

  local bad = {
    { "an unknown category", { category = "bogus", text = "x" }, "invalid_category", "category" },
    { "a missing category", { text = "x" }, "missing_category", "category" },
    { "a category of the wrong type", { category = 3, text = "x" }, "invalid_category", "category" },
    { "a missing text", { category = "info" }, "missing_text", "text" },
    { "a text of the wrong type", { category = "info", text = { 1 } }, "invalid_text", "text" },
    { "a text over 4 KiB", { category = "info", text = string.rep("a", 4097) }, "text_too_long", "text" },
    { "metadata that is not an object", { category = "info", text = "x", metadata = { 1, 2 } }, "invalid_metadata", "metadata" },
    { "metadata over 64 KiB", { category = "info", text = "x", metadata = { big = string.rep("b", 65536) } }, "metadata_too_large", "metadata" },
    { "a conversation id with a space", { conversation_id = "a b", category = "info", text = "x" }, "invalid_conversation_id", "conversation_id" },
    { "a conversation id over 128 bytes", { conversation_id = string.rep("c", 129), category = "info", text = "x" }, "invalid_conversation_id", "conversation_id" },
    { "an empty conversation id", { conversation_id = "", category = "info", text = "x" }, "invalid_conversation_id", "conversation_id" },
    { "a numeric conversation id", { conversation_id = 5, category = "info", text = "x" }, "invalid_conversation_id", "conversation_id" },
    { "a source of the wrong type", { category = "info", text = "x", source = 1 }, "invalid_field", "source" },
    { "an unknown field", { category = "info", text = "x", colour = "red" }, "unknown_field", nil },
    { "args without a builder", { category = "info", text = "x", args = { a = 1 } }, "invalid_field", "args" },
  }
  for _, case in ipairs(bad) do
    it("rejects " .. case[1] .. " with " .. case[3], function()
      local ok, code, msg, field = check(case[2])
      assert.is_false(ok)
      assert.equal(case[3], code)
      assert.is_string(msg)
      assert.equal(case[4], field)
    end)
  end

  it("accepts a text of exactly 4 KiB", function()
    assert.is_true((check({ category = "info", text = string.rep("a", 4096) })))
  end)

  it("rejects a body that is not an object", function()
    local ok, code = model.validate("[1,2]")
    assert.is_false(ok); assert.equal("invalid_body", code)
  end)

  it("rejects malformed JSON and bad UTF-8 with distinct codes", function()
    local ok, code = model.validate('{"category":')
    assert.is_false(ok); assert.equal("invalid_json", code)
    ok, code = model.validate('{"category":"info","text":"\xff\xfe"}')
    assert.is_false(ok); assert.equal("invalid_utf8", code)
  end)

  it("rejects a NUL inside the text", function()
    local ok, code = model.validate('{"category":"info","text":"a\\u0000b"}')
    assert.is_false(ok)
    assert.is_truthy(code == "invalid_text" or code == "invalid_json")
  end)

  it("accepts every character the id alphabet allows", function()
    assert.is_true(model.conv_id_valid("A-z.0_9:@x"))
    assert.is_false(model.conv_id_valid("a/b"))
    assert.is_false(model.conv_id_valid("é"))
  end)
end)

describe("status model encoding", function()
  it("encodes the delivered object once, with seq and millisecond UTC timestamp", function()
    local s = model.encode(cjson.encode({ conversation_id = "c1", category = "tool", text = "hi \"there\"\n",
      metadata = { n = 1 }, source = "svc" }), 42, 1795771964123)
    local u = cjson.decode(s)
    assert.equal("c1", u.conversation_id)
    assert.equal(42, u.seq)
    assert.equal("tool", u.category)
    assert.equal("hi \"there\"\n", u.text)
    assert.same({ n = 1 }, u.metadata)
    assert.equal("svc", u.source)
    assert.equal(model.format_ts(1795771964123), u.timestamp)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.123Z$", u.timestamp)
    assert.is_nil(s:find("\n", 1, true)) -- one line: safe in an SSE data field
  end)

  it("gives an update without metadata an empty object and omits a missing source", function()
    local u = cjson.decode(model.encode('{"category":"info","text":"x"}', 1, 0))
    assert.same({}, u.metadata)
    assert.is_nil(u.source)
    assert.equal("1970-01-01T00:00:00.000Z", u.timestamp)
    assert.equal("system", u.conversation_id)
  end)

  it("keeps UTF-8 text as it was sent", function()
    local u = cjson.decode(model.encode(cjson.encode({ category = "info", text = "Grüße ✓" }), 1, 0))
    assert.equal("Grüße ✓", u.text)
  end)
end)

describe("category lists", function()
  it("parses comma-separated names and *", function()
    assert.same({ "tool", "error" }, model.parse_categories("error,tool"))
    assert.equal(8, #model.parse_categories("*"))
    local none, bad = model.parse_categories("tool,nope")
    assert.is_nil(none)
    assert.equal("nope", bad)
  end)
end)

describe("the JSON scanner under a publish", function()
  -- Publishes are read by the gateway's own scanner (src/jtext.c), as
  -- strictly as jansson with duplicate keys refused; what the update
  -- carries is the canonical compact form of what was sent.
  local function meta(json)
    return model.encode('{"category":"info","text":"x","metadata":' .. json .. '}', 1, 0)
      :match('"metadata":(.*),"timestamp"')
  end

  local function refused(body)
    local ok, code = model.validate(body)
    assert.is_false(ok, body)
    return code
  end

  it("keeps metadata compact and as sent, whitespace gone", function()
    assert.equal('{"a":[1,2.50,-3e2,true,false,null],"b":{"c":"d"}}',
      meta(' { "a" : [ 1 , 2.50 , -3e2 , true , false , null ] ,\n\t"b" : { "c" : "d" } } '))
  end)

  it("decodes escapes it need not keep and keeps the ones JSON needs", function()
    assert.equal('{"s":"é/😀\\"\\\\\\n\\u0001"}', meta('{"s":"\\u00e9\\/\\ud83d\\ude00\\"\\\\\\n\\u0001"}'))
    local ok, _, _ = model.validate('{"category":"info","text":"caf\\u00e9"}')
    assert.is_true(ok)
  end)

  it("refuses broken escapes, lone surrogates and \\u0000", function()
    for _, s in ipairs({ '"\\x"', '"\\u12"', '"\\ud83d"', '"\\ude00"', '"\\ud83dx"', '"a\\u0000"' }) do
      assert.equal("invalid_json", refused('{"category":"info","text":' .. s .. '}'))
    end
  end)

  it("refuses bad UTF-8 anywhere, overlong forms and encoded surrogates included", function()
    for _, s in ipairs({ "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80", "\xe2\x82" }) do
      assert.equal("invalid_utf8", refused('{"category":"info","text":"x","metadata":{"k":"' .. s .. '"}}'))
    end
  end)

  it("refuses duplicate keys at any depth, in small and large objects", function()
    assert.equal("invalid_json", refused('{"category":"info","text":"x","metadata":{"a":{"b":1,"b":2}}}'))
    local keys = {}
    for i = 1, 40 do keys[#keys + 1] = string.format('"k%d":%d', i, i) end
    local big = "{" .. table.concat(keys, ",") .. "}"
    assert.is_true((model.validate('{"category":"info","text":"x","metadata":' .. big .. '}')))
    keys[#keys + 1] = '"k17":0'
    assert.equal("invalid_json", refused('{"category":"info","text":"x","metadata":{' .. table.concat(keys, ",") .. '}}'))
  end)

  it("refuses integers past 64 bits, infinite reals, deep nesting and trailing data", function()
    assert.equal("invalid_json", refused('{"category":"info","text":"x","metadata":{"n":9223372036854775808}}'))
    assert.is_true((model.validate('{"category":"info","text":"x","metadata":{"n":-9223372036854775808}}')))
    assert.equal("invalid_json", refused('{"category":"info","text":"x","metadata":{"n":1e400}}'))
    assert.equal("invalid_json", refused('{"category":"info","text":"x","metadata":{"n":' .. string.rep("[", 70) .. string.rep("]", 70) .. '}}'))
    assert.equal("invalid_json", refused('{"category":"info","text":"x"} {}'))
    for _, n in ipairs({ "01", "1.", ".5", "-", "1e", "+1", "0x10" }) do
      assert.equal("invalid_json", refused('{"category":"info","text":"x","metadata":{"n":' .. n .. '}}'))
    end
  end)
end)

-- slack.lua in the real plugin host: Block Kit as Slack documents it.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "slack.lua", config) end
local function update(seq, category, text, metadata)
  return { conversation_id = "conv-1", seq = seq, category = category, text = text, metadata = metadata or {},
    timestamp = "2026-12-06T10:00:00.000Z", source = "tool-executor" }
end

describe("slack forwarder", function()
  it("makes a header, a section and a context block per update, and a fallback text", function()
    local h = host({ enabled = true, title = "prod" })
    assert.is_true(h:webhook_match("slack", update(1, "info", "x")))
    local body = sgp.json.decode((h:webhook_format("slack", {
      update(1, "tool", "Executing <search> & more", { tool = "search_code", duration_human = "1.5s" }),
      update(2, "error", "timeout", { error_type = "timeout" }),
    })))
    assert.equal("prod: Executing <search> & more (+1 more)", body.text)
    local b = body.blocks
    assert.equal(5, #b)
    assert.same({ type = "header", text = { type = "plain_text", text = "prod: 2 updates" } }, b[1])
    assert.equal("section", b[2].type)
    assert.equal("mrkdwn", b[2].text.type)
    assert.equal(":wrench: *tool* · `conv-1` Executing &lt;search&gt; &amp; more", b[2].text.text)
    assert.equal("context", b[3].type)
    assert.equal("mrkdwn", b[3].elements[1].type)
    assert.equal("tool: search_code · duration_human: 1.5s · seq 1 · from tool-executor", b[3].elements[1].text)
    assert.matches("^:red_circle: %*error%*", b[4].text.text)
  end)

  it("keeps within Slack's limits: 50 blocks, 3,000 characters a section, 150 a header", function()
    local h = host({ enabled = true, title = string.rep("t", 200) })
    local many = {}
    for i = 1, 40 do many[i] = update(i, "info", string.rep("é", 2000)) end
    local body = sgp.json.decode((h:webhook_format("slack", many)))
    assert.equal(1 + 2 * 20 + 1, #body.blocks)
    assert.is_true(#body.blocks <= 50)
    assert.equal("…and 20 more", body.blocks[#body.blocks].elements[1].text)
    assert.is_true(#body.blocks[1].text.text <= 150)
    for _, block in ipairs(body.blocks) do
      if block.type == "section" then assert.is_true(#block.text.text <= 3000) end
    end
  end)

  it("checks its settings", function()
    local _, report = sgp.host(here .. "slack.lua", { plugins = { slack = { enabled = true, max_updates = 30 } } })
    assert.equal(1, #report.failed)
    assert.matches("max_updates must be 1 to 24", report.failed[1].error)
    _, report = sgp.host(here .. "slack.lua", { plugins = { slack = { titel = "x" } } })
    assert.equal(1, #report.failed)
    assert.matches("did you mean 'title'", report.failed[1].error)
  end)
end)

-- teams.lua in the real plugin host: a message carrying an Adaptive Card.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "teams.lua", config) end
local function update(seq, category, text, metadata)
  return { conversation_id = "conv-2", seq = seq, category = category, text = text, metadata = metadata or {},
    timestamp = "2026-12-06T10:00:00.000Z" }
end

describe("teams forwarder", function()
  it("sends a message with one Adaptive Card 1.4 attachment", function()
    local h = host({ enabled = true, title = "Prod", max_updates = 2 })
    local body = sgp.json.decode((h:webhook_format("teams", {
      update(1, "workflow", "Workflow deploy 3/7", { workflow = "deploy", progress = "3/7" }),
      update(2, "error", "deploy failed"),
      update(3, "info", "third"),
    })))
    assert.equal("message", body.type)
    assert.equal(1, #body.attachments)
    local a = body.attachments[1]
    assert.equal("application/vnd.microsoft.card.adaptive", a.contentType)
    local card = a.content
    assert.same({ "http://adaptivecards.io/schemas/adaptive-card.json", "AdaptiveCard", "1.4" },
      { card["$schema"], card.type, card.version })
    assert.equal("Prod: 3 updates", card.body[1].text)
    local c = card.body[2]
    assert.equal("Container", c.type)
    assert.same({ "TextBlock", "workflow · conv-2", "Accent" }, { c.items[1].type, c.items[1].text, c.items[1].color })
    assert.equal("Workflow deploy 3/7", c.items[2].text)
    assert.equal("FactSet", c.items[3].type)
    assert.same({ { title = "progress", value = "3/7" }, { title = "workflow", value = "deploy" }, { title = "seq", value = "1" } },
      c.items[3].facts)
    assert.equal("Attention", card.body[3].items[1].color)
    assert.equal("…and 1 more", card.body[4].text)
  end)
end)

-- discord.lua in the real plugin host: embeds as Discord documents them.
local sgp = require("statusgw_plugin")
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local function host(config) return sgp.plugin(here .. "discord.lua", config) end
local function update(seq, category, text, metadata)
  return { conversation_id = "conv-1", seq = seq, category = category, text = text, metadata = metadata or {},
    timestamp = "2026-12-06T10:00:00.000Z", source = "llm-service" }
end

describe("discord forwarder", function()
  it("makes one embed per update: title, description, colour, timestamp, fields, footer", function()
    local h = host({ enabled = true, username = "ops-bot" })
    local body = sgp.json.decode((h:webhook_format("discord", {
      update(7, "error", "gpt-4 timed out", { model = "gpt-4", error_type = "timeout", ignored = "x" }),
    })))
    assert.equal("ops-bot", body.username)
    assert.is_nil(body.content)
    local e = body.embeds[1]
    assert.equal("error · conv-1", e.title)
    assert.equal("gpt-4 timed out", e.description)
    assert.equal(0xE01E5A, e.color)
    assert.equal("2026-12-06T10:00:00.000Z", e.timestamp)
    assert.same({ { name = "model", value = "gpt-4", inline = true }, { name = "error_type", value = "timeout", inline = true } },
      e.fields)
    assert.same({ text = "seq 7 · llm-service" }, e.footer)
  end)

  it("keeps within 10 embeds and 6,000 characters, and says how many more", function()
    local h = host()
    local many = {}
    for i = 1, 15 do many[i] = update(i, "tool", string.rep("ü", 3000), { tool = string.rep("t", 300) }) end
    local body = sgp.json.decode((h:webhook_format("discord", many)))
    assert.equal(10, #body.embeds)
    assert.equal("…and 5 more updates", body.content)
    local total = 0
    for _, e in ipairs(body.embeds) do
      total = total + utf8.len(e.title) + utf8.len(e.description or "") + utf8.len(e.footer.text)
      for _, f in ipairs(e.fields) do total = total + #f.name + utf8.len(f.value) end
      assert.is_true(utf8.len(e.description) <= 4096)
    end
    assert.is_true(total <= 6000, "total " .. total)
  end)
end)

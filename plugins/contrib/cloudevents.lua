-- cloudevents.lua: a webhook forwarder that sends each batch as CloudEvents
-- 1.0 in the structured JSON batch format
-- (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md#4-json-batch-format):
-- a JSON array of events, Content-Type application/cloudevents-batch+json.
-- Each update is one event: id "<conversation>:<seq>", source
-- "<source_prefix>/conversations/<conversation>", type
-- "<type_prefix>.<category>" (io.statusgw.status.tool, …), subject its
-- producer's source, time its timestamp, and the update as data.
--
-- Off until enabled. Config:
--   plugins = { cloudevents = { enabled = true, source_prefix = "https://status.example.com" } },
--   webhooks = { endpoints = { { name = "events", forwarder = "cloudevents",
--     url = "https://events.example.com/ingest", secrets = { "whsec_..." } } } },
--
-- Settings: source_prefix (a URI reference, default "/statusgw"),
-- type_prefix (default "io.statusgw.status").

local P = { name = "cloudevents", enabled = false, settings = { source_prefix = "string", type_prefix = "string" } }

local source_prefix, type_prefix = "/statusgw", "io.statusgw.status"

function P.init(config)
  source_prefix = (config.source_prefix or source_prefix):gsub("/+$", "")
  type_prefix = config.type_prefix or type_prefix
end

P.webhooks = {
  cloudevents = {
    match = function(update) return true end,
    format = function(updates)
      local events = {}
      for i, u in ipairs(updates) do
        events[i] = {
          specversion = "1.0",
          id = u.conversation_id .. ":" .. u.seq,
          source = source_prefix .. "/conversations/" .. u.conversation_id,
          type = type_prefix .. "." .. u.category,
          subject = u.source,
          time = u.timestamp,
          datacontenttype = "application/json",
          data = u,
        }
      end
      return statusgw.json.encode(events), { ["Content-Type"] = "application/cloudevents-batch+json" }
    end,
  },
}

return P

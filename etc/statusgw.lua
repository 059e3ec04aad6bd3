-- statusgw configuration: a Lua file that returns a table.
-- Every key is optional; the value shown is the default.
-- Command-line flags (--listen, --plugins, --log-level) override this file.
return {
  -- Address and port to listen on. With no API keys configured the gateway
  -- should stay on loopback.
  listen = "127.0.0.1:4000",

  -- Directory of Lua plugins loaded at start. Relative paths in this file
  -- are relative to the file's own directory.
  plugins_dir = "../plugins",

  -- debug, info, warn or error. Logs are one line per event, key=value.
  log_level = "info",

  -- One log line per HTTP request (event=access: method, path, status,
  -- bytes, duration, the API key's name, the error code of a refusal).
  access_log = false,

  -- Broadcaster: a conversation's queue is flushed to subscribers when it
  -- holds batch_size updates or flush_interval_ms after its first update.
  batch_size = 10,
  flush_interval_ms = 100,

  -- Conversations kept at once. Past it the least recently active one with
  -- no subscribers is evicted (its history goes with it, and its epoch
  -- changes); if every one has subscribers, new conversations get 429.
  max_conversations = 10000,

  -- Every cleanup_interval_s, conversations idle for conversation_ttl_s
  -- with no subscribers are forgotten.
  cleanup_interval_s = 300,
  conversation_ttl_s = 1800,

  -- Updates kept per conversation for history and resume.
  history_size = 100,

  -- Where history, sequence numbers, epochs and idempotency keys live.
  -- "sqlite": on disk, so a restart is invisible to clients: conversations
  -- keep their epoch and seq, a client that resumes gets what it missed, a
  -- producer's retry is still deduplicated, webhook batches still queued
  -- are sent. An update is acknowledged (202) and delivered once it is
  -- in the store's log (store_path .. "-log" and "-log2"), which is
  -- applied to the database every two seconds. "memory": nothing survives a restart
  -- (tests, ephemeral use).
  store = "sqlite",
  -- Relative to this file; its folder is made when missing.
  store_path = "../var/statusgw.db",
  -- SQLite's synchronous in WAL mode: "normal" survives a crash of the
  -- process, "full" also a power cut, "off" neither.
  store_sync = "normal",
  -- Recent updates the sqlite store keeps in memory; older ones are read
  -- from the file when asked for.
  cache_bytes = 67108864,

  -- Several gateways as one (docs/cluster.md): "redis" keeps seqs, epochs,
  -- history and idempotency keys in Redis and carries every update to
  -- every gateway over Pub/Sub, so a producer may publish on any gateway
  -- and a client resume on any; store is then unused. "local": this
  -- process alone.
  -- engine = "redis",
  -- redis = {
  --   addresses = { "127.0.0.1:6379" },  -- several: conversations sharded by id
  --   password = nil,                    -- AUTH
  --   db = 0,
  --   prefix = "statusgw:",
  --   connect_timeout_ms = 1000,
  --   node = "gw-1",                     -- stable across restarts: its webhook outbox
  -- },
  -- SO_REUSEPORT: several processes (one per core) share the listen port.
  -- reuse_port = false,

  -- Updates accepted but not yet flushed, over all conversations. Past it
  -- publishes get 429 with Retry-After.
  max_pending_updates = 100000,

  -- Unsent bytes a subscriber may have before it is disconnected as a slow
  -- consumer (it resumes from history when it reconnects).
  output_cap_bytes = 1048576,

  -- Request limits: body, request line plus headers, updates per bulk call.
  max_body_bytes = 1048576,
  max_header_bytes = 16384,
  max_bulk_items = 1000,

  -- Update limits: text bytes and encoded metadata bytes.
  max_text_bytes = 4096,
  max_metadata_bytes = 65536,

  -- A retried publish with the same idempotency_key to the same
  -- conversation within this window returns the first seq.
  idempotency_window_s = 300,

  -- Server-Sent Events: comment line interval and the client retry hint.
  sse_heartbeat_s = 15,
  sse_retry_ms = 2000,
  -- Conversations one /api/v1/events stream may follow.
  sse_max_conversations = 64,

  -- Long-poll (/socket/longpoll): how long a poll waits for frames, and how
  -- long a session nobody polls lives.
  longpoll_window_ms = 10000,
  longpoll_timeout_s = 30,

  -- Keep-alive HTTP connections idle this long are closed.
  http_idle_timeout_s = 60,
  -- A request must arrive whole in time however slowly its bytes come
  -- (408 otherwise): the request line and headers, then the body.
  http_header_timeout_s = 10,
  http_body_timeout_s = 30,

  -- WebSocket: sockets silent this long are closed; largest client message.
  ws_idle_timeout_s = 60,
  ws_max_message_bytes = 65536,

  -- On SIGTERM, how long to wait for clients to take what was flushed.
  shutdown_timeout_ms = 5000,

  -- Plugins: per-call limits, and each plugin's own configuration
  -- (plugins.<name> is passed to its init, checked against the settings
  -- the plugin declares; a name no plugin has is a config error).
  plugin_memory_bytes = 16777216,
  plugin_max_instructions = 1000000,
  plugin_timeout_ms = 50,
  plugin_max_failures = 5,
  plugins = {
    -- Every *.lua file in plugins_dir is loaded, and `enabled = false`
    -- switches any of them off. builders and webhook_formats act only when
    -- a publish or a webhook endpoint names them, and are on. The three
    -- below change or refuse traffic, so they are off until enabled here:
    redact = { enabled = false, patterns = { "%d%d%d%-%d%d%-%d%d%d%d" }, keys = { "ssn" } },
    -- over the limit a publish is refused with 429 and Retry-After
    rate_limit = { enabled = false, rate = 50, burst = 100, exempt = { "error", "summary" } },
    -- extra `summary` updates on every active conversation
    summary = { enabled = false, interval_ms = 5000 },
  },

  -- Webhooks (Standard Webhooks: webhook-id, webhook-timestamp,
  -- webhook-signature "v1,<HMAC-SHA256>" for every secret).
  webhooks = {
    -- retry schedule in seconds: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
    -- retry_schedule_s = { 0, 5, 300, 1800, 7200, 18000, 36000, 36000 },
    -- dead_letter_file = "statusgw-dead-letters.jsonl",
    endpoints = {
      -- {
      --   name = "monitoring",                      -- used in /admin/webhooks
      --   url = "https://alerts.example.com/hooks/statusgw",
      --   secrets = { "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" },  -- several while rotating
      --   categories = { "error" },                 -- default: every category
      --   conversations = "prod-*",                 -- glob; default: every conversation
      --   forwarder = "errors",                     -- a plugin's webhooks entry (match + format)
      --   batch_size = 50, batch_delay_ms = 1000,   -- send at 50 updates or after 1 s
      --   timeout_ms = 10000, concurrency = 2,      -- per attempt; attempts at once
      --   max_queue = 10000,                        -- past it updates go to the dead-letter file
      --   headers = { ["X-Team"] = "ops" },
      -- },
    },
  },

  -- Connection limits. max_connections_per_ip = 0 means no per-address
  -- limit (behind a proxy, set security.trusted_proxies so that clients'
  -- own addresses are counted, not the proxy's).
  max_connections = 16384,
  max_connections_per_ip = 1024,
  max_channels_per_socket = 100,

  -- Who may do what. With neither api_keys nor jwt_secret set, everything is
  -- open and the gateway binds loopback only (and says so in its log).
  security = {
    -- Publishers send Authorization: Bearer <key>; a key may be limited to
    -- a conversation pattern (glob) and a rate (updates/s, token bucket).
    api_keys = {
      -- { key = "pk_live_change_me_0123456789", name = "tool-executor", conversations = "conv-*", rate = 200, burst = 400 },
    },
    -- Subscribers present HS256 JWTs (?token=, phoenix.js authToken, or
    -- Authorization for SSE) with exp, sub, conversations = {"conv-*", …}
    -- and admin = true for status:* and status:system.
    -- jwt_secret = "at least 32 bytes of secret, change me",
    -- jwt_leeway_s = 30,
    -- /admin/* needs Authorization: Bearer <admin_key> (without one: loopback only).
    -- admin_key = "admin_change_me_0123456789",
    -- Browser origins allowed to open WebSockets and event streams, and to
    -- call the HTTP API (CORS). Empty: any origin.
    allowed_origins = {
      -- "https://app.example.com",
    },
  },

  -- Categories beyond engine, tool, workflow, progress, error, info,
  -- planning and summary, as name = "description".
  categories = {
    -- deploy = "Deployment steps",
  },
}

-- A hand-made WebSocket client over a raw socket, for protocol strictness
-- specs: it sends whatever frames a spec builds, valid or not.
local gw_ = require("gateway")
local cjson = require("cjson")

local M = {}
local WS = {}
WS.__index = WS

local KEY = "dGhlIHNhbXBsZSBub25jZQ=="

-- Connect and upgrade; returns the socket object and the 101 headers, or
-- nil, status, body when the gateway refused the upgrade.
function M.open(gw, path, extra)
  local c = gw_.connect(gw)
  local headers = {
    Upgrade = "websocket", Connection = "Upgrade",
    ["Sec-WebSocket-Key"] = KEY, ["Sec-WebSocket-Version"] = "13",
  }
  for k, v in pairs(extra or {}) do headers[k] = v end
  c:send_raw(gw_.build_request("GET", path or "/socket/websocket?vsn=2.0.0", nil, headers))
  local status, h = c:read_head()
  assert(status, h)
  if status ~= 101 then
    local body = h["content-length"] and c.sock:receive(tonumber(h["content-length"])) or ""
    c:close()
    return nil, status, body, h
  end
  return setmetatable({ conn = c, sock = c.sock }, WS), h
end

-- Build one frame. opts: fin (default true), opcode (1), mask (true),
-- rsv (0), length (override the header's length field).
function M.frame(payload, opts)
  opts = opts or {}
  local fin = opts.fin == nil and true or opts.fin
  local b0 = (fin and 0x80 or 0) | ((opts.rsv or 0) << 4) | (opts.opcode or 1)
  local mask = opts.mask == nil and true or opts.mask
  local n = opts.length or #payload
  local hdr
  if n < 126 then hdr = string.char(b0, (mask and 0x80 or 0) | n)
  elseif n < 65536 then hdr = string.char(b0, (mask and 0x80 or 0) | 126) .. string.pack(">I2", n)
  else hdr = string.char(b0, (mask and 0x80 or 0) | 127) .. string.pack(">I8", n) end
  if not mask then return hdr .. payload end
  local key = { 0x12, 0x34, 0x56, 0x78 }
  local out = {}
  for i = 1, #payload do
    out[i] = string.char(payload:byte(i) ~ key[(i - 1) % 4 + 1])
  end
  return hdr .. string.char(table.unpack(key)) .. table.concat(out)
end

function WS:send(bytes) assert(self.sock:send(bytes)) end

function WS:send_text(s) self:send(M.frame(s)) end

function WS:send_json(t) self:send_text(cjson.encode(t)) end

-- Read one server frame: {opcode=, fin=, payload=, code=, reason=} or nil, err.
function WS:read(timeout)
  self.sock:settimeout(timeout or 5)
  local h, err = self.sock:receive(2)
  if not h then return nil, err end
  local b0, b1 = h:byte(1, 2)
  assert(b1 & 0x80 == 0, "server frames must not be masked")
  local n = b1 & 0x7f
  if n == 126 then n = string.unpack(">I2", assert(self.sock:receive(2)))
  elseif n == 127 then n = string.unpack(">I8", assert(self.sock:receive(8))) end
  local payload = n > 0 and assert(self.sock:receive(n)) or ""
  local f = { fin = b0 & 0x80 ~= 0, opcode = b0 & 0x0f, payload = payload }
  if f.opcode == 8 and #payload >= 2 then
    f.code = string.unpack(">I2", payload)
    f.reason = payload:sub(3)
  end
  return f
end

-- Next Phoenix message (decoded array), skipping control frames.
function WS:read_msg(timeout)
  while true do
    local f, err = self:read(timeout)
    if not f then return nil, err end
    if f.opcode == 1 then return cjson.decode(f.payload) end
    if f.opcode == 8 then return nil, "close", f end
  end
end

-- Read until a close frame; returns it, and whether TCP closed after it.
function WS:expect_close(timeout)
  while true do
    local f, err = self:read(timeout)
    if not f then return nil, err end
    if f.opcode == 8 then
      self.sock:settimeout(timeout or 5)
      local more, e = self.sock:receive(1)
      return f, more == nil and e == "closed"
    end
  end
end

function WS:close() self.conn:close() end

return M

-- Start the real statusgw daemon on a free port with a temporary config,
-- and talk to it over real sockets: HTTP requests, pipelined or not, and
-- Server-Sent Events streams.
local socket = require("socket")
local cjson = require("cjson")

local M = {}

M.bin = os.getenv("STATUSGW_BIN") or "build/statusgw"

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

function M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

function M.sleep(s) socket.sleep(s) end

local function lua_value(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) == "table" then
    local parts = {}
    for k, x in pairs(v) do
      local key = type(k) == "number" and "" or ("[" .. string.format("%q", k) .. "] = ")
      parts[#parts + 1] = key .. lua_value(x)
    end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return tostring(v)
end

local function write_file(path, s)
  local f = assert(io.open(path, "w"))
  f:write(s)
  f:close()
end

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
M.read_file = read_file
M.write_file = write_file

-- A new temporary directory.
function M.tmpdir() return (sh("mktemp -d"):gsub("%s+$", "")) end

-- Start a gateway. opts: config keys for the temporary config file, plus
-- `args` (extra command-line arguments). Returns a handle with port, pid,
-- log path; fails the spec when the daemon does not come up in 10 s.
-- opts.config_file: start on that file instead (the shipped config, say);
-- opts.cwd: the directory to start in.
function M.start(opts)
  opts = opts or {}
  local dir = sh("mktemp -d"):gsub("%s+$", "")
  local config = opts.config_file
  if not config then
    if opts.plugins_dir == nil then -- no plugins unless a spec asks for them
      os.execute("mkdir -p " .. dir .. "/plugins")
      opts.plugins_dir = dir .. "/plugins"
    end
    -- STATUSGW_STORE_DELAY_MS: every gateway on a store that answers late
    -- (scripts/test runs the resume and history specs so)
    if opts.store_delay_ms == nil and os.getenv("STATUSGW_STORE_DELAY_MS") then
      opts.store_delay_ms = tonumber(os.getenv("STATUSGW_STORE_DELAY_MS"))
    end
    -- STATUSGW_STORE=sqlite: every gateway on the durable store, its own file
    if opts.store == nil and os.getenv("STATUSGW_STORE") == "sqlite" then
      opts.store = "sqlite"
      opts.store_path = dir .. "/statusgw.db"
    end
    -- STATUSGW_REDIS=host:port: every gateway on the Redis engine, a
    -- cluster of its own (its own key prefix), as each gets its own store
    if opts.store == nil and opts.engine == nil and os.getenv("STATUSGW_REDIS") then
      opts.engine = "redis"
      opts.redis = { addresses = { os.getenv("STATUSGW_REDIS") }, prefix = "sg" .. dir:match("[^/]+$") .. ":" }
    end
    local cfg = {}
    for k, v in pairs(opts) do
      if k ~= "args" and k ~= "cwd" and k ~= "port" then cfg[#cfg + 1] = "  " .. k .. " = " .. lua_value(v) .. "," end
    end
    config = dir .. "/statusgw.lua"
    write_file(config, "return {\n" .. table.concat(cfg, "\n") .. "\n}\n")
  end
  local port = opts.port or M.free_port() -- opts.port: a restart on the same port
  local gw = { port = port, dir = dir, log = dir .. "/statusgw.log" }
  local bin = M.bin:sub(1, 1) == "/" and M.bin or (sh("pwd"):gsub("%s+$", "") .. "/" .. M.bin)
  local cmd = string.format(
    "(cd %s; %s --config %s --listen 127.0.0.1:%d %s 2>%s & echo $! > %s/pid; wait $!; echo $? > %s/rc) >/dev/null 2>&1 &",
    opts.cwd or ".", bin, config, port, opts.args or "", gw.log, dir, dir)
  os.execute(cmd)
  local deadline = socket.gettime() + 10
  while socket.gettime() < deadline do
    local pid = read_file(dir .. "/pid")
    if pid and pid:match("%d+") then gw.pid = tonumber(pid:match("%d+")) end
    if read_file(dir .. "/rc") then break end
    local c = socket.tcp()
    c:settimeout(0.2)
    if c:connect("127.0.0.1", port) then
      c:close()
      if gw.pid then return gw end
    end
    c:close()
    socket.sleep(0.05)
  end
  error("statusgw did not start; log:\n" .. (read_file(gw.log) or ""))
end

-- Wait for the daemon to exit (after a signal); returns its exit code or
-- nil after `timeout` seconds.
function M.wait_exit(gw, timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while socket.gettime() < deadline do
    local rc = read_file(gw.dir .. "/rc")
    if rc and rc:match("%d+") then return tonumber(rc:match("%d+")) end
    socket.sleep(0.05)
  end
  return nil
end

function M.signal(gw, sig)
  os.execute(string.format("kill -%s %d 2>/dev/null", sig, gw.pid))
end

-- Stop with SIGTERM and check the exit code and the sanitizer's verdict.
function M.stop(gw)
  if not gw or gw.stopped then return end
  gw.stopped = true
  M.signal(gw, "TERM")
  local rc = M.wait_exit(gw, 15)
  if not rc then
    M.signal(gw, "KILL")
    error("statusgw did not exit within 15 s of SIGTERM")
  end
  local log = read_file(gw.log) or ""
  if log:find("AddressSanitizer") or log:find("LeakSanitizer") or log:find("runtime error:") then
    error("sanitizer report in the gateway log:\n" .. log)
  end
  if rc ~= 0 then error("statusgw exited with " .. rc .. "; log:\n" .. log) end
  os.execute("rm -rf " .. gw.dir)
  return rc
end

function M.log_text(gw) return read_file(gw.log) or "" end

---------------------------------------------------------------- HTTP

local Conn = {}
Conn.__index = Conn

function M.connect(gw)
  local c = assert(socket.tcp())
  c:settimeout(5)
  assert(c:connect("127.0.0.1", gw.port))
  return setmetatable({ sock = c, gw = gw }, Conn)
end

function Conn:send_raw(s) assert(self.sock:send(s)) end

function Conn:close() self.sock:close() end

-- Read a response's status line and headers (lower-case names).
function Conn:read_head()
  local line, err = self.sock:receive("*l")
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/1%.1 (%d%d%d)"))
  local headers = {}
  while true do
    local h = assert(self.sock:receive("*l"))
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    headers[k:lower()] = v
  end
  return status, headers
end

-- Read one response: status, headers (lower-case names), body.
function Conn:read_response()
  local status, headers = self:read_head()
  if not status then return nil, headers end
  local body = ""
  local n = tonumber(headers["content-length"] or "0")
  if n > 0 then body = assert(self.sock:receive(n)) end
  return status, headers, body
end

local function build_request(method, path, body, headers)
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1" }
  headers = headers or {}
  if body and not headers["Content-Type"] then headers["Content-Type"] = "application/json" end
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end
M.build_request = build_request

function Conn:request(method, path, body, headers)
  self:send_raw(build_request(method, path, body, headers))
  return self:read_response()
end

-- One request on a fresh connection. A table body is JSON-encoded.
-- Returns status, decoded JSON (or nil), headers, raw body.
function M.request(gw, method, path, body, headers)
  if type(body) == "table" then body = cjson.encode(body) end
  local c = M.connect(gw)
  local status, h, raw = c:request(method, path, body, headers)
  c:close()
  local ok, json = pcall(cjson.decode, raw or "")
  return status, ok and json or nil, h, raw
end

function M.publish(gw, update)
  return M.request(gw, "POST", "/api/v1/status", update)
end

---------------------------------------------------------------- SSE

local Stream = {}
Stream.__index = Stream

-- Open an event stream. Returns the stream, or nil, status, body when the
-- gateway refused it.
function M.sse(gw, path, headers)
  local c = M.connect(gw)
  c:send_raw(build_request("GET", path, nil, headers))
  local status, h = c:read_head()
  assert(status, h)
  if status ~= 200 then
    local body = c.sock:receive(tonumber(h["content-length"] or 0))
    c:close()
    return nil, status, body
  end
  return setmetatable({ conn = c, sock = c.sock, headers = h }, Stream)
end

-- Next event as {event=, id=, data=, json=, comment=, retry=}; nil, "timeout"
-- or nil, "closed".
function Stream:next(timeout)
  self.sock:settimeout(timeout or 5)
  local ev = {}
  while true do
    local line, err = self.sock:receive("*l")
    if not line then return nil, err end
    if line == "" then
      if next(ev) then
        if ev.data then ev.json = cjson.decode(ev.data) end
        return ev
      end
    elseif line:sub(1, 1) == ":" then
      ev.comment = line
    else
      local k, v = line:match("^([^:]+): ?(.*)$")
      if k == "data" then ev.data = ev.data and (ev.data .. "\n" .. v) or v
      else ev[k] = v end
    end
  end
end

-- Next status_update events (skipping retry and comments), n of them.
function Stream:updates(n, timeout)
  local out = {}
  while #out < n do
    local ev, err = self:next(timeout)
    if not ev then return out, err end
    if ev.event == "status_update" then out[#out + 1] = ev end
  end
  return out
end

function Stream:close() self.conn:close() end

M.json = cjson
return M

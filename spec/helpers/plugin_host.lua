-- Run plugins in the gateway's real C host (build/statusgw_plugin.so),
-- from a temporary directory holding the files a spec names.
local sgp = require("statusgw_plugin")

local M = {}

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return (out:gsub("%s+$", ""))
end

M.tmpdir = function() return sh("mktemp -d") end

function M.write(dir, name, src)
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(src)
  f:close()
end

-- host({ "plugins/builders.lua", ["x.lua"] = "source" }, config) -> host, report, dir
-- Shipped plugins that wait to be enabled (redact, rate_limit, summary)
-- are enabled here unless the config says otherwise or asks for the
-- files as shipped (config.as_shipped): these specs are about what the
-- plugins do once on.
function M.host(files, config)
  local dir = M.tmpdir()
  config = config or {}
  local as_shipped = config.as_shipped
  config.as_shipped = nil
  for k, v in pairs(files) do
    if type(k) == "number" then
      local name = v:match("([^/]+)%.lua$")
      if not as_shipped and (name == "redact" or name == "rate_limit" or name == "summary") then
        config.plugins = config.plugins or {}
        config.plugins[name] = config.plugins[name] or {}
        if config.plugins[name].enabled == nil then config.plugins[name].enabled = true end
      end
      os.execute(string.format("cp %q %q", v, dir))
    else
      M.write(dir, k, v)
    end
  end
  local h, report = sgp.host(dir, config or {})
  return h, report, dir
end

M.check = sgp.check
M.simd = sgp.simd
return M

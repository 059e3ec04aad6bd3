-- The modules of src/ (a .c and its .h are one module) include each other
-- without a cycle: each layer knows only those below it (the connection
-- layer reaches the routes through a handler, the WebSocket transport its
-- protocol likewise). `make check-layers` runs this spec alone.
local function modules()
  local graph = {}
  local p = io.popen("ls src/*.c src/*.h")
  for file in p:lines() do
    local m = file:match("src/([%w_]+)%.[ch]$")
    graph[m] = graph[m] or {}
    local f = assert(io.open(file))
    for inc in f:read("a"):gmatch('#include "([%w_]+)%.h"') do
      if inc ~= m then graph[m][inc] = true end
    end
    f:close()
  end
  p:close()
  return graph
end

-- A cycle as a list of modules (the first repeated at the end), or nil.
local function find_cycle(graph)
  local state, stack = {}, {}
  local function visit(m)
    state[m] = "open"
    stack[#stack + 1] = m
    local names = {}
    for n in pairs(graph[m] or {}) do names[#names + 1] = n end
    table.sort(names)
    for _, n in ipairs(names) do
      if state[n] == "open" then
        local cycle = {}
        for i = #stack, 1, -1 do
          table.insert(cycle, 1, stack[i])
          if stack[i] == n then break end
        end
        cycle[#cycle + 1] = n
        return cycle
      elseif not state[n] then
        local c = visit(n)
        if c then return c end
      end
    end
    stack[#stack] = nil
    state[m] = "done"
  end
  local names = {}
  for m in pairs(graph) do names[#names + 1] = m end
  table.sort(names)
  for _, m in ipairs(names) do
    if not state[m] then
      local c = visit(m)
      if c then return c end
    end
  end
end

describe("layers", function()
  it("finds a cycle when there is one (the check itself)", function()
    local c = find_cycle({ a = { b = true }, b = { c = true }, c = { a = true }, d = { a = true } })
    assert.same({ "a", "b", "c", "a" }, c)
    assert.is_nil(find_cycle({ a = { b = true }, b = { c = true }, c = {} }))
  end)

  it("has no include cycle among the modules of src/", function()
    local c = find_cycle(modules())
    assert.is_nil(c, c and ("include cycle: " .. table.concat(c, " -> ")))
  end)

  it("keeps the connection layer below the routes and the transports", function()
    local g = modules()
    for _, above in ipairs({ "api", "sse", "ws", "phoenix", "ingest", "metrics", "main" }) do
      assert.is_nil(g.http[above], "http includes " .. above)
    end
    assert.is_nil(g.ws.phoenix, "ws includes phoenix")
    -- the WebSocket layer knows no protocol and no tokens: Phoenix checks them
    assert.is_nil(g.ws.security, "ws includes security")
    -- metrics and ingest reach the server through its type, not the connection layer
    assert.is_nil(g.metrics.http, "metrics includes http")
    assert.is_nil(g.ingest.http, "ingest includes http")
    -- the server's type header points at types and includes only the counters' type
    local inc = {}
    for n in pairs(g.server_t) do inc[#inc + 1] = n end
    assert.same({ "metrics_t" }, inc)
    assert.is_nil(g.sandbox.status, "sandbox includes status")
    -- time comes from the clock, not from the hub
    assert.is_nil(g.security.hub, "security includes hub")
    assert.is_nil(g.webhook.hub, "webhook includes hub")
  end)

  it("has no function over 100 lines in src/", function()
    -- a function's body runs from a "{" in the first column to the next "}" there
    local long = {}
    local p = io.popen("ls src/*.c")
    for file in p:lines() do
      local n, start, prev, name = 0, nil, "", nil
      for line in io.lines(file) do
        n = n + 1
        if line == "{" then start, name = n, prev
        elseif line == "}" and start then
          if n - start - 1 > 100 then long[#long + 1] = string.format("%s: %s (%d lines)", file, name, n - start - 1) end
          start = nil
        end
        prev = line
      end
    end
    p:close()
    assert.same({}, long)
  end)
end)

-- A filter the client suites load into their gateway: it refuses each
-- update whose text starts with "busy" the first time it sees that text
-- (429 queue_full, retry after 1 s), so a bulk answer carries a per-item
-- error with retry_after that the client must honour.
local seen = {}
return { name = "busy_once", priority = 10, filter = function(u)
  if u.text:sub(1, 4) == "busy" and not seen[u.text] then
    seen[u.text] = true
    return statusgw.refuse(429, "queue_full", "busy, try again", 1)
  end
end }

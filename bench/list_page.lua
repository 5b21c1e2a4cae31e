-- GET /shipments?limit=20 as the seller: a page of 20 shipments, 10 events each.
-- wrk ... -s bench/list_page.lua URL -- TOKEN_FILE
local token

function init(args)
  local f = assert(io.open(args[1], "r"))
  token = f:read("*a"):gsub("%s+", "")
  f:close()
end

function request()
  return wrk.format("GET", "/shipments?limit=20", {["Authorization"] = "Bearer " .. token})
end

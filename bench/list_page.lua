-- GET /shipments?limit=20 as the seller: a page of 20 shipments, 10 events each.
-- wrk ... -s bench/list_page.lua URL -- TOKEN_FILE
local lib = dofile("bench/lib.lua")
local token

function init(args)
  token = lib.slurp(args[1], true)
end

function request()
  return wrk.format("GET", "/shipments?limit=20", {["Authorization"] = "Bearer " .. token})
end

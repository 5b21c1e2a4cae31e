-- GET /shipments/<id> as the owner: a shipment with a 10-event timeline.
-- wrk ... -s bench/read_one.lua URL -- TOKEN_FILE IDS_FILE
local lib = dofile("bench/lib.lua")
local ids
local token
local counter = 0

function init(args)
  token = lib.slurp(args[1], true)
  ids = lib.lines(args[2])
  counter = math.random(#ids)
end

function request()
  counter = counter % #ids + 1
  return wrk.format("GET", "/shipments/" .. ids[counter], {["Authorization"] = "Bearer " .. token})
end

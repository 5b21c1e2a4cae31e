-- GET /shipments/<id> as the owner: a shipment with a 10-event timeline.
-- wrk ... -s bench/read_one.lua URL -- TOKEN_FILE IDS_FILE
local ids = {}
local token
local counter = 0

local function slurp(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("*a")
  f:close()
  return s
end

function init(args)
  token = slurp(args[1]):gsub("%s+", "")
  for line in io.lines(args[2]) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  counter = math.random(#ids)
end

function request()
  counter = counter % #ids + 1
  return wrk.format("GET", "/shipments/" .. ids[counter], {["Authorization"] = "Bearer " .. token})
end

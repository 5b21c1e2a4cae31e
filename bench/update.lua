-- PATCH /shipments/<id> as the assigned partner: an in_transit scan, cycling over 300 shipments
-- (row lock, status check, new timeline event, event feed).
-- wrk ... -s bench/update.lua URL -- PARTNER_TOKEN_FILE IDS_FILE BODY_FILE
local lib = dofile("bench/lib.lua")
local headers = {["Content-Type"] = "application/json"}
local ids
local body
local counter = 0

function init(args)
  headers["Authorization"] = "Bearer " .. lib.slurp(args[1], true)
  ids = lib.lines(args[2])
  body = lib.slurp(args[3])
  counter = math.random(#ids)
end

function request()
  counter = counter % #ids + 1
  return wrk.format("PATCH", "/shipments/" .. ids[counter], headers, body)
end

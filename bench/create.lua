-- POST /shipments as the seller: assignment, timeline, tags, event feed and outbox in one
-- transaction. wrk ... -s bench/create.lua URL -- TOKEN_FILE BODY_FILE
local lib = dofile("bench/lib.lua")
local headers = {["Content-Type"] = "application/json"}
local body

function init(args)
  headers["Authorization"] = "Bearer " .. lib.slurp(args[1], true)
  body = lib.slurp(args[2])
end

function request()
  return wrk.format("POST", "/shipments", headers, body)
end

-- GET each path of a file in turn (from a random start), with a bearer token when one is given.
-- wrk ... -s bench/get.lua URL -- PATHS_FILE [TOKEN_FILE]
local lib = dofile("bench/lib.lua")
local paths
local headers = {}
local counter = 0

function init(args)
  paths = lib.lines(args[1])
  if args[2] then headers["Authorization"] = "Bearer " .. lib.slurp(args[2], true) end
  counter = math.random(#paths)
end

function request()
  counter = counter % #paths + 1
  return wrk.format("GET", paths[counter], headers)
end

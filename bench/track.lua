-- GET /track/<tracking number>, no authentication: the public view of a shipment with a
-- 10-event timeline (the newest 50 events at most, and the total).
-- wrk ... -s bench/track.lua URL -- TRACKING_NUMBERS_FILE
local lib = dofile("bench/lib.lua")
local numbers
local counter = 0

function init(args)
  numbers = lib.lines(args[1])
  counter = math.random(#numbers)
end

function request()
  counter = counter % #numbers + 1
  return wrk.format("GET", "/track/" .. numbers[counter])
end

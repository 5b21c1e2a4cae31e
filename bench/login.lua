-- POST /seller/token: a password login (bcrypt at the production cost 12).
-- wrk ... -s bench/login.lua URL -- LOGIN_FORM_FILE [CLIENT_IP [DELAY_MS]]
-- CLIENT_IP goes out as X-Forwarded-For (the API trusts it from 127.0.0.1), so one run can play
-- an attacker and another a bystander; DELAY_MS paces each connection.
local lib = dofile("bench/lib.lua")
local body
local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
local pause = 0

function init(args)
  body = lib.slurp(args[1], true)
  if args[2] then headers["X-Forwarded-For"] = args[2] end
  if args[3] then pause = tonumber(args[3]) end
end

function delay()
  return pause
end

function request()
  return wrk.format("POST", "/seller/token", headers, body)
end

-- Status counts, printed by wrk after the run: the brute-force row needs 401 vs 429. wrk copies
-- only plain values between a thread's Lua state and `done`, hence one global per status.
local threads = {}
local watched = {200, 401, 429, 503}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, _headers, _body)
  local name = "count_" .. status
  _G[name] = (_G[name] or 0) + 1
end

function done(_summary, _latency, _requests)
  for _, status in ipairs(watched) do
    local total = 0
    for _, thread in ipairs(threads) do
      total = total + (thread:get("count_" .. status) or 0)
    end
    io.write(string.format("status %d: %d\n", status, total))
  end
end

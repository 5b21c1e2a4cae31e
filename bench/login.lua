-- POST /seller/token: a password login (bcrypt at the production cost 12).
-- wrk ... -s bench/login.lua URL -- LOGIN_FORM_FILE
local body

function init(args)
  local f = assert(io.open(args[1], "r"))
  body = f:read("*a"):gsub("%s+$", "")
  f:close()
end

function request()
  return wrk.format("POST", "/seller/token",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end

-- Helpers shared by the wrk scripts (loaded with dofile; run.sh runs wrk from the repo root).
local lib = {}

-- The whole file, or its single line with surrounding whitespace removed when `trim`.
function lib.slurp(path, trim)
  local f = assert(io.open(path, "r"))
  local s = f:read("*a")
  f:close()
  if trim then s = s:gsub("^%s+", ""):gsub("%s+$", "") end
  return s
end

-- The non-empty lines of a file.
function lib.lines(path)
  local found = {}
  for line in io.lines(path) do
    if #line > 0 then found[#found + 1] = line end
  end
  return found
end

return lib

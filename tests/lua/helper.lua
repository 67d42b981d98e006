-- tests/lua/helper.lua — loaded by busted before the specs:
--   lua5.4 /usr/bin/busted --helper=tests/lua/helper.lua tests/lua/X_spec.lua
-- with ENGINE_BUILD_DIR naming the build directory (for build/engine.so and
-- the build/engine runner; ENGINE_BIN_DIR, when set, is where the runner is). It puts the module on package.cpath, offers a
-- few helpers to the specs as require("helper"), and prints a final
-- "N passed, N failed" line (busted's own summary is not one CI counts).

local build = os.getenv("ENGINE_BUILD_DIR")
if not build or build == "" then
  error("helper.lua: set ENGINE_BUILD_DIR to the build directory (the one holding engine.so)")
end
package.cpath = build .. "/?.so;" .. package.cpath

local H = {}
H.build_dir = build
local bin_dir = os.getenv("ENGINE_BIN_DIR")
H.engine_bin = ((bin_dir and bin_dir ~= "") and bin_dir or build) .. "/engine"
-- the repository root (specs run from it; this also works from elsewhere)
H.repo = debug.getinfo(1, "S").source:match("^@(.*)/tests/lua/[^/]*$") or "."

function H.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- the message of the error fn(...) raises, without the "file:line: " prefix
-- (nil when fn does not fail)
function H.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then return nil end
  err = tostring(err)
  return (err:gsub("^[^\n:]+:%d+: ", "", 1))
end

-- element-wise comparison of nested tables (or numbers) within tol
function H.close(a, b, tol)
  tol = tol or 1e-6
  if type(a) == "number" and type(b) == "number" then
    if a ~= a and b ~= b then return true end
    if a == b then return true end
    return math.abs(a - b) <= tol * math.max(1, math.abs(b))
  end
  if type(a) ~= "table" or type(b) ~= "table" or #a ~= #b then return false end
  for i = 1, #a do
    if not H.close(a[i], b[i], tol) then return false end
  end
  return true
end

-- a message naming what differs, for assert(H.close(...), H.describe(...))
function H.describe(a, b)
  local function show(v)
    if type(v) ~= "table" then return tostring(v) end
    local parts = {}
    for i = 1, #v do parts[i] = show(v[i]) end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return "got " .. show(a) .. ", expected " .. show(b)
end

function H.assert_close(a, b, tol)
  if not H.close(a, b, tol) then error(H.describe(a, b), 2) end
end

-- shell quoting for io.popen / os.execute
function H.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- run a shell command; returns exit status, stdout, stderr
function H.run(cmd, stdin)
  local tmp = os.tmpname()
  local errf = os.tmpname()
  local full = cmd .. " 2>" .. H.quote(errf)
  if stdin then
    local inf = os.tmpname()
    local f = assert(io.open(inf, "w"))
    f:write(stdin)
    f:close()
    full = full .. " <" .. H.quote(inf)
  else
    full = full .. " </dev/null"
  end
  local p = assert(io.popen(full .. " >" .. H.quote(tmp) .. "; echo $?"))
  local status = tonumber(p:read("a"):match("(%d+)%s*$"))
  p:close()
  local function slurp(path)
    local f = io.open(path)
    local s = f and f:read("a") or ""
    if f then f:close() end
    os.remove(path)
    return s
  end
  return status, slurp(tmp), slurp(errf)
end

-- a fresh temporary directory
function H.tmpdir()
  local path = os.tmpname()
  os.remove(path)
  assert(os.execute("mkdir -p " .. H.quote(path)))
  return path
end

function H.write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

package.loaded.helper = H

-- the final count line
local busted = require("busted")
local passed, failed = 0, 0
busted.subscribe({ "test", "end" }, function(_, _, status)
  if status == "success" then
    passed = passed + 1
  elseif status == "failure" or status == "error" then
    failed = failed + 1
  end
  return nil, true
end)
for _, ev in ipairs({ { "error", "file" }, { "failure", "file" }, { "error", "describe" }, { "failure", "describe" } }) do
  busted.subscribe(ev, function()
    failed = failed + 1
    return nil, true
  end)
end
busted.subscribe({ "suite", "end" }, function()
  io.stdout:write(string.format("%d passed, %d failed\n", passed, failed))
  return nil, true
end)

return H

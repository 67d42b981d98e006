-- engine/json.lua — JSON for the run files the engine writes itself
-- (config.json, metrics.jsonl, checkpoint state): plain tables, strings,
-- booleans and numbers, keys sorted, floats printed with 17 significant
-- digits so a value read back is bit-identical (a resumed run's metrics must
-- equal an uninterrupted run's). Reading is dkjson's (Debian's lua-dkjson,
-- which keeps integers integers). Not for arbitrary Lua values: functions,
-- userdata and cycles are errors naming the path.
local dkjson = require("dkjson")

local json = {}

local function number(v)
  if math.type(v) == "integer" then return string.format("%d", v) end
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  local s = string.format("%.17g", v)
  if not s:find("[%.eEn]") then s = s .. ".0" end -- keep floats floats on the way back
  return s
end

local function is_array(t)
  local n = #t
  if n == 0 then return next(t) == nil end
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

local function encode(v, path, seen, out)
  local ty = type(v)
  if ty == "nil" then
    out[#out + 1] = "null"
  elseif ty == "boolean" then
    out[#out + 1] = tostring(v)
  elseif ty == "number" then
    out[#out + 1] = number(v)
  elseif ty == "string" then
    out[#out + 1] = dkjson.quotestring(v)
  elseif ty == "table" then
    if seen[v] then error("json: a cycle at " .. path, 0) end
    seen[v] = true
    if is_array(v) and next(v) ~= nil then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], path .. "[" .. i .. "]", seen, out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then error("json: key " .. tostring(k) .. " at " .. path .. " is not a string", 0) end
        keys[#keys + 1] = k
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = dkjson.quotestring(k)
        out[#out + 1] = ":"
        encode(v[k], path .. "." .. k, seen, out)
      end
      out[#out + 1] = "}"
    end
    seen[v] = nil
  else
    error("json: cannot write a " .. ty .. " at " .. path, 0)
  end
end

-- json.encode(value) -> string
function json.encode(v)
  local out = {}
  encode(v, "$", {}, out)
  return table.concat(out)
end

-- json.line(first_key, first_value, rest) -> one JSON object with
-- first_key first (e.g. "step"), then the rest sorted
function json.line(first_key, first_value, rest)
  local body = {}
  for k, v in pairs(rest) do
    if k ~= first_key then body[k] = v end
  end
  local s = json.encode(body)
  local head = dkjson.quotestring(first_key) .. ":" .. json.encode(first_value)
  if s == "{}" or s == "[]" then return "{" .. head .. "}" end
  return "{" .. head .. "," .. s:sub(2)
end

-- json.decode(text, where) -> value, or raises "where: message"
function json.decode(text, where)
  local v, _, err = dkjson.decode(text, 1, nil)
  if err then error((where or "json") .. ": " .. err, 0) end
  return v
end

-- json.read(path) -> value, or nil, message
function json.read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  local ok, v = pcall(json.decode, text, path)
  if not ok then return nil, v end
  return v
end

-- json.write(path, value): written whole to a temporary file, flushed to
-- disk and renamed over path, so a crash leaves the old file or the new one
function json.write(path, v)
  local E = require("engine")
  local tmp = path .. ".tmp"
  local f = assert(io.open(tmp, "wb"))
  f:write(json.encode(v), "\n")
  f:close()
  E.fsync(tmp)
  assert(os.rename(tmp, path))
end

return json

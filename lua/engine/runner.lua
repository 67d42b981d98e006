-- engine/runner.lua — what the `engine` executable does (main.c only makes
-- the Lua state and calls the function this module returns).
--
--   engine FILE.lua [args...]   runs FILE.lua with `arg` and `...` set as the
--                               stock lua sets them
--   engine -e 'code'            runs code (may repeat; a script may follow)
--   engine                      the REPL; `engine -i` opens it after the rest
--   engine -                    runs standard input
--   engine --version | --help
--   engine plot RUN_DIR [metric ...]   charts of a run (engine/plot.lua)
--
-- Recipes. When FILE.lua returns a table with a `train` function, the
-- runner calls recipe.train(cfg) with cfg built in this order:
--   1. a copy of recipe.defaults;
--   2. the table returned by the Lua file given as --config=FILE.lua
--      (or --config FILE.lua), wherever it stands among the flags;
--   3. the --key=value flags, left to right. A value is read by the type of
--      the key's default: numbers (integers stay integers), booleans (true or
--      false; a bare --key means true, --no-key false), strings as written.
--      Dashes in a key read as underscores (--max-steps is max_steps).
-- The valid keys are those of recipe.defaults and of recipe.docs; any other
-- is an error naming the closest valid key ("unknown option --bta; did you
-- mean --beta?"). `engine FILE.lua --help` lists every key with its default
-- and its one-line doc.
--
-- How a recipe documents itself, for --help:
--   recipe.name         shown in the heading (default: the file name)
--   recipe.description  one line under the heading (optional)
--   recipe.docs         { key = "one-line doc", ... } for every key; a key
--                       documented here but absent from defaults is valid
--                       and starts as nil (e.g. resume)
--
-- Errors: the runner prints "engine: <message>" to stderr, then the Lua
-- frames of the traceback (the runner's own and C frames left out) when the
-- error came from running code, and exits with status 1. Success exits 0.
--
-- In -e code and the REPL the global-looking name E is the engine module
-- (reads fall through to _G and assignments go to _G); scripts and recipes
-- see only the usual globals and write `local E = require("engine")`.

local E = require("engine")

local USAGE = [==[
usage: engine [options] [FILE.lua [args...]]

Runs Lua 5.4 code with the training engine loaded (local E = require("engine")).

  engine FILE.lua [args...]      run FILE.lua; arg and ... hold the args as the stock
                                 lua sets them (arg[0] is FILE.lua)
  engine RECIPE.lua [--config=FILE.lua] [--key=value ...]
                                 RECIPE.lua returns a table with a train function: call
                                 recipe.train(cfg), cfg being recipe.defaults, then the
                                 table the --config file returns, then the flags
                                 (numbers, true/false and strings; an unknown key is an
                                 error naming the closest valid one)
  engine RECIPE.lua --help       list the recipe's keys, defaults and docs
  engine plot RUN_DIR [metric ...]
                                 write PNG and SVG charts of a run's metrics to
                                 RUN_DIR/plots (engine plot --help for options)
  engine                         open the REPL (Ctrl-D exits)
  engine -                       run standard input

options (before FILE.lua):
  -e 'code'     run code; may repeat; runs before FILE.lua
  -i            open the REPL after running the -e code and FILE.lua
  --            stop reading options
  -v, --version print the version
  -h, --help    print this text

In -e code and the REPL, E is the engine module. Errors print "engine: <message>"
and a traceback to stderr and exit with status 1.
]==]

local RUNNER_SOURCE = debug.getinfo(1, "S").source

-- ---- errors --------------------------------------------------------------

local function message(e)
  if type(e) == "string" then return e end
  local mt = getmetatable(e)
  if mt and mt.__tostring then
    local ok, s = pcall(tostring, e)
    if ok and type(s) == "string" then return s end
  end
  if e == nil then return "nil" end
  if type(e) == "number" or type(e) == "boolean" then return tostring(e) end
  return "(error object is a " .. type(e) .. " value)"
end

local function frame_name(info)
  if info.what == "main" then return "in main chunk" end
  if info.name then
    local kind = info.namewhat == "global" and "function" or (info.namewhat ~= "" and info.namewhat or "function")
    return "in " .. kind .. " '" .. info.name .. "'"
  end
  return "in function <" .. info.short_src .. ":" .. info.linedefined .. ">"
end

-- the Lua frames from `level` up, without the runner's own and C frames
local function lua_traceback(level)
  local lines = {}
  while true do
    local info = debug.getinfo(level, "Slnt")
    if not info then break end
    if info.what ~= "C" and info.source ~= RUNNER_SOURCE then
      lines[#lines + 1] = "\t" .. info.short_src .. ":" .. (info.currentline or "?") .. ": " .. frame_name(info)
      if info.istailcall then lines[#lines + 1] = "\t(...tail calls...)" end
    end
    level = level + 1
  end
  if #lines == 0 then return nil end
  if #lines > 22 then -- deep recursion: the first and last frames
    local kept = table.move(lines, 1, 10, 1, {})
    kept[11] = "\t...\t(skipping " .. (#lines - 21) .. " levels)"
    table.move(lines, #lines - 10, #lines, 12, kept)
    lines = kept
  end
  return "stack traceback:\n" .. table.concat(lines, "\n")
end

-- xpcall message handler: the message and the traceback at the error
local function handler(e)
  return { msg = message(e), traceback = lua_traceback(3) }
end

local function report(err)
  io.stderr:write("engine: ", err.msg, "\n")
  if err.traceback then io.stderr:write(err.traceback, "\n") end
  return 1
end

-- a usage or load error: the message alone
local function fail(msg)
  io.stderr:write("engine: ", msg, "\n")
  return 1
end

-- raised by option parsing; caught in run_recipe
local Usage = {}
local function usage_error(fmt, ...)
  error(setmetatable({ msg = string.format(fmt, ...) }, Usage), 0)
end

-- ---- recipe options ------------------------------------------------------

local function levenshtein(a, b)
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev, cur = cur, prev
  end
  return prev[#b]
end

local function closest(key, keys)
  local best, bestd
  for _, k in ipairs(keys) do
    local d = levenshtein(key, k)
    if not bestd or d < bestd then best, bestd = k, d end
  end
  return best
end

local function show(v)
  if type(v) == "string" then return v == "" and '""' or v end
  if type(v) == "table" then
    local parts = {}
    for i, x in ipairs(v) do
      if i > 8 then parts[#parts + 1] = "..."; break end
      parts[#parts + 1] = type(x) == "table" and "{...}" or tostring(x)
    end
    if next(v) ~= nil and #parts == 0 then return "{...}" end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return tostring(v)
end

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = deep_copy(x) end
  return c
end

local function recipe_keys(recipe)
  local set, list = {}, {}
  for _, t in ipairs({ recipe.defaults or {}, recipe.docs or {} }) do
    for k in pairs(t) do
      if type(k) == "string" and not set[k] then
        set[k] = true
        list[#list + 1] = k
      end
    end
  end
  table.sort(list)
  return set, list
end

-- a flag's text value, read by the type of the key's default
local function parse_value(key, s, default)
  local dt = type(default)
  if s == nil then
    if dt == "boolean" or dt == "nil" then return true end
    usage_error("option --%s needs a value: --%s=VALUE", key, key)
  end
  if dt == "boolean" then
    if s == "true" then return true elseif s == "false" then return false end
    usage_error("option --%s expects true or false, got '%s'", key, s)
  elseif dt == "number" then
    local v = tonumber(s)
    if not v then usage_error("option --%s expects a number, got '%s'", key, s) end
    if math.type(default) == "integer" then
      local iv = math.tointeger(v)
      if not iv then usage_error("option --%s expects an integer, got '%s'", key, s) end
      return iv
    end
    return v + 0.0
  elseif dt == "string" then
    return s
  elseif dt == "nil" then
    if s == "true" then return true elseif s == "false" then return false end
    local v = tonumber(s)
    if v then return math.tointeger(v) or v end
    return s
  end
  usage_error("option --%s has a %s default; set it in a --config file", key, dt)
end

-- a config file may also give a function for a key the recipe lists in its
-- `callables` (e.g. the RL recipes' reward)
local function check_config_value(path, key, v, default, callable)
  if default == nil or type(v) == type(default) or (callable and type(v) == "function") then
    if math.type(default) == "integer" and math.type(v) == "float" then
      local iv = math.tointeger(v)
      if not iv then usage_error("%s: key '%s' should be an integer (the default is %s), got %s", path, key, show(default), tostring(v)) end
      return iv
    end
    return v
  end
  usage_error("%s: key '%s' should be a %s (the default is %s), got a %s", path, key, type(default), show(default), type(v))
end

local function recipe_help(recipe, path, keys)
  local defaults, docs = recipe.defaults or {}, recipe.docs or {}
  local out = { "usage: engine " .. path .. " [--config=FILE.lua] [--key=value ...]", "" }
  local name = type(recipe.name) == "string" and recipe.name or path:match("([^/]+)%.lua$") or path
  out[#out + 1] = type(recipe.description) == "string" and (name .. ": " .. recipe.description) or name
  out[#out + 1] = ""
  local rows = {}
  for _, k in ipairs(keys) do
    local left = defaults[k] == nil and ("--" .. k) or ("--" .. k .. "=" .. show(defaults[k]))
    local doc = docs[k] and tostring(docs[k]) or "(undocumented)"
    if defaults[k] == nil then doc = doc .. " (no default)" end
    rows[#rows + 1] = { left, doc }
  end
  rows[#rows + 1] = { "--config=FILE.lua", "a Lua file returning a table of options, applied before the flags" }
  rows[#rows + 1] = { "--help", "print this text" }
  local width = 0
  for _, r in ipairs(rows) do width = math.max(width, #r[1]) end
  width = math.min(width, 32)
  out[#out + 1] = #keys > 0 and "options (--key=default):" or "options (this recipe has no keys of its own):"
  for i, r in ipairs(rows) do
    if i == #rows - 1 then out[#out + 1] = "" end
    local pad = #r[1] < width and string.rep(" ", width - #r[1]) or ""
    out[#out + 1] = "  " .. r[1] .. pad .. "  " .. r[2]
  end
  return table.concat(out, "\n") .. "\n"
end

-- cfg from the defaults, the --config file and the flags
local function build_cfg(recipe, path, args)
  local defaults = recipe.defaults or {}
  if type(defaults) ~= "table" then usage_error("%s: recipe.defaults must be a table, got %s", path, type(defaults)) end
  if recipe.docs ~= nil and type(recipe.docs) ~= "table" then
    usage_error("%s: recipe.docs must be a table, got %s", path, type(recipe.docs))
  end
  local valid, keys = recipe_keys(recipe)
  local config, flags = nil, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      return nil, recipe_help(recipe, path, keys)
    elseif a == "--config" then
      config = args[i + 1]
      if not config then usage_error("--config needs a file: --config=FILE.lua") end
      i = i + 1
    elseif a:sub(1, 9) == "--config=" then
      config = a:sub(10)
    elseif a:sub(1, 2) == "--" and #a > 2 then
      local k, v = a:match("^%-%-([^=]*)=(.*)$")
      flags[#flags + 1] = { key = k or a:sub(3), value = v }
    else
      usage_error("unexpected argument '%s'; a recipe takes --key=value options (see engine %s --help)", a, path)
    end
    i = i + 1
  end

  local function unknown(shown, key)
    if #keys == 0 then usage_error("unknown option --%s; this recipe has no options", shown) end
    usage_error("unknown option --%s; did you mean --%s?", shown, closest(key, keys))
  end

  local cfg = deep_copy(defaults)
  if config then
    local f, msg = loadfile(config)
    if not f then usage_error("%s", msg) end
    local ok, t = xpcall(f, handler)
    if not ok then error(t, 0) end
    if type(t) ~= "table" then usage_error("%s must return a table of options, got %s", config, type(t)) end
    for k, v in pairs(t) do
      if not valid[k] then
        if #keys == 0 then usage_error("%s: unknown key '%s'; this recipe has no options", config, tostring(k)) end
        usage_error("%s: unknown key '%s'; did you mean '%s'?", config, tostring(k), closest(tostring(k), keys))
      end
      cfg[k] = check_config_value(config, k, v, defaults[k], recipe.callables and recipe.callables[k])
    end
  end
  for _, fl in ipairs(flags) do
    local key, value = fl.key:gsub("%-", "_"), fl.value
    if not valid[key] and value == nil and key:sub(1, 3) == "no_" and type(defaults[key:sub(4)]) == "boolean" then
      key, value = key:sub(4), "false"
    end
    if not valid[key] then unknown(fl.key, key) end
    cfg[key] = parse_value(key, value, defaults[key])
  end
  return cfg
end

local function run_recipe(recipe, path, args)
  local ok, cfg, help = pcall(build_cfg, recipe, path, args)
  if not ok then
    if getmetatable(cfg) == Usage then return fail(cfg.msg) end
    if type(cfg) == "table" and cfg.msg then return report(cfg) end -- from the config file
    error(cfg, 0)
  end
  if help then
    io.stdout:write(help)
    return 0
  end
  local res = table.pack(xpcall(recipe.train, handler, cfg))
  if not res[1] then return report(res[2]) end
  return 0
end

-- ---- the REPL ------------------------------------------------------------

local function repl(env, interactive)
  local out = io.stdout
  if interactive then
    out:write("engine ", E.version, " (", _VERSION, "); E is the engine module; Ctrl-D exits\n")
  end
  while true do
    if interactive then out:write("> "); out:flush() end
    local line = io.read("L")
    if not line then
      if interactive then out:write("\n") end
      return
    end
    local f = load("return " .. line, "=stdin", "t", env)
    local msg
    if not f then
      local chunk = line
      f, msg = load(chunk, "=stdin", "t", env)
      while not f and msg:find("<eof>$") do
        if interactive then out:write(">> "); out:flush() end
        local more = io.read("L")
        if not more then break end
        chunk = chunk .. more
        f, msg = load(chunk, "=stdin", "t", env)
      end
    end
    if not f then
      io.stderr:write(msg, "\n")
    else
      local res = table.pack(xpcall(f, handler))
      if not res[1] then
        io.stderr:write(res[2].msg, "\n")
      elseif res.n > 1 then
        local parts = {}
        for k = 2, res.n do
          local ok, str = pcall(tostring, res[k])
          parts[#parts + 1] = ok and str or "(" .. type(res[k]) .. ": tostring failed)"
        end
        out:write(table.concat(parts, "\t"), "\n")
      end
    end
  end
end

-- ---- main ----------------------------------------------------------------

return function(argv, interactive)
  local n = #argv
  local i, chunks, want_repl = 1, {}, false
  while i <= n do
    local a = argv[i]
    if a == "--version" or a == "-v" then
      io.stdout:write("engine ", E.version, " (", _VERSION, ")\n")
      return 0
    elseif a == "--help" or a == "-h" then
      io.stdout:write(USAGE)
      return 0
    elseif a == "-e" then
      if i == n then return fail("-e needs an argument: engine -e 'code'") end
      chunks[#chunks + 1] = argv[i + 1]
      i = i + 2
    elseif a == "-i" then
      want_repl = true
      i = i + 1
    elseif a == "--" then
      i = i + 1
      break
    elseif a ~= "-" and a:sub(1, 1) == "-" then
      return fail("unknown option '" .. a .. "'; see engine --help")
    else
      break
    end
  end
  local script = i <= n and i or nil

  -- engine plot RUN_DIR [metric ...]: the charts of a run (engine/plot.lua)
  if script and argv[script] == "plot" and #chunks == 0 then
    local ok, err = pcall(require("engine.plot").cli, table.move(argv, script + 1, n, 1, {}))
    if not ok then return fail(type(err) == "table" and tostring(err.msg or err) or tostring(err)) end
    return 0
  end

  -- arg as the stock lua sets it: the script at 0, what precedes it below
  local arg, s = {}, script or 0
  for k = 0, n do arg[k - s] = argv[k] end
  _G.arg = arg

  local env = setmetatable({ E = E }, { __index = _G, __newindex = _G })
  for _, code in ipairs(chunks) do
    local f, msg = load(code, "=(command line)", "t", env)
    if not f then return fail(msg) end
    local ok, err = xpcall(f, handler)
    if not ok then return report(err) end
  end

  if script then
    local path, f, msg = argv[script], nil, nil
    if path == "-" then
      f, msg = load((io.read("a"):gsub("^#[^\n]*", "")), "=stdin", "t")
    else
      f, msg = loadfile(path)
    end
    if not f then return fail(msg) end
    local args = table.move(argv, script + 1, n, 1, {})
    local res = table.pack(xpcall(f, handler, table.unpack(args)))
    if not res[1] then return report(res[2]) end
    local r = res[2]
    if type(r) == "table" and type(r.train) == "function" then
      local status = run_recipe(r, path, args)
      if status ~= 0 or not want_repl then return status end
    end
  end

  if want_repl or (not script and #chunks == 0) then repl(env, interactive) end
  return 0
end

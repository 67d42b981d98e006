-- runner_spec.lua — the `engine` executable (ENGINE_BUILD_DIR/engine),
-- spawned as a user would: scripts with args, -e, --version, --help, the
-- REPL on a pipe, recipes with defaults, --config and --key=value flags,
-- the unknown-key suggestion, recipe --help, and error reports.
local H = require("helper")

local BIN = H.quote(H.engine_bin)
local dir = H.tmpdir()

local function file(name, text) return H.write_file(dir .. "/" .. name, text) end

local RECIPE = [[
local E = require("engine")
return {
  name = "toy",
  description = "a recipe for the runner's tests",
  defaults = { beta = 0.1, lr = 5e-7, max_steps = 10, out = "runs/toy", verbose = false },
  docs = {
    beta = "the KL coefficient",
    lr = "learning rate",
    max_steps = "number of optimizer steps",
    out = "the run directory",
    verbose = "print more",
    resume = "a run directory to continue",
  },
  train = function(cfg)
    local keys = {}
    for k in pairs(cfg) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      print(k .. "=" .. tostring(cfg[k]) .. ":" .. (math.type(cfg[k]) or type(cfg[k])))
    end
    print("sum=" .. E.ones({ 3 }):sum():item())
  end,
}
]]

describe("engine FILE.lua", function()
  it("runs a script with arg and ... set as lua sets them", function()
    local s = file("args.lua", [[
local E = require("engine")
print(arg[0], arg[1], arg[2], #arg, select("#", ...), ...)
print(arg[-1] ~= nil, E.tensor({ { 1, 2 } }):sum():item())
print(rawget(_G, "E"))
]])
    local status, out, errout = H.run(BIN .. " " .. H.quote(s) .. " a --b=c")
    assert.equals(0, status, errout)
    assert.equals(s .. "\ta\t--b=c\t2\t2\ta\t--b=c\ntrue\t3.0\nnil\n", out)
  end)

  it("puts the program at arg[-1] and options below it", function()
    local s = file("neg.lua", "print(arg[-1], arg[-2], arg[-3])")
    local status, out = H.run(BIN .. " -e 'x = 1' " .. H.quote(s))
    assert.equals(0, status)
    assert.equals("x = 1\t-e\t" .. H.engine_bin .. "\n", out)
  end)

  it("reports an error with its message, a traceback and status 1", function()
    local s = file("fails.lua", [[
local E = require("engine")
local function inner() local y = E.matmul(E.ones({ 2, 3 }), E.ones({ 2, 3 })); return y end
local function outer() local y = inner(); return y end
outer()
]])
    local status, out, errout = H.run(BIN .. " " .. H.quote(s))
    assert.equals(1, status)
    assert.equals("", out)
    local first = errout:match("^[^\n]*")
    assert.equals("engine: " .. s .. ":2: matmul: a is [2,3], b is [2,3]: inner dims differ", first)
    assert.matches("\nstack traceback:\n", errout)
    assert.matches("fails%.lua:2: in [%a ]*'inner'", errout)
    assert.matches("fails%.lua:3: in [%a ]*'outer'", errout)
    assert.matches("fails%.lua:4: in main chunk", errout)
    assert.is_nil(errout:find("[C]", 1, true))
    assert.is_nil(errout:find("runner.lua", 1, true))
  end)

  it("marks tail calls in the traceback, as lua does", function()
    local s = file("tail.lua", [[
local function inner() error("deep") end
local function outer() return inner() end
outer()
]])
    local status, _, errout = H.run(BIN .. " " .. H.quote(s))
    assert.equals(1, status)
    assert.equals("engine: " .. s .. ":1: deep\nstack traceback:\n\t" .. s .. ":1: in function <" .. s .. ":1>\n"
      .. "\t(...tail calls...)\n\t" .. s .. ":3: in main chunk\n", errout)
  end)

  it("reports a missing file and a syntax error", function()
    local status, _, errout = H.run(BIN .. " " .. H.quote(dir .. "/missing.lua"))
    assert.equals(1, status)
    assert.matches("^engine: cannot open .*missing%.lua", errout)
    local bad = file("bad.lua", "x = = 1")
    status, _, errout = H.run(BIN .. " " .. H.quote(bad))
    assert.equals(1, status)
    assert.matches("^engine: .*bad%.lua:1: unexpected symbol near '='", errout)
  end)

  it("passes os.exit's status through", function()
    local s = file("exit.lua", "os.exit(3)")
    assert.equals(3, (H.run(BIN .. " " .. H.quote(s))))
  end)

  it("runs standard input with -", function()
    local status, out = H.run(BIN .. " - x", "print(require('engine').version, ...)")
    assert.equals(0, status)
    assert.equals("0.1.0\tx\n", out)
  end)
end)

describe("engine -e, --version, --help, the REPL", function()
  it("-e runs code with E defined, in order", function()
    local status, out = H.run(BIN .. " -e 'print(E.ones({2}):sum():item())' -e 'print(E == require(\"engine\"))'")
    assert.equals(0, status)
    assert.equals("2.0\ntrue\n", out)
  end)

  it("-e errors exit 1 with a traceback", function()
    local status, _, errout = H.run(BIN .. " -e 'local function f() error(\"bad\") end f()'")
    assert.equals(1, status)
    assert.equals("engine: (command line):1: bad\nstack traceback:\n"
      .. "\t(command line):1: in local 'f'\n\t(command line):1: in main chunk\n", errout)
  end)

  it("--version prints the version", function()
    local status, out = H.run(BIN .. " --version")
    assert.equals(0, status)
    assert.equals("engine 0.1.0 (Lua 5.4)\n", out)
  end)

  it("--help describes every form and option", function()
    local status, out = H.run(BIN .. " --help")
    assert.equals(0, status)
    assert.matches("^usage: engine %[options%] %[FILE%.lua %[args%.%.%.%]%]\n", out)
    for _, s in ipairs({ "engine FILE.lua [args...]", "--config=FILE.lua", "--key=value", "RECIPE.lua --help",
      "-e 'code'", "-i ", "--version", "--help", "engine -", "open the REPL", "status 1" }) do
      assert.is_truthy(out:find(s, 1, true), s)
    end
  end)

  it("an unknown option is an error", function()
    local status, _, errout = H.run(BIN .. " -x")
    assert.equals(1, status)
    assert.equals("engine: unknown option '-x'; see engine --help\n", errout)
  end)

  it("the REPL prints results, reports errors and continues, and exits at EOF", function()
    local input = table.concat({
      "1 + 1",
      "x = E.ones({2})",
      "x:sum():item(), 'two'",
      "function f(n)",
      "  return n * 10",
      "end",
      "f(4)",
      "error('oops')",
      "print(x)",
      "",
    }, "\n")
    local status, out, errout = H.run(BIN, input)
    assert.equals(0, status)
    assert.equals("2\n2.0\ttwo\n40\ntensor(float32, [2]) {1, 1}\n", out)
    assert.equals("stdin:1: oops\n", errout)
  end)

  it("-i opens the REPL after a script", function()
    local s = file("lib.lua", "greeting = 'hi'")
    local status, out = H.run(BIN .. " -i " .. H.quote(s), "greeting\n")
    assert.equals(0, status)
    assert.equals("hi\n", out)
  end)
end)

describe("recipes", function()
  local recipe = file("toy.lua", RECIPE)

  it("train(cfg) gets the defaults", function()
    local status, out, errout = H.run(BIN .. " " .. H.quote(recipe))
    assert.equals(0, status, errout)
    assert.equals(table.concat({
      "beta=0.1:float", "lr=5e-07:float", "max_steps=10:integer", "out=runs/toy:string", "verbose=false:boolean",
      "sum=3.0", "" }, "\n"), out)
  end)

  it("--config then --key=value flags override them, by the defaults' types", function()
    local cfg = file("cfg.lua", "return { lr = 1e-3, max_steps = 5, out = 'from_config', beta = 0.3 }")
    local status, out, errout = H.run(BIN .. " " .. H.quote(recipe) .. " --beta=0.5 --config=" .. H.quote(cfg)
      .. " --max-steps=7 --verbose --out=123 --resume=runs/old --lr=1")
    assert.equals(0, status, errout)
    assert.equals(table.concat({
      "beta=0.5:float", "lr=1.0:float", "max_steps=7:integer", "out=123:string", "resume=runs/old:string",
      "verbose=true:boolean", "sum=3.0", "" }, "\n"), out)
    status, out = H.run(BIN .. " " .. H.quote(recipe) .. " --config " .. H.quote(cfg) .. " --verbose=false --max_steps=1e2")
    assert.equals(0, status)
    assert.matches("beta=0.3:float\nlr=0.001:float\nmax_steps=100:integer\nout=from_config:string\nverbose=false", out)
  end)

  it("--no-key sets a boolean false", function()
    local status, out = H.run(BIN .. " " .. H.quote(recipe) .. " --verbose --no-verbose")
    assert.equals(0, status)
    assert.matches("verbose=false:boolean", out)
  end)

  it("an unknown key names the closest valid key", function()
    local status, out, errout = H.run(BIN .. " " .. H.quote(recipe) .. " --bta=1")
    assert.equals(1, status)
    assert.equals("", out)
    assert.equals("engine: unknown option --bta; did you mean --beta?\n", errout)
    status, _, errout = H.run(BIN .. " " .. H.quote(recipe) .. " --max-step=3")
    assert.equals(1, status)
    assert.equals("engine: unknown option --max-step; did you mean --max_steps?\n", errout)
    local cfg = file("typo.lua", "return { lrr = 1 }")
    status, _, errout = H.run(BIN .. " " .. H.quote(recipe) .. " --config=" .. H.quote(cfg))
    assert.equals(1, status)
    assert.equals("engine: " .. cfg .. ": unknown key 'lrr'; did you mean 'lr'?\n", errout)
  end)

  it("bad values and arguments are errors", function()
    local function fails(args, msg)
      local status, _, errout = H.run(BIN .. " " .. H.quote(recipe) .. " " .. args)
      assert.equals(1, status, args)
      assert.equals("engine: " .. msg .. "\n", errout)
    end
    fails("--lr=fast", "option --lr expects a number, got 'fast'")
    fails("--max_steps=2.5", "option --max_steps expects an integer, got '2.5'")
    fails("--verbose=maybe", "option --verbose expects true or false, got 'maybe'")
    fails("--lr", "option --lr needs a value: --lr=VALUE")
    fails("extra", "unexpected argument 'extra'; a recipe takes --key=value options (see engine " .. recipe .. " --help)")
    fails("--config=" .. H.quote(dir .. "/nope.lua"), "cannot open " .. dir .. "/nope.lua: No such file or directory")
    local cfg = file("wrongtype.lua", "return { lr = 'big' }")
    fails("--config=" .. H.quote(cfg), cfg .. ": key 'lr' should be a number (the default is 5e-07), got a string")
    local notable = file("notable.lua", "return 5")
    fails("--config=" .. H.quote(notable), notable .. " must return a table of options, got number")
  end)

  it("--help lists the keys, their defaults and docs", function()
    local status, out = H.run(BIN .. " " .. H.quote(recipe) .. " --help")
    assert.equals(0, status)
    assert.equals(table.concat({
      "usage: engine " .. recipe .. " [--config=FILE.lua] [--key=value ...]",
      "",
      "toy: a recipe for the runner's tests",
      "",
      "options (--key=default):",
      "  --beta=0.1         the KL coefficient",
      "  --lr=5e-07         learning rate",
      "  --max_steps=10     number of optimizer steps",
      "  --out=runs/toy     the run directory",
      "  --resume           a run directory to continue (no default)",
      "  --verbose=false    print more",
      "",
      "  --config=FILE.lua  a Lua file returning a table of options, applied before the flags",
      "  --help             print this text",
      "",
    }, "\n"), out)
  end)

  it("an error inside train exits 1 with a traceback into the recipe", function()
    local r = file("broken.lua", [[
return {
  defaults = { n = 1 },
  train = function(cfg)
    local t = nil
    return t.field
  end,
}
]])
    local status, _, errout = H.run(BIN .. " " .. H.quote(r))
    assert.equals(1, status)
    assert.equals("engine: " .. r .. ":5: attempt to index a nil value (local 't')\nstack traceback:\n\t"
      .. r .. ":5: in function <" .. r .. ":3>\n", errout)
  end)

  it("a script returning a table without train is not a recipe", function()
    local s = file("plain.lua", "print('ran', ...) return { defaults = {} }")
    local status, out = H.run(BIN .. " " .. H.quote(s) .. " --whatever=1")
    assert.equals(0, status)
    assert.equals("ran\t--whatever=1\n", out)
  end)
end)

describe("engine plot", function()
  it("writes the charts of a run and names an unknown metric", function()
    local run = dir .. "/plotrun"
    os.execute("mkdir -p " .. H.quote(run))
    file("plotrun/metrics.jsonl", '{"step":1,"loss":0.7}\n{"step":2,"loss":0.5}\n')
    local status, out = H.run(BIN .. " plot " .. H.quote(run) .. " loss")
    assert.equals(0, status)
    assert.equals(run .. "/plots/loss.svg\n" .. run .. "/plots/loss.png\n", out)
    local status2, _, err = H.run(BIN .. " plot " .. H.quote(run) .. " los")
    assert.equals(1, status2)
    assert.equals("engine: plot: no metric 'los' in " .. run .. "/metrics.jsonl; available: loss\n", err)
  end)
end)

teardown(function() os.execute("rm -rf " .. H.quote(dir)) end)

-- train_spec.lua — engine.train: the run directory, metrics, checkpoints,
-- kill-and-resume equality (a run SIGKILLed mid-step and resumed logs
-- exactly what an uninterrupted run logs, on one machine and thread
-- count), pruning, and the stop on a NaN naming the op that made it.
local H = require("helper")
local E = require("engine")
local Metrics = require("engine.metrics")
local checkpoint = require("engine.checkpoint")
local json = require("engine.json")

local BIN = H.quote(H.engine_bin)
local TOY = H.quote(H.repo .. "/tests/fixtures/train/toy_run.lua")
local dir = H.tmpdir()

local function run(args)
  local p = io.popen(BIN .. " " .. TOY .. " " .. args .. " 2>&1")
  local text = p:read("a")
  local ok, how, code = p:close()
  return text, ok, how, code
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

describe("engine.train", function()
  it("writes config, metrics and checkpoints, keeping the newest two", function()
    local out = dir .. "/plain"
    local text, ok = run(H.quote(out) .. " 7")
    assert.is_true(ok, text)
    local cfg = json.read(out .. "/config.json")
    assert.equals(7, cfg.max_steps)
    local rows = Metrics.read(out .. "/metrics.jsonl")
    assert.equals(7, #rows)
    for i, r in ipairs(rows) do
      assert.equals(i, r.step)
      assert.is_number(r.loss)
      assert.is_number(r.grad_norm)
      assert.equals(0.05, r.learning_rate)
    end
    assert.is_true(rows[7].loss < rows[1].loss)
    -- save_every 3: steps 3 and 6, then 7 at the end; the newest two kept
    local steps = {}
    for _, c in ipairs(checkpoint.list(out)) do steps[#steps + 1] = c.step end
    assert.same({ 6, 7 }, steps)
    assert.is_true(H.exists(out .. "/final/model.safetensors"))
  end)

  it("resumes a run killed mid-step to the same metrics, bit for bit", function()
    local full, killed = dir .. "/full", dir .. "/killed"
    assert.is_true(select(2, run(H.quote(full) .. " 12")))
    local _, ok = run(H.quote(killed) .. " 12 8")
    assert.is_falsy(ok) -- SIGKILLed during step 8
    local before = checkpoint.latest(killed)
    assert.equals(6, before.step)
    local text, ok2 = run(H.quote(killed) .. " 12 0 " .. H.quote(killed))
    assert.is_true(ok2, text)
    assert.equals(slurp(full .. "/metrics.jsonl"), slurp(killed .. "/metrics.jsonl"))
    assert.equals(slurp(full .. "/final/model.safetensors"), slurp(killed .. "/final/model.safetensors"))
  end)

  it("stops on a NaN loss, naming the step and the op, and keeps the last checkpoint", function()
    local out = dir .. "/nan"
    local text, ok = run(H.quote(out) .. " 12 0 '' 5")
    assert.is_falsy(ok)
    assert.matches("engine: step 5: the loss is nan; the first non%-finite value came from 'log'; " ..
      "the last good checkpoint is " .. out:gsub("%p", "%%%0") .. "/checkpoints/step%-00000003", text)
    assert.equals(3, checkpoint.latest(out).step)
    assert.equals(4, #Metrics.read(out .. "/metrics.jsonl"))
  end)

  it("refuses to resume from a directory without checkpoints", function()
    local text, ok = run(H.quote(dir .. "/none") .. " 3 0 " .. H.quote(dir .. "/none"))
    assert.is_falsy(ok)
    assert.matches("resume: no checkpoint found in .*/none/checkpoints", text)
  end)

  it("writes floats that read back bit-identical", function()
    for _, v in ipairs({ 0.1, 1 / 3, 1e-300, 12345.678901234567, -2.5e17, 1.0 }) do
      local back = json.decode(json.encode({ v = v })).v
      assert.equals(v, back)
      assert.equals(math.type(v), math.type(back))
    end
    assert.equals('{"step":3,"a":1,"b":0.5}', json.line("step", 3, { b = 0.5, a = 1 }))
  end)
end)

-- recipes_train_spec.lua — a two-step training run of every recipe on the
-- bundled default model and eight examples, through the engine runner as a
-- user runs it: it must finish, log both steps and save the final model;
-- DPO's second run reads the reference log-probs from the cache. RRHF also
-- trains on K-wise rankings, and KTO prints the before/after report.
local H = require("helper")
require("engine") -- puts lua/ on package.path
local Metrics = require("engine.metrics")

local BIN = H.quote(H.engine_bin)
local dir = H.tmpdir()

local function run(recipe, extra)
  local data = ({ sft = "sft.jsonl", kto = "unpaired.jsonl", reward = "rankings.jsonl" })[recipe] or "pairs.jsonl"
  local out = dir .. "/" .. recipe
  local cmd = string.format("%s %s --max_steps=2 --batch_size=4 --log_every=1 --eval_data= --report=false " ..
    "--threads=1 --data=%s --out=%s --cache_dir=%s %s",
    BIN, H.quote(H.repo .. "/recipes/" .. recipe .. ".lua"), H.quote(H.repo .. "/tests/fixtures/recipes/" .. data),
    H.quote(out), H.quote(dir .. "/cache"), extra or "")
  local status, stdout, stderr = H.run(cmd)
  return status, stdout, stderr, out
end

describe("recipes train", function()
  for _, name in ipairs({ "sft", "dpo", "ipo", "rdpo", "simpo", "cpo", "orpo", "slic", "rrhf", "kto", "reward" }) do
    it(name .. " runs two steps on the default model", function()
      local status, stdout, stderr, out = run(name)
      assert.equals(0, status, stderr)
      local rows = Metrics.read(out .. "/metrics.jsonl")
      assert.equals(2, #rows)
      assert.is_number(rows[2].loss)
      assert.is_true(H.exists(out .. "/final/model.safetensors"))
      assert.is_true(H.exists(out .. "/final/tokenizer.json"))
      if name == "reward" then assert.is_number(rows[2].accuracy)
      elseif name ~= "sft" then assert.is_number(rows[2]["rewards/accuracies"]) end
      if name == "kto" then assert.is_number(rows[2].kl) end
      if name == "dpo" then assert.matches("reference log%-probs: computed and cached", stdout) end
    end)
  end

  it("dpo --lora_rank trains adapters only and leaves the base weights as they were", function()
    local E = require("engine")
    local status, _, stderr, out = run("dpo", "--lora_rank=4 --seed=2 --out=" .. H.quote(dir .. "/lora"))
    assert.equals(0, status, stderr)
    out = dir .. "/lora"
    assert.is_true(H.exists(out .. "/final/adapter_model.safetensors"))
    local base = E.safetensors.load(H.repo .. "/examples/default/model/model.safetensors")
    local after = E.safetensors.load(out .. "/final/model.safetensors")
    for name, t in pairs(base) do assert.equals(E.hash(t), E.hash(after[name]), name) end
  end)

  -- the before/after table of judge score and KL (the KL before is 0)
  local function assert_report(stdout)
    assert.equals("0.000", stdout:match("\nbefore%s+%-?[%d%.]+%s+(%-?[%d%.]+)"), stdout)
    assert.is_not_nil(stdout:match("\nafter%s+%-?[%d%.]+%s+%-?[%d%.]+"), stdout)
  end

  -- the last metrics row holding key
  local function last_with(rows, key)
    for i = #rows, 1, -1 do if rows[i][key] ~= nil then return rows[i] end end
  end

  it("rrhf trains on K-wise rankings, evaluates held-out rankings and reports", function()
    local rankings = H.quote(H.repo .. "/tests/fixtures/recipes/rankings.jsonl")
    local status, stdout, stderr = run("rrhf", "--data=" .. rankings .. " --eval_data=" .. rankings
      .. " --report=true --out=" .. H.quote(dir .. "/rrhf_kwise"))
    assert.equals(0, status, stderr)
    local rows = Metrics.read(dir .. "/rrhf_kwise/metrics.jsonl")
    local last = last_with(rows, "loss")
    assert.equals(2, last.step)
    assert.is_number(last.nll_loss)
    assert.is_number(last["rewards/accuracies"])
    assert.is_number(last_with(rows, "eval/rewards/accuracies")["eval/rewards/accuracies"])
    assert.is_true(H.exists(dir .. "/rrhf_kwise/final/model.safetensors"))
    assert_report(stdout)
  end)

  it("kto prints the before/after report of judge score and KL", function()
    local unpaired = H.quote(H.repo .. "/tests/fixtures/recipes/unpaired.jsonl")
    local status, stdout, stderr = run("kto", "--eval_data=" .. unpaired .. " --report=true --out="
      .. H.quote(dir .. "/kto_report"))
    assert.equals(0, status, stderr)
    assert_report(stdout)
    local rows = Metrics.read(dir .. "/kto_report/metrics.jsonl")
    assert.is_number(last_with(rows, "eval/kl")["eval/kl"])
  end)

  it("dpo reuses the cached reference log-probs", function()
    local status, stdout, stderr = run("dpo", "--seed=1")
    assert.equals(0, status, stderr)
    assert.matches("reference log%-probs: read from the cache", stdout)
  end)
end)

teardown(function() os.execute("rm -rf " .. H.quote(dir)) end)

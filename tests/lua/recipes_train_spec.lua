-- recipes_train_spec.lua — a two-step training run of every recipe on the
-- bundled default model and eight examples, through the engine runner as a
-- user runs it: it must finish, log both steps and save the final model;
-- DPO's second run reads the reference log-probs from the cache.
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

  it("dpo reuses the cached reference log-probs", function()
    local status, stdout, stderr = run("dpo", "--seed=1")
    assert.equals(0, status, stderr)
    assert.matches("reference log%-probs: read from the cache", stdout)
  end)
end)

teardown(function() os.execute("rm -rf " .. H.quote(dir)) end)

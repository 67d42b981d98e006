-- rl_recipes_spec.lua — the online RL plumbing: the rollout's position
-- alignment (the forward pass's log-probs of the sampled tokens equal the
-- sampler's own), the token mapping of fine-grained segments, and a short
-- run of every RL recipe on the bundled default model through the runner,
-- with --resume continuing exactly.
local H = require("helper")
local E = require("engine")
local Metrics = require("engine.metrics")
local R = require("engine.rollout")
local rl = require("engine.rl")

local MODEL = H.repo .. "/examples/default/model"
local BIN = H.quote(H.engine_bin)
local dir = H.tmpdir()

local function max_abs_diff(a, b)
  local d = (a - b):abs():max():item()
  return d
end

describe("rollout", function()
  local model = assert(E.models.load(MODEL))
  local tok = assert(E.tokenizer.load(MODEL))
  local prompts = { "Review of the Luna vacuum:", "Zip phone review. Rating: 4/5.", "The" }
  local rows = {}
  for i, p in ipairs(prompts) do rows[i] = tok:encode(p) end
  local roll = E.no_grad(R.sample, model, tok, rows, prompts, { max_new_tokens = 24, temperature = 1, seed = 3 })

  it("lays out left-padded prompts and right-padded responses", function()
    assert.equals(3, roll.B)
    assert.equals(#rows[2], roll.P) -- the longest prompt
    assert.same({ roll.B, roll.P + roll.N }, roll.ids:shape())
    for b = 1, roll.B do
      assert.equals(#roll.tokens[b], roll.lengths[b])
      assert.equals(roll.lengths[b], roll.resp_mask:narrow(1, b, 1):sum():item())
      local ids = roll.ids:totable()[b]
      for t = 1, roll.lengths[b] do assert.equals(roll.tokens[b][t], ids[roll.P + t]) end
      local n = roll.lengths[b]
      assert.equals(roll.eos[b], roll.tokens[b][n] == tok.eos_id)
    end
  end)

  it("scores each sampled token at the position that predicted it (equal to the sampler's log-probs)", function()
    local lp = E.no_grad(R.logprobs, model, roll)
    assert.same({ roll.B, roll.N }, lp:shape())
    assert.is_true(max_abs_diff(lp * roll.resp_mask, roll.sample_logprobs) < 1e-4)
    -- and a token shifted by one place is not what the sampler drew
    assert.is_true(max_abs_diff(lp:narrow(2, 2, roll.N - 1) * roll.resp_mask:narrow(2, 2, roll.N - 1),
      roll.sample_logprobs:narrow(2, 1, roll.N - 1) * roll.resp_mask:narrow(2, 2, roll.N - 1)) > 0.1)
  end)

  it("scores under the sampling temperature", function()
    local hot = E.no_grad(R.sample, model, tok, rows, prompts, { max_new_tokens = 16, temperature = 0.7, seed = 4 })
    local lp = E.no_grad(R.logprobs, model, hot, { temperature = 0.7 })
    assert.is_true(max_abs_diff(lp * hot.resp_mask, hot.sample_logprobs) < 1e-4)
    local plain = E.no_grad(R.logprobs, model, hot)
    assert.is_true(max_abs_diff(plain * hot.resp_mask, hot.sample_logprobs) > 0.05)
  end)

  it("picks rows for minibatches with every per-row field", function()
    roll.extra = E.arange(3)
    local sub = R.rows(roll, { 3, 1 })
    assert.equals(2, sub.B)
    assert.same({ roll.tokens[3], roll.tokens[1] }, sub.tokens)
    assert.same({ 2, 0 }, sub.extra:totable())
    local lp_all = E.no_grad(R.logprobs, model, roll):totable()
    local lp_sub = E.no_grad(R.logprobs, model, sub):totable()
    assert.is_true(H.close(lp_sub[1], lp_all[3], 1e-4) and H.close(lp_sub[2], lp_all[1], 1e-4))
  end)
end)

describe("fine-grained segments", function()
  local fg = dofile(H.repo .. "/recipes/fine_grained.lua")
  local tok = assert(E.tokenizer.load(H.repo .. "/tests/fixtures/gpt2_tokenizer"))

  it("maps byte offsets of the decoded response to the tokens holding them", function()
    local text = " The motor is great. I hate the lid!"
    local ids = tok:encode(text)
    local ends = rl.token_ends(tok, ids)
    assert.equals(#text, ends[#ends])
    -- every byte lies in the token whose decoded bytes cover it
    for pos = 1, #text do
      local i = rl.token_index(ends, pos)
      local first = i == 1 and 1 or ends[i - 1] + 1
      assert.is_true(first <= pos and pos <= ends[i])
    end
    assert.is_nil(rl.token_index(ends, #text + 1))
    -- the sentence ends "." and "!" are single GPT-2 tokens
    assert.equals(".", tok:decode({ ids[rl.token_index(ends, 20)] }))
    assert.equals("!", tok:decode({ ids[#ids] }))
  end)

  it("puts each sentence's weighted aspects on its last token and the sequence scores on the last", function()
    local prompt = "Review of the Orbit blender:"
    local text = " The motor is great. I hate the lid!"
    local ids = tok:encode(text)
    ids[#ids + 1] = 50256 -- the stop token ends the response
    local roll = { B = 1, N = #ids + 2, texts = { text }, prompts = { prompt }, tokens = { ids },
      lengths = { #ids }, eos = { true } }
    local segs = fg.segments(roll, tok, {})
    assert.equals(3, #segs[1])
    local ends = rl.token_ends(tok, table.move(ids, 1, #ids - 1, 1, {}))
    assert.equals(rl.token_index(ends, 20), segs[1][1].last) -- "great." ends at byte 20
    assert.equals(#ids - 1, segs[1][2].last)                 -- "lid!" is the last text token
    assert.equals(#ids, segs[1][3].last)                     -- the sequence scores sit on the stop token
    local w = { on_topic = 0.5, clean = 0.5, sentiment = 1, length = 0.02, eos = 1 }
    local dense = rl.dense_rewards(segs, w, roll.N):totable()[1]
    local judge = require("engine.tasks.reviews").judge
    local s1 = judge.aspects(prompt, "The motor is great.")
    local want1 = 0.5 * s1.on_topic + 0.5 * s1.clean + judge.sentiment("The motor is great.")
    assert.is_true(math.abs(dense[segs[1][1].last] - want1) < 1e-6)
    assert.is_true(judge.sentiment("I hate the lid!") < 0 and dense[#ids - 1] < 0.5)
    assert.equals(0, dense[#ids]) -- 9 words, an EOS: no sequence-level cost
    local nonzero = 0
    for _, v in ipairs(dense) do if v ~= 0 then nonzero = nonzero + 1 end end
    assert.equals(2, nonzero)
  end)
end)

describe("RL recipes train", function()
  local small = "--max_steps=2 --rollout_batch_size=4 --mini_batch_size=2 --ppo_epochs=1 --max_new_tokens=16 " ..
    "--normalize_samples=4 --eval_prompts=2 --threads=1 --quiet=true"
  local function run(recipe, extra, name)
    local out = dir .. "/" .. (name or recipe)
    local cmd = string.format("%s %s %s --out=%s %s", BIN, H.quote(H.repo .. "/recipes/" .. recipe .. ".lua"), small,
      H.quote(out), extra or "")
    local status, stdout, stderr = H.run(cmd)
    return status, stdout, stderr, out
  end
  local trl = { "objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward",
    "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg" }

  for _, name in ipairs({ "ppo", "ppo_ptx", "grpo", "rloo", "fine_grained" }) do
    it(name .. " runs two iterations and logs TRL's metrics", function()
      local status, _, stderr, out = run(name, name == "grpo" and "--group_size=2" or
        name == "rloo" and "--group_size=2" or nil)
      assert.equals(0, status, stderr)
      local rows = Metrics.read(out .. "/metrics.jsonl")
      assert.equals(2, #rows)
      for _, k in ipairs(trl) do
        assert.is_number(rows[2][k], k)
        assert.is_true(rows[2][k] == rows[2][k], k .. " is NaN")
      end
      if name ~= "grpo" and name ~= "rloo" then
        assert.is_number(rows[2]["loss/value_avg"])
        assert.is_number(rows[2]["val/clipfrac_avg"])
      end
      if name == "ppo_ptx" then assert.is_true(rows[2].ptx_loss > 0) end
      if name == "fine_grained" then assert.is_number(rows[2]["objective/dense_reward"]) end
      assert.is_true(H.exists(out .. "/final/model.safetensors"))
    end)
  end

  it("ppo_ptx --resume continues exactly as an uninterrupted run", function()
    local status, _, stderr, full = run("ppo_ptx", "--save_every=1 --report=false", "ppo_full")
    assert.equals(0, status, stderr)
    -- a run stopped after one iteration, then resumed to two
    local part = dir .. "/ppo_part"
    local cmd = string.format("%s %s %s --save_every=1 --report=false --out=%s", BIN,
      H.quote(H.repo .. "/recipes/ppo_ptx.lua"), small:gsub("max_steps=2", "max_steps=1"), H.quote(part))
    local s1, _, e1 = H.run(cmd)
    assert.equals(0, s1, e1)
    local s2, _, e2 = H.run(string.format("%s %s %s --save_every=1 --report=false --resume=%s", BIN,
      H.quote(H.repo .. "/recipes/ppo_ptx.lua"), small, H.quote(part)))
    assert.equals(0, s2, e2)
    local a, b = Metrics.read(full .. "/metrics.jsonl"), Metrics.read(part .. "/metrics.jsonl")
    assert.equals(2, #b)
    for _, k in ipairs({ "objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg", "ptx_loss" }) do
      assert.equals(a[2][k], b[2][k], k)
    end
  end)

  it("scores with a reward model directory or a Lua function from a --config file", function()
    local rm = assert(E.models.load(MODEL, { value_head = { seed = 5 } }))
    local rm_dir = dir .. "/rm"
    rm:save(rm_dir)
    assert(E.tokenizer.load(MODEL)):save(rm_dir)
    local status, _, stderr, out = run("rloo", "--max_steps=1 --group_size=2 --report=false --reward=" .. H.quote(rm_dir), "rloo_rm")
    assert.equals(0, status, stderr)
    local rows = Metrics.read(out .. "/metrics.jsonl")
    assert.is_true(math.abs(rows[1]["objective/scores"]) > 0)
    local cfg = dir .. "/reward_cfg.lua"
    local f = assert(io.open(cfg, "w"))
    f:write("return { reward = function(prompts, completions)\n",
      "  local s = {} for i, c in ipairs(completions) do s[i] = #c / 100 end return s end }\n")
    f:close()
    status, _, stderr, out = run("grpo", "--max_steps=1 --group_size=2 --report=false --config=" .. H.quote(cfg), "grpo_fn")
    assert.equals(0, status, stderr)
    rows = Metrics.read(out .. "/metrics.jsonl")
    assert.is_true(rows[1]["objective/scores"] > 0 and rows[1]["objective/scores"] <= 0.16)
    -- the mean byte length of the responses (16 tokens at most, one byte each, EOS dropped)
    assert.is_true(math.abs(rows[1]["objective/scores"] * 100 - (rows[1]["val/mean_length"] -
      (rows[1]["val/num_eos_tokens"] / 4))) < 1e-9)
  end)

  it("refuses a rollout batch that is not a multiple of the group size", function()
    local status, _, stderr = run("grpo", "--group_size=3", "grpo_bad")
    assert.is_not.equals(0, status)
    assert.matches("rollout_batch_size %(4%) must be a multiple of group_size %(3%)", stderr)
  end)
end)

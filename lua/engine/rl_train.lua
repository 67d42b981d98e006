-- engine/rl_train.lua — the loop every online RL recipe shares: sample
-- responses, score them, compute the old policy's, the reference's and the
-- critic's per-token values for the whole rollout in one forward each, let
-- the recipe turn that into advantages, then several epochs of minibatch
-- updates of the recipe's loss.
--
--   local RT = require("engine.rl_train")
--   return {
--     defaults = RT.defaults { cliprange = 0.2 },  -- the recipe's keys + the common ones
--     docs = RT.docs { cliprange = "..." },
--     loss = loss,
--     train = function(cfg) return RT.train(cfg, {
--       critic = true,               -- a value model is trained (PPO)
--       group_size = cfg.group_size, -- samples per prompt (GRPO, RLOO); default 1
--       advantages = fn(roll, cfg, state) -> metrics?  -- sets roll.advantages (B,N) (and roll.returns)
--       loss = loss,                 -- loss(batch, cfg) -> scalar, metrics
--       extra_loss = fn(step) -> scalar, metrics?      -- optional (PPO-ptx's pretraining term)
--       rewards = fn(roll, cfg) -> (B,N), metrics?     -- optional dense rewards (Fine-Grained RLHF)
--       on_start = fn(policy, tok),  -- optional: sees the policy before training
--       resumable = {name = obj},    -- optional: objects with :state()/:set_state() kept in checkpoints
--     }) end,
--   }
--
-- The minibatch the loss sees (each (b,N) over response tokens): logprobs
-- (new, differentiable), old_logprobs, ref_logprobs, advantages, mask, and
-- with a critic values (new, differentiable), old_values, returns.
-- roll.scores (B) holds the sequence scores: the reward function's (cfg.reward:
-- "judge" for the default task's judge, or a reward-model directory saved by
-- recipes/reward.lua), normalised by the mean and std of the scores of the
-- starting policy's samples (cfg.normalize_reward), minus
-- cfg.missing_eos_penalty for a response that never ended; the KL
-- coefficient is state.kl_coef (fixed, or adaptive with cfg.kl_target > 0).
--
-- Metrics use TRL's names: objective/kl, objective/entropy,
-- objective/scores, objective/rlhf_reward, policy/approxkl_avg,
-- policy/clipfrac_avg, loss/policy_avg, loss/value_avg, val/clipfrac_avg,
-- plus time/* (seconds spent generating, scoring, in the reference and old
-- policy passes, and updating) for each iteration.
local E = require("engine")
local train = require("engine.train")
local checkpoint = require("engine.checkpoint")
local fs = require("engine.fs")
local json = require("engine.json")
local Metrics = require("engine.metrics")
local Progress = require("engine.progress")
local rl = require("engine.rl")
local R = require("engine.rollout")
local P = require("engine.preference")

local RT = {}

local common = {
  model = P.default_model, data = P.default_data .. "/prompts_train.jsonl",
  eval_data = P.default_data .. "/prompts_eval.jsonl", reward = "judge",
  max_steps = 40, rollout_batch_size = 32, mini_batch_size = 8, ppo_epochs = 4,
  max_new_tokens = 96, max_prompt_length = 64, temperature = 1.0, lr = 3e-5, weight_decay = 0.0,
  kl_coef = 0.05, kl_target = 0, kl_horizon = 10000, normalize_reward = true, normalize_samples = 64,
  missing_eos_penalty = 1.0, threads = 2, report = true, eval_prompts = 32, log_every = 1, eval_every = 0,
  out = "runs/rl",
}
local common_docs = {
  model = "the policy's model directory (also the reference and the critic's start)",
  data = "training prompts (JSONL: prompt)", eval_data = "held-out prompts for the report ('' for none)",
  reward = "'judge' (the default task's judge), a reward-model directory from recipes/reward.lua, or (in a --config file) a function(prompts, completions) -> scores",
  max_steps = "RL iterations (rollout, then updates)", rollout_batch_size = "responses sampled per iteration",
  mini_batch_size = "responses per optimizer step", ppo_epochs = "passes over each rollout",
  max_new_tokens = "longest response in tokens", max_prompt_length = "longest prompt in tokens",
  temperature = "sampling temperature of rollouts (1: the policy itself)",
  lr = "learning rate (constant)", weight_decay = "AdamW weight decay",
  kl_coef = "β: weight of the KL penalty to the starting model (the initial value when adaptive)",
  kl_target = "target KL of the adaptive controller (0: β stays fixed)", kl_horizon = "the adaptive controller's horizon",
  normalize_reward = "divide scores by the std (after subtracting the mean) of the starting policy's scores",
  normalize_samples = "responses sampled to estimate that mean and std",
  missing_eos_penalty = "subtracted from the score of a response that hit max_new_tokens",
  threads = "threads for the engine and OpenBLAS",
  report = "judge greedy completions of held-out prompts and measure the KL to the start, before and after",
  eval_prompts = "held-out prompts in the report",
}

local loop_docs = {
  log_every = "iterations between logged metric lines",
  eval_every = "iterations between held-out judge scores (0: only the report)",
  save_every = "iterations between checkpoints (0: only at the end)",
}

function RT.defaults(own) return train.merge(train.defaults, common, own) end
function RT.docs(own) return train.merge(train.docs, common_docs, loop_docs, own) end

local function load_model(dir, opts)
  local model, err = E.models.load(dir, opts)
  if not model then error("model: " .. err, 0) end
  return model
end

-- the reward function: fn(roll) -> list of B scores
function RT.reward_fn(cfg, tok)
  if type(cfg.reward) == "function" then return function(roll) return cfg.reward(roll.prompts, roll.texts, roll) end end
  if cfg.reward == "judge" then
    local judge = require("engine.tasks.reviews").judge
    return function(roll)
      local s = {}
      for b = 1, roll.B do s[b] = judge.score(roll.prompts[b], roll.texts[b]) end
      return s
    end
  end
  local rm = load_model(cfg.reward)
  if not rm.score_head then error("reward: " .. cfg.reward .. " has no score head (train one with recipes/reward.lua)", 0) end
  if rm.vocab_size ~= tok.vocab_size then
    error(string.format("reward: the reward model's vocabulary (%d) differs from the policy's (%d)", rm.vocab_size, tok.vocab_size), 0)
  end
  return function(roll)
    return rm:score(roll.ids, { attention_mask = roll.mask }):totable()
  end
end

local function mean_std(list)
  local n, s, s2 = #list, 0, 0
  for _, v in ipairs(list) do s = s + v end
  local m = s / n
  for _, v in ipairs(list) do s2 = s2 + (v - m) ^ 2 end
  return m, math.sqrt(s2 / math.max(1, n - 1))
end

-- greedy completions of the eval prompts, judged by the reward function, and
-- the KL(π || π_start) on samples of π: mean over prompts of Σ_t log π - log π_start
local function report(policy, ref, tok, prompts, score, cfg)
  local rows = {}
  for i, p in ipairs(prompts) do rows[i] = tok:encode(p) end
  local greedy = R.sample(policy, tok, rows, prompts, { max_new_tokens = cfg.max_new_tokens, temperature = 0 })
  local total = 0
  for _, s in ipairs(score(greedy)) do total = total + s end
  local roll = R.sample(policy, tok, rows, prompts, { max_new_tokens = cfg.max_new_tokens, temperature = 1, seed = cfg.seed + 7 })
  local kl = ((R.logprobs(policy, roll) - R.logprobs(ref, roll)) * roll.resp_mask):sum():item() / #prompts
  return total / #prompts, kl, greedy.texts[1]
end

local function shuffled(n, gen)
  local idx = {}
  for i = 1, n do idx[i] = i end
  for i = n, 2, -1 do
    local j = 1 + math.floor(gen:uniform() * i)
    idx[i], idx[j] = idx[j], idx[i]
  end
  return idx
end

-- params of the policy and the critic, named apart, for the optimizer and checkpoints
local function bundle(policy, critic)
  local b = {}
  function b:parameters()
    local list = {}
    for _, p in ipairs(policy:parameters()) do list[#list + 1] = p end
    if critic and critic ~= policy then
      for _, p in ipairs(critic:parameters()) do list[#list + 1] = { name = "critic." .. p.name, tensor = p.tensor } end
    end
    return list
  end
  return b
end

local function time_it(acc, key, fn, ...)
  local t0 = E.wall_time()
  local a, b, c = fn(...)
  acc[key] = (acc[key] or 0) + E.wall_time() - t0
  return a, b, c
end

local function check_cfg(cfg, algo)
  local G = algo.group_size or 1
  local function need(ok, msg, ...) if not ok then error(string.format(msg, ...), 0) end end
  need(cfg.rollout_batch_size % G == 0, "rollout_batch_size (%d) must be a multiple of group_size (%d)", cfg.rollout_batch_size, G)
  need(cfg.mini_batch_size >= 1 and cfg.mini_batch_size <= cfg.rollout_batch_size,
    "mini_batch_size (%d) must be between 1 and rollout_batch_size (%d)", cfg.mini_batch_size, cfg.rollout_batch_size)
  need(cfg.temperature > 0, "temperature must be > 0 for rollouts, got %s", tostring(cfg.temperature))
  need(cfg.max_new_tokens >= 1, "max_new_tokens must be at least 1")
  return G
end

-- RT.train(cfg, algo) -> {step=, metrics=, out=, report=}
function RT.train(cfg, algo)
  local G = check_cfg(cfg, algo)
  E.set_threads(cfg.threads)
  E.manual_seed(cfg.seed)
  local policy = load_model(cfg.model)
  local tok, terr = E.tokenizer.load(cfg.model)
  if not tok then error("tokenizer: " .. terr, 0) end
  local ref = load_model(cfg.model)
  local critic
  if algo.critic then critic = load_model(cfg.critic_model and cfg.critic_model ~= "" and cfg.critic_model or cfg.model,
    { value_head = { seed = cfg.seed } }) end
  local score = RT.reward_fn(cfg, tok)
  if algo.on_start then algo.on_start(policy, tok) end
  local judge = cfg.reward == "judge" and score or RT.reward_fn({ reward = "judge" }, tok)

  local topts = { max_prompt_length = cfg.max_prompt_length }
  local items = E.data.tokenize_prompts(E.data.read_jsonl(cfg.data, { format = "prompts" }), tok, topts)
  local n_prompts = cfg.rollout_batch_size // G
  local loader = E.data.Loader(items, { batch_size = n_prompts, seed = cfg.seed, group_by_length = false })
  local gen = E.Generator(cfg.seed + 1)
  local params = bundle(policy, critic)
  local opt = E.optim.AdamW(params:parameters(), { lr = cfg.lr, weight_decay = cfg.weight_decay })
  local kl_ctl = rl.adaptive_kl { init = cfg.kl_coef, target = cfg.kl_target > 0 and cfg.kl_target or nil,
    horizon = cfg.kl_horizon }
  local state = { kl_coef = cfg.kl_coef, reward_mean = 0, reward_std = 1 }

  local eval_prompts
  if cfg.eval_data and cfg.eval_data ~= "" then
    eval_prompts = {}
    local seen = {}
    for _, ex in ipairs(E.data.read_jsonl(cfg.eval_data, { format = "prompts" })) do
      if not seen[ex.prompt] and #eval_prompts < cfg.eval_prompts then
        eval_prompts[#eval_prompts + 1], seen[ex.prompt] = ex.prompt, true
      end
    end
  end

  local out, step = cfg.out, 0
  local generators = { E.default_generator(), gen }
  local last_ckpt
  if cfg.resume and cfg.resume ~= "" then
    local latest = checkpoint.latest(cfg.resume)
    if not latest then error("resume: no checkpoint found in " .. cfg.resume .. "/checkpoints", 0) end
    step = checkpoint.load(latest.dir, { model = params, optimizer = opt, loader = loader, state = state, generators = generators })
    out, last_ckpt = cfg.resume, latest.dir
    kl_ctl.value = state.kl_coef
    for name, obj in pairs(algo.resumable or {}) do
      if state.objects and state.objects[name] then obj:set_state(state.objects[name]) end
    end
  end
  assert(fs.mkdir_p(out))
  local quiet = cfg.quiet
  local function say(...) if not quiet then print(string.format(...)) end end

  local before
  if cfg.report and eval_prompts and step == 0 then
    before = { E.no_grad(report, policy, ref, tok, eval_prompts, judge, cfg) }
  end
  if step == 0 then
    json.write(out .. "/config.json", (function()
      local c = {}
      for k, v in pairs(cfg) do if type(v) ~= "function" then c[k] = v end end
      return c
    end)())
    if cfg.normalize_reward then
      -- the starting policy's score distribution on training prompts
      local rows, texts = {}, {}
      for i = 1, cfg.normalize_samples do
        local it = items[(i - 1) % #items + 1]
        rows[i], texts[i] = it.prompt, it.example.prompt
      end
      local scores = {}
      for first = 1, #rows, cfg.rollout_batch_size do
        local last = math.min(#rows, first + cfg.rollout_batch_size - 1)
        local roll = E.no_grad(R.sample, policy, tok, table.move(rows, first, last, 1, {}),
          table.move(texts, first, last, 1, {}), { max_new_tokens = cfg.max_new_tokens, temperature = cfg.temperature, generator = gen })
        for _, s in ipairs(score(roll)) do scores[#scores + 1] = s end
      end
      state.reward_mean, state.reward_std = mean_std(scores)
      if state.reward_std < 1e-6 then state.reward_std = 1 end
      say("reward normalisation: mean %.4f, std %.4f over %d samples of the starting policy", state.reward_mean, state.reward_std, #scores)
    end
  end

  local temp = { temperature = cfg.temperature } -- log-probs under the distribution sampled from
  local log = Metrics.open(out, step > 0 and step or nil)
  local progress = Progress.new { total = cfg.max_steps, start = step, every = cfg.log_every, quiet = quiet }
  local metrics
  local function save(at)
    state.kl_coef = kl_ctl.value
    state.objects = {}
    for name, obj in pairs(algo.resumable or {}) do state.objects[name] = obj:state() end
    last_ckpt = checkpoint.save(out, at, { model = params, optimizer = opt, loader = loader, state = state, generators = generators })
    checkpoint.prune(out, cfg.keep_checkpoints)
  end

  while step < cfg.max_steps do
    step = step + 1
    local times = {}
    local batch = loader:next()
    local rows, texts = {}, {}
    for i = 1, batch.size do
      for _ = 1, G do rows[#rows + 1], texts[#texts + 1] = batch.prompts[i], batch.examples[i].prompt end
    end
    local roll = time_it(times, "time/generation", E.no_grad, R.sample, policy, tok, rows, texts,
      { max_new_tokens = cfg.max_new_tokens, temperature = cfg.temperature, generator = gen })
    local raw = time_it(times, "time/scoring", E.no_grad, score, roll)
    local scores, eos_count, raw_sum = {}, 0, 0
    for b = 1, roll.B do
      raw_sum = raw_sum + raw[b]
      local s = (raw[b] - state.reward_mean) / state.reward_std
      if not roll.eos[b] then s = s - cfg.missing_eos_penalty else eos_count = eos_count + 1 end
      scores[b] = s
    end
    roll.raw_scores = E.tensor(raw)
    roll.scores = E.tensor(scores)
    time_it(times, "time/reference", E.no_grad, function()
      roll.old_logprobs = R.logprobs(policy, roll, temp) * roll.resp_mask
      roll.ref_logprobs = R.logprobs(ref, roll, temp) * roll.resp_mask
      if critic then roll.old_values = R.values(critic, roll) end
    end)
    metrics = {}
    if algo.rewards then
      local dense, m = algo.rewards(roll, cfg)
      roll.dense_rewards = dense
      for k, v in pairs(m or {}) do metrics[k] = v end
    end
    local am = algo.advantages(roll, cfg, { kl_coef = kl_ctl.value, state = state })
    for k, v in pairs(am or {}) do metrics[k] = v end

    -- the update: ppo_epochs passes over the rollout in shuffled minibatches
    local t_update = E.wall_time()
    local sums, n_mb = {}, 0
    for _ = 1, cfg.ppo_epochs do
      local order = shuffled(roll.B, gen)
      for first = 1, roll.B, cfg.mini_batch_size do
        local idx = table.move(order, first, math.min(roll.B, first + cfg.mini_batch_size - 1), 1, {})
        local sub = R.rows(roll, idx)
        local mb = {
          logprobs = R.logprobs(policy, sub, temp), old_logprobs = sub.old_logprobs, ref_logprobs = sub.ref_logprobs,
          advantages = sub.advantages, mask = sub.resp_mask,
        }
        if critic then
          mb.values, mb.old_values, mb.returns = R.values(critic, sub), sub.old_values, sub.returns
        end
        opt:zero_grad()
        local L, m = algo.loss(mb, cfg)
        if algo.extra_loss then
          local X, xm = algo.extra_loss(step)
          L = L + X
          for k, v in pairs(xm or {}) do m[k] = v end
        end
        local value = L:item()
        if value ~= value or value == math.huge or value == -math.huge then
          error(string.format("step %d: the loss is %s%s", step, tostring(value),
            last_ckpt and ("; the last good checkpoint is " .. last_ckpt) or ""), 0)
        end
        L:backward()
        local norm = opt:clip_grad_norm(cfg.max_grad_norm > 0 and cfg.max_grad_norm or math.huge)
        opt:step()
        m.loss, m.grad_norm = value, norm
        for k, v in pairs(m) do sums[k] = (sums[k] or 0) + v end
        n_mb = n_mb + 1
      end
    end
    times["time/update"] = E.wall_time() - t_update

    local nseq = roll.B
    local kl_seq = ((roll.old_logprobs - roll.ref_logprobs) * roll.resp_mask):sum():item() / nseq
    local entropy = -roll.old_logprobs:sum():item() / nseq
    local names = { pg_loss = "loss/policy_avg", vf_loss = "loss/value_avg", approxkl = "policy/approxkl_avg",
      clipfrac = "policy/clipfrac_avg", vf_clipfrac = "val/clipfrac_avg" }
    for k, v in pairs(sums) do metrics[names[k] or k] = v / n_mb end
    metrics["objective/kl"] = kl_seq
    metrics["objective/entropy"] = entropy
    metrics["objective/scores"] = raw_sum / nseq
    metrics["objective/non_score_reward"] = -kl_ctl.value * kl_seq
    metrics["objective/rlhf_reward"] = scores and (roll.scores:sum():item() / nseq - kl_ctl.value * kl_seq)
    metrics["objective/kl_coef"] = kl_ctl.value
    metrics["val/num_eos_tokens"] = eos_count
    local len = 0
    for _, l in ipairs(roll.lengths) do len = len + l end
    metrics["val/mean_length"] = len / nseq
    for k, v in pairs(times) do metrics[k] = v end
    kl_ctl:update(kl_seq, roll.B)
    state.kl_coef = kl_ctl.value

    if step % math.max(1, cfg.log_every) == 0 or step == cfg.max_steps then log:write(step, metrics) end
    progress:update(step, { score = metrics["objective/scores"], kl = kl_seq }, len)
    if cfg.eval_every > 0 and step % cfg.eval_every == 0 and eval_prompts then
      local s, kl = E.no_grad(report, policy, ref, tok, eval_prompts, judge, cfg)
      log:write(step, { ["eval/score"] = s, ["eval/kl"] = kl })
      progress:note(string.format("eval at step %d: score %.4f, kl %.3f", step, s, kl))
    end
    if cfg.save_every > 0 and step % cfg.save_every == 0 then save(step) end
  end
  progress:finish()
  if not (cfg.save_every > 0 and step % cfg.save_every == 0) then save(step) end
  log:close()
  policy:save(out .. "/final")
  tok:save(out .. "/final")
  local ok_plot, plot = pcall(require, "engine.plot")
  if ok_plot and plot.run_dir then pcall(plot.run_dir, out) end
  local result = { step = step, metrics = metrics, out = out }
  if before then
    local after = { E.no_grad(report, policy, ref, tok, eval_prompts, judge, cfg) }
    result.report = { before = before, after = after }
    say("%-8s %12s %14s", "", "judge score", "KL to start")
    say("%-8s %12.3f %14.3f", "before", before[1], before[2])
    say("%-8s %12.3f %14.3f", "after", after[1], after[2])
    say("a greedy completion after: %q -> %q", eval_prompts[1], after[3])
  end
  return result
end

return RT

-- engine/preference.lua — everything a paired-preference recipe needs
-- except its loss: the policy and tokenizer, the pairs and their batches,
-- the reference log-probs (computed once, cached on disk), one batched
-- forward over chosen and rejected, held-out evaluation, and the report of
-- the judge's score and the KL to the starting model, before and after.
--
--   local P = require("engine.preference")
--   return {
--     defaults = P.defaults { beta = 0.1 },   -- the recipe's keys + the common ones
--     docs = P.docs { beta = "..." },
--     loss = loss,                            -- loss(b, cfg) -> scalar tensor, metrics
--     train = function(cfg) return P.train(cfg, loss, { reference = true }) end,
--   }
--
-- The batch the loss sees (1-D tensors of length B, as the recipes' issue
-- fixes them): policy_chosen_logps, policy_rejected_logps (sums of the
-- completion tokens' log-probs, EOS included, prompt excluded),
-- reference_chosen_logps, reference_rejected_logps (with reference = true),
-- chosen_lengths, rejected_lengths (completion token counts).
--
-- Also for the other offline plumbing (engine.unpaired, engine.rankings):
-- P.defaults, P.docs, P.load_model, P.trainable (all weights or LoRA),
-- P.evaluator (held-out metrics), P.fit (the loop) and the report: P.report, P.eval_prompts,
-- P.start_report (the before/after table of judge score and KL).
local E = require("engine")
local train = require("engine.train")
local lm = require("engine.lm")
local refcache = require("engine.refcache")

local P = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/lua/engine/[^/]*$") or "."
P.default_model = here .. "/examples/default/model"
P.default_data = here .. "/examples/default/data"

local common = {
  model = P.default_model, data = P.default_data .. "/pairs_train.jsonl",
  eval_data = P.default_data .. "/pairs_eval.jsonl", batch_size = 16, lr = 1e-4,
  max_length = 192, max_prompt_length = 64, threads = 2, cache_dir = ".cache/reflogps",
  report = true, out = "runs/preference", max_steps = 120, log_every = 10, eval_every = 40,
  weight_decay = 0.0, warmup_steps = 10, lora_rank = 0, lora_alpha = 16,
}
local common_docs = {
  model = "the policy's model directory (also the reference)",
  data = "training pairs (JSONL: prompt, chosen, rejected)",
  eval_data = "held-out pairs for evaluation ('' for none)",
  batch_size = "pairs per step", lr = "peak learning rate",
  max_length = "longest prompt + completion in tokens", max_prompt_length = "longest prompt in tokens",
  threads = "threads for the engine and OpenBLAS", cache_dir = "where reference log-probs are cached",
  report = "judge greedy completions and measure the KL to the start, before and after",
  weight_decay = "AdamW weight decay", warmup_steps = "linear warm-up steps",
  lora_rank = "train LoRA adapters of this rank on the attention projections instead of all weights (0 = off)",
  lora_alpha = "LoRA's α (the adapters are scaled by α/rank)",
}

function P.defaults(own) return train.merge(train.defaults, common, own) end
function P.docs(own) return train.merge(train.docs, common_docs, own) end

-- P.load_model(dir) -> model, tokenizer (raises "model: ..." / "tokenizer: ...")
local function load_model(dir)
  local model, err = E.models.load(dir)
  if not model then error("model: " .. err, 0) end
  local tok, terr = E.tokenizer.load(dir)
  if not tok then error("tokenizer: " .. terr, 0) end
  return model, tok
end
P.load_model = load_model

-- (R) sums of log-probs and counts of a pairs batch, split into chosen/rejected
local function pair_logps(model, batch)
  local S, n = lm.sequence_logps(model, batch)
  local B = batch.size
  return S:narrow(1, 1, B), S:narrow(1, B + 1, B), n:narrow(1, 1, B), n:narrow(1, B + 1, B)
end

-- the reference's sums for every item, in item order: computed once per
-- (weights, tokenizer, data), then read from the cache
local function reference_logps(cfg, model, tok, items, name)
  local rows = {}
  for i, it in ipairs(items) do
    rows[i] = {}
    for _, part in ipairs({ it.prompt, { -1 }, it.chosen, { -1 }, it.rejected }) do
      table.move(part, 1, #part, #rows[i] + 1, rows[i])
    end
  end
  local tok_key = refcache.digest(tostring(tok.vocab_size) .. "|" .. tostring(tok.eos_id))
  local t, hit = refcache.get {
    dir = cfg.cache_dir, model = model, parts = { name, tok_key, refcache.ids_key(rows) },
    compute = function()
      local chosen, rejected = {}, {}
      local n = #items
      for first = 1, n, cfg.batch_size do
        local idx = {}
        for i = first, math.min(n, first + cfg.batch_size - 1) do idx[#idx + 1] = items[i] end
        local batch = E.data.collate(idx, items.pad_id)
        local Sw, Sl = pair_logps(model, batch)
        local w, l = Sw:totable(), Sl:totable()
        for j = 1, #idx do
          chosen[first + j - 1], rejected[first + j - 1] = w[j], l[j]
        end
      end
      return { chosen = E.tensor(chosen), rejected = E.tensor(rejected) }
    end,
  }
  return t.chosen:totable(), t.rejected:totable(), hit
end

local function pick(list, indices)
  local out = {}
  for i, k in ipairs(indices) do out[i] = list[k] end
  return E.tensor(out)
end

-- the loss's batch from a data batch
local function loss_batch(model, batch, ref_w, ref_l)
  local Sw, Sl, nw, nl = pair_logps(model, batch)
  local b = { policy_chosen_logps = Sw, policy_rejected_logps = Sl, chosen_lengths = nw, rejected_lengths = nl }
  if ref_w then
    b.reference_chosen_logps = pick(ref_w, batch.indices)
    b.reference_rejected_logps = pick(ref_l, batch.indices)
  end
  return b
end

-- P.report(model, start, tok, prompts, seed) -> judge score, KL: the mean
-- judge score of greedy completions of the prompts (at most 96 new tokens);
-- and the KL(π || π_start) on samples drawn from π at temperature 1: the
-- mean over prompts of Σ_t log π(y_t) - log π_start(y_t)
local function report(model, start, tok, prompts, seed)
  local judge = require("engine.tasks.reviews").judge
  local ids = {}
  for i, p in ipairs(prompts) do ids[i] = tok:encode(p) end
  local g = E.generate(model, ids, { max_new_tokens = 96, temperature = 0, stop_tokens = { tok.eos_id } })
  local score = 0
  for i, p in ipairs(prompts) do
    score = score + judge.score(p, tok:decode(g.tokens[i], { skip_special_tokens = true }))
  end
  local s = E.generate(model, ids, { max_new_tokens = 96, temperature = 1, stop_tokens = { tok.eos_id }, seed = seed })
  local T = s.ids:shape()[2]
  local labels = E.where(s.completion_mask:narrow(2, 2, T - 1), s.ids:narrow(2, 2, T - 1), -1)
  local ctx = s.ids:narrow(2, 1, T - 1)
  local mask = s.mask:narrow(2, 1, T - 1)
  local kl = E.no_grad(function()
    local a = model:logprobs(ctx, labels, { attention_mask = mask }):sum()
    local b = start:logprobs(ctx, labels, { attention_mask = mask }):sum()
    return (a - b):item() / #prompts
  end)
  return score / #prompts, kl
end
P.report = report

-- P.eval_prompts(path, n) -> the first n (default 32) distinct prompts of a
-- data file of any format, in file order
function P.eval_prompts(path, n)
  local prompts, seen = {}, {}
  for _, ex in ipairs(E.data.read_jsonl(path, { format = "prompts" })) do
    if not seen[ex.prompt] and #prompts < (n or 32) then prompts[#prompts + 1], seen[ex.prompt] = ex.prompt, true end
  end
  return prompts
end

-- P.start_report(cfg, model, tok) -> nil when cfg.report is off or there is
-- no cfg.eval_data; else measures the report of the untrained model now
-- (prompts from cfg.eval_data, the start reloaded from cfg.model) and returns
-- finish(result), which measures it again, sets result.report = {before =
-- {score, kl}, after = {score, kl}}, prints the before/after table (unless
-- cfg.quiet) and returns result
function P.start_report(cfg, model, tok)
  if not cfg.report or not cfg.eval_data or cfg.eval_data == "" then return nil end
  local start = load_model(cfg.model)
  local prompts = P.eval_prompts(cfg.eval_data)
  local before = { E.no_grad(report, model, start, tok, prompts, cfg.seed) }
  return function(result)
    local after = { E.no_grad(report, model, start, tok, prompts, cfg.seed) }
    result.report = { before = before, after = after }
    if not cfg.quiet then
      print(string.format("%-8s %12s %14s", "", "judge score", "KL to start"))
      print(string.format("%-8s %12.3f %14.3f", "before", before[1], before[2]))
      print(string.format("%-8s %12.3f %14.3f", "after", after[1], after[2]))
    end
    return result
  end
end

-- NLL = -ΣS_w / Σ|y_w|: the token-mean negative log-likelihood of the batch's
-- chosen completions (the SFT term of CPO, ORPO, SimPO, RRHF, SLiC)
function P.chosen_nll(b)
  return -b.policy_chosen_logps:sum() / b.chosen_lengths:sum()
end

-- the metrics every preference recipe logs, from its implicit rewards
function P.reward_metrics(b, chosen, rejected)
  chosen, rejected = chosen:detach(), rejected:detach()
  local margin = chosen - rejected
  return {
    ["rewards/chosen"] = chosen:mean():item(),
    ["rewards/rejected"] = rejected:mean():item(),
    ["rewards/accuracies"] = E.where(E.maximum(margin, 0), 1, 0):mean():item(),
    ["rewards/margins"] = margin:mean():item(),
    ["logps/chosen"] = b.policy_chosen_logps:detach():mean():item(),
    ["logps/rejected"] = b.policy_rejected_logps:detach():mean():item(),
  }
end

-- the parameters the optimizer trains: all of them, or with cfg.lora_rank > 0
-- LoRA adapters on the attention projections (zero-initialised B, so the
-- policy starts as the model itself and the cached reference still holds)
function P.trainable(model, cfg)
  if (cfg.lora_rank or 0) <= 0 then return model:parameters() end
  local targets = model.config.model_type == "gpt2" and { "c_attn" } or { "q_proj", "v_proj" }
  E.lora.apply(model, { rank = cfg.lora_rank, alpha = cfg.lora_alpha, targets = targets, seed = cfg.seed })
  return E.lora.parameters(model)
end

-- P.evaluator(items, cfg, fn) -> a function returning the metrics of fn(batch)
-- (loss tensor, metrics table) over all of items in fixed order, each
-- averaged with the batches' sizes as weights; "loss" is the loss's value
function P.evaluator(items, cfg, fn)
  local loader = E.data.Loader(items, { batch_size = cfg.batch_size, shuffle = false, group_by_length = false })
  return function()
    local sums, n = {}, 0
    for _ = 1, loader:num_batches() do
      local batch = loader:next()
      local L, m = fn(batch)
      m.loss = L:item()
      for k, v in pairs(m) do sums[k] = (sums[k] or 0) + v * batch.size end
      n = n + batch.size
    end
    for k, v in pairs(sums) do sums[k] = v / n end
    return sums
  end
end

-- P.fit(cfg, model, tok, items, loss, evaluate) -> train.fit's result: the
-- shared loop of the offline recipes. AdamW over P.trainable(model, cfg),
-- linear warm-up then decay to 0 at cfg.max_steps, shuffled batches of
-- items; loss(batch) -> loss tensor, metrics; evaluate as train.fit's;
-- the final model and tokenizer are saved in OUT/final.
function P.fit(cfg, model, tok, items, loss, evaluate)
  local loader = E.data.Loader(items, { batch_size = cfg.batch_size, seed = cfg.seed })
  local opt = E.optim.AdamW(P.trainable(model, cfg), { lr = cfg.lr, weight_decay = cfg.weight_decay })
  local schedule = E.optim.schedule { kind = "linear", warmup_steps = math.min(cfg.warmup_steps, cfg.max_steps),
    total_steps = cfg.max_steps, lr = cfg.lr }
  return train.fit {
    cfg = cfg, model = model, optimizer = opt, schedule = schedule, loader = loader, evaluate = evaluate,
    loss = function(batch)
      local L, m = loss(batch)
      return L, m, batch.attention_mask:sum():item()
    end,
    final = function(dir)
      model:save(dir)
      tok:save(dir)
    end,
  }
end

-- P.train(cfg, loss, {reference = bool}) -> result of train.fit (with
-- result.report when the report ran)
function P.train(cfg, loss, opts)
  opts = opts or {}
  E.set_threads(cfg.threads)
  E.manual_seed(cfg.seed)
  local model, tok = load_model(cfg.model)
  local topts = { max_length = cfg.max_length, max_prompt_length = cfg.max_prompt_length }
  local items = E.data.tokenize_pairs(E.data.read_jsonl(cfg.data, { format = "pairs" }), tok, topts)
  local eval_items
  if cfg.eval_data and cfg.eval_data ~= "" then
    eval_items = E.data.tokenize_pairs(E.data.read_jsonl(cfg.eval_data, { format = "pairs" }), tok, topts)
  end
  local ref_w, ref_l, eref_w, eref_l
  if opts.reference then
    local hit
    ref_w, ref_l, hit = reference_logps(cfg, model, tok, items, cfg.data)
    if not cfg.quiet then print(hit and "reference log-probs: read from the cache" or "reference log-probs: computed and cached") end
    if eval_items then eref_w, eref_l = reference_logps(cfg, model, tok, eval_items, cfg.eval_data) end
  end
  local evaluate
  if eval_items then
    evaluate = P.evaluator(eval_items, cfg, function(batch)
      return loss(loss_batch(model, batch, eref_w, eref_l), cfg)
    end)
  end
  local finish = P.start_report(cfg, model, tok)
  local result = P.fit(cfg, model, tok, items, function(batch)
    return loss(loss_batch(model, batch, ref_w, ref_l), cfg)
  end, evaluate)
  return finish and finish(result) or result
end

return P

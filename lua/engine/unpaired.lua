-- engine/unpaired.lua — the plumbing of unpaired-feedback recipes (KTO):
-- prompt/completion examples labelled desirable or not, each scored by the
-- policy and the reference, plus a mismatched completion per example for
-- the KL estimate z0: example i's prompt with example i+1's completion (the
-- last wraps to the first), as TRL builds its KL data set. Reference
-- log-probs of both are computed once and cached (engine.refcache). With
-- cfg.report, the judge's score of greedy completions and the KL to the
-- start are measured before and after training (engine.preference's report).
--
--   U.train(cfg, loss) with loss(b, cfg) -> scalar tensor, metrics, where b
--   holds 1-D tensors of length B: policy_logps, reference_logps, labels (1
--   desirable, 0 not), kl_policy_logps, kl_reference_logps.
local E = require("engine")
local P = require("engine.preference")
local lm = require("engine.lm")
local refcache = require("engine.refcache")

local U = {}

-- the mismatched item of each item: prompt of i, completion of i+1
local function kl_items(items)
  local out = { pad_id = items.pad_id }
  local n = #items
  for i, it in ipairs(items) do
    local other = items[i % n + 1]
    local ids, mask = {}, {}
    for t = 1, it.prompt_len do ids[t], mask[t] = it.ids[t], 0 end
    for t = other.prompt_len + 1, #other.ids do
      ids[#ids + 1], mask[#mask + 1] = other.ids[t], other.loss_mask[t]
    end
    out[i] = { ids = ids, loss_mask = mask, prompt_len = it.prompt_len, label = it.label }
  end
  return out
end

local function sums(model, items, idx)
  local rows = {}
  for j, k in ipairs(idx) do rows[j] = items[k] end
  local S = lm.sequence_logps(model, E.data.collate(rows, items.pad_id))
  return S
end

local function reference(cfg, model, items, kl, name)
  local all = {}
  for i, it in ipairs(items) do all[i] = it.ids end
  for i, it in ipairs(kl) do all[#items + i] = it.ids end
  local t = refcache.get {
    dir = cfg.cache_dir, model = model, parts = { "unpaired", name, refcache.ids_key(all) },
    compute = function()
      local a, b = {}, {}
      for first = 1, #items, cfg.batch_size do
        local idx = {}
        for i = first, math.min(#items, first + cfg.batch_size - 1) do idx[#idx + 1] = i end
        local s1, s2 = sums(model, items, idx):totable(), sums(model, kl, idx):totable()
        for j, k in ipairs(idx) do a[k], b[k] = s1[j], s2[j] end
      end
      return { matched = E.tensor(a), mismatched = E.tensor(b) }
    end,
  }
  return t.matched:totable(), t.mismatched:totable()
end

local function pick(list, idx)
  local out = {}
  for j, k in ipairs(idx) do out[j] = list[k] end
  return E.tensor(out)
end

function U.train(cfg, loss)
  E.set_threads(cfg.threads)
  E.manual_seed(cfg.seed)
  local model, tok = P.load_model(cfg.model)
  local topts = { max_length = cfg.max_length, max_prompt_length = cfg.max_prompt_length }
  local function load(path)
    local items = E.data.tokenize_unpaired(E.data.read_jsonl(path, { format = "unpaired" }), tok, topts)
    local kl = kl_items(items)
    local ref, kl_ref = reference(cfg, model, items, kl, path)
    return items, kl, ref, kl_ref
  end
  local items, kl, ref, kl_ref = load(cfg.data)
  local function loss_batch(its, kls, r, klr, batch)
    local idx = batch.indices
    local b = {
      policy_logps = lm.sequence_logps(model, batch),
      reference_logps = pick(r, idx),
      labels = batch.labels,
      kl_policy_logps = E.no_grad(sums, model, kls, idx),
      kl_reference_logps = pick(klr, idx),
    }
    return b
  end
  local evaluate
  if cfg.eval_data ~= "" then
    local e_items, e_kl, e_ref, e_klref = load(cfg.eval_data)
    evaluate = P.evaluator(e_items, cfg, function(batch)
      return loss(loss_batch(e_items, e_kl, e_ref, e_klref, batch), cfg)
    end)
  end
  local finish = P.start_report(cfg, model, tok)
  local result = P.fit(cfg, model, tok, items, function(batch)
    return loss(loss_batch(items, kl, ref, kl_ref, batch), cfg)
  end, evaluate)
  return finish and finish(result) or result
end

U.defaults = P.defaults
U.docs = P.docs
return U

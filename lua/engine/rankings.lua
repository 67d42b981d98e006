-- engine/rankings.lua — the plumbing of recipes that learn from K-wise
-- rankings with the policy's own log-probs and no reference model (RRHF):
-- the rankings, one batched forward over all K responses of a batch's
-- prompts, held-out evaluation, and engine.preference's before/after report
-- of the judge's score and the KL to the start. It defines no loss.
--
--   local R = require("engine.rankings")
--   train = function(cfg) return R.train(cfg, loss) end
--
-- Data: {"prompt","responses":[K strings],"ranks":[K integers]} (rank 1 is
-- the best, equal ranks tie), the same K on every line. A pairs file
-- {"prompt","chosen","rejected"} reads as rankings with K = 2 (chosen rank 1,
-- rejected rank 2), so training and held-out files may be either.
--
-- The batch the loss sees: (B,K) tensors, column k the prompt's k-th response:
--   logps    S, the sums of the completion tokens' log-probs (EOS included,
--            prompt excluded)
--   lengths  |y|, the completion token counts
--   ranks    the ranks
--   best     1 at each prompt's best response (the first of its rank-1
--            responses), 0 elsewhere
--   worst    1 at each prompt's worst response (the first of its
--            highest-ranked responses), 0 elsewhere
local E = require("engine")
local P = require("engine.preference")
local lm = require("engine.lm")
local fs = require("engine.fs")
local json = require("engine.json")

local R = {}

-- the first non-blank line of a data path (a file, or a directory's first
-- *.jsonl file in name order), or nil
local function first_line(path)
  if fs.is_dir(path) then
    local names = {}
    for _, name in ipairs(fs.list(path)) do -- sorted
      if name:sub(1, 1) ~= "." and name:match("%.jsonl$") then names[#names + 1] = name end
    end
    if #names == 0 then return nil end
    path = path .. "/" .. names[1]
  end
  local f = io.open(path, "r")
  if not f then return nil end
  for line in f:lines() do
    if line:find("%S") then
      f:close()
      return line
    end
  end
  f:close()
end

-- R.format(path) -> "rankings" when the data's first example has a
-- 'responses' field, else "pairs" (reading it then names any problem)
function R.format(path)
  local line = first_line(path)
  local ok, obj = pcall(json.decode, line or "", path)
  return (ok and type(obj) == "table" and obj.responses ~= nil) and "rankings" or "pairs"
end

-- R.read(path, tok, topts) -> ranking items (engine.data's tokenize_rankings),
-- from a rankings file or a pairs file (K = 2)
function R.read(path, tok, topts)
  if R.format(path) == "rankings" then
    return E.data.tokenize_rankings(E.data.read_jsonl(path, { format = "rankings" }), tok, topts)
  end
  local pairs = E.data.tokenize_pairs(E.data.read_jsonl(path, { format = "pairs" }), tok, topts)
  local items = { pad_id = pairs.pad_id }
  for i, it in ipairs(pairs) do
    items[i] = { prompt = it.prompt, responses = { it.chosen, it.rejected }, ranks = { 1, 2 }, source = it.source }
  end
  return items
end

-- (B,K) 0/1 masks of each row's first best- and first worst-ranked response
local function extremes(ranks)
  local best, worst = {}, {}
  for b, row in ipairs(ranks) do
    local lo, hi = 1, 1
    for k = 2, #row do
      if row[k] < row[lo] then lo = k end
      if row[k] > row[hi] then hi = k end
    end
    best[b], worst[b] = {}, {}
    for k = 1, #row do best[b][k], worst[b][k] = k == lo and 1 or 0, k == hi and 1 or 0 end
  end
  return best, worst
end

-- R.loss_batch(model, batch) -> the loss's batch (above) from a rankings
-- batch of engine.data (K*B rows, row (k-1)*B + i is response k of prompt i):
-- one forward over all of its rows
function R.loss_batch(model, batch)
  local B, K = batch.size, batch.k
  local S, n = lm.sequence_logps(model, batch)
  local best, worst = extremes(batch.ranks:totable())
  return {
    logps = S:reshape({ K, B }):transpose(1, 2), lengths = n:reshape({ K, B }):transpose(1, 2),
    ranks = batch.ranks, best = E.tensor(best), worst = E.tensor(worst),
  }
end

-- R.best_nll(b) -> the token-mean NLL of the batch's best responses,
-- -Σ S_best / Σ |y_best| (a scalar tensor)
function R.best_nll(b)
  return -(b.logps * b.best):sum() / (b.lengths * b.best):sum()
end

-- R.metrics(b, scores) -> TRL-named metrics of (B,K) implicit rewards:
-- rewards/accuracies and rewards/margins over every ranked pair (rank_i <
-- rank_j: the fraction with score_i > score_j, the mean of score_i -
-- score_j), rewards/chosen and logps/chosen of the best responses,
-- rewards/rejected and logps/rejected of the worst. With K = 2 these are
-- engine.preference's pair metrics.
function R.metrics(b, scores)
  local s, r = scores:detach():totable(), E.is_tensor(b.ranks) and b.ranks:totable() or b.ranks
  local right, margin, n = 0, 0, 0
  for p, row in ipairs(r) do
    for i = 1, #row do
      for j = 1, #row do
        if row[i] < row[j] then
          local d = s[p][i] - s[p][j]
          right, margin, n = right + (d > 0 and 1 or 0), margin + d, n + 1
        end
      end
    end
  end
  local B = #r
  local function mean_at(x, mask) return (x:detach() * mask):sum():item() / B end
  return {
    ["rewards/accuracies"] = right / math.max(n, 1), ["rewards/margins"] = margin / math.max(n, 1),
    ["rewards/chosen"] = mean_at(scores, b.best), ["rewards/rejected"] = mean_at(scores, b.worst),
    ["logps/chosen"] = mean_at(b.logps, b.best), ["logps/rejected"] = mean_at(b.logps, b.worst),
  }
end

-- R.train(cfg, loss) -> train.fit's result (with result.report when
-- cfg.report ran): loss(b, cfg) -> scalar tensor, metrics, with b as above
function R.train(cfg, loss)
  E.set_threads(cfg.threads)
  E.manual_seed(cfg.seed)
  local model, tok = P.load_model(cfg.model)
  local topts = { max_length = cfg.max_length, max_prompt_length = cfg.max_prompt_length }
  local items = R.read(cfg.data, tok, topts)
  local evaluate
  if cfg.eval_data and cfg.eval_data ~= "" then
    evaluate = P.evaluator(R.read(cfg.eval_data, tok, topts), cfg, function(batch)
      return loss(R.loss_batch(model, batch), cfg)
    end)
  end
  local finish = P.start_report(cfg, model, tok)
  local result = P.fit(cfg, model, tok, items, function(batch)
    return loss(R.loss_batch(model, batch), cfg)
  end, evaluate)
  return finish and finish(result) or result
end

R.defaults = P.defaults
R.docs = P.docs
return R

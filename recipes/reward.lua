-- recipes/reward.lua — the InstructGPT reward model (Ouyang et al. 2022, Eq. 1):
-- a scalar head read at the last token; for each prompt, every pair of its
-- K ranked responses (rank_i < rank_j: i is better; ties skipped) costs
--   -log σ( r_θ(x, y_i) - r_θ(x, y_j) ),
-- averaged over the prompt's pairs, then over prompts. All C(K,2)
-- comparisons of a prompt come from one forward pass over its K responses.
-- Pairs are the case K = 2. The saved model (OUT/final) is what RL recipes load.
--   engine recipes/reward.lua [--data=rankings.jsonl] [--lr=1e-4]
local E = require("engine")
local P = require("engine.preference")
local train = require("engine.train")

-- b.rewards (B,K), b.ranks (B,K) as a tensor or table
local function loss(b, cfg)
  local ranks = E.is_tensor(b.ranks) and b.ranks:totable() or b.ranks
  local B, K = b.rewards:shape()[1], b.rewards:shape()[2]
  local total, prompts, right, margin, pairs = nil, 0, 0, 0, 0
  local values = b.rewards:detach():totable()
  for p = 1, B do
    local terms = {}
    local row = b.rewards:narrow(1, p, 1)
    for i = 1, K do
      for j = 1, K do
        if ranks[p][i] < ranks[p][j] then
          terms[#terms + 1] = -E.logsigmoid(row:narrow(2, i, 1) - row:narrow(2, j, 1))
          local d = values[p][i] - values[p][j]
          right, margin, pairs = right + (d > 0 and 1 or 0), margin + d, pairs + 1
        end
      end
    end
    if #terms > 0 then
      local mean = E.cat(terms, 1):mean()
      total, prompts = total and total + mean or mean, prompts + 1
    end
  end
  if not total then error("reward: no ranked pair in the batch (all responses tied)", 0) end
  return total / prompts, { accuracy = right / pairs, margin = margin / pairs }
end

local function run(cfg)
  E.set_threads(cfg.threads)
  E.manual_seed(cfg.seed)
  local model = assert(E.models.load(cfg.model, { value_head = { seed = cfg.seed } }))
  local tok = assert(E.tokenizer.load(cfg.model))
  local topts = { max_length = cfg.max_length, max_prompt_length = cfg.max_prompt_length }
  local function items(path)
    return E.data.tokenize_rankings(E.data.read_jsonl(path, { format = "rankings" }), tok, topts)
  end
  local function batch_loss(batch)
    local B, K = batch.size, batch.ranks:shape()[2]
    local r = model:score(batch.ids, { attention_mask = batch.attention_mask }) -- (K*B), row (k-1)*B + i
    return loss({ rewards = r:reshape({ K, B }):transpose(1, 2), ranks = batch.ranks }, cfg)
  end
  local evaluate
  if cfg.eval_data ~= "" then evaluate = P.evaluator(items(cfg.eval_data), cfg, batch_loss) end
  local params = P.trainable(model, cfg)
  if cfg.lora_rank > 0 then -- the fresh head trains with the adapters
    for _, p in ipairs(model:parameters()) do
      if p.name:match("^score%.") then
        p.tensor:requires_grad(true)
        params[#params + 1] = p
      end
    end
  end
  return train.fit {
    cfg = cfg, model = model, evaluate = evaluate,
    loader = E.data.Loader(items(cfg.data), { batch_size = cfg.batch_size, seed = cfg.seed }),
    optimizer = E.optim.AdamW(params, { lr = cfg.lr, weight_decay = cfg.weight_decay }),
    schedule = E.optim.schedule { kind = "linear", warmup_steps = math.min(cfg.warmup_steps, cfg.max_steps),
      total_steps = cfg.max_steps, lr = cfg.lr },
    loss = function(batch)
      local L, m = batch_loss(batch)
      return L, m, batch.attention_mask:sum():item()
    end,
    final = function(dir) model:save(dir); tok:save(dir) end,
  }
end

return {
  name = "reward",
  description = "InstructGPT reward model from K-wise rankings (Ouyang et al. 2022)",
  defaults = P.defaults { data = P.default_data .. "/rankings_train.jsonl", eval_data = P.default_data .. "/rankings_eval.jsonl",
    batch_size = 8, lr = 3e-4, out = "runs/reward", report = false },
  docs = P.docs { data = "K-wise rankings (JSONL: prompt, responses, ranks)", eval_data = "held-out rankings ('' for none)",
    batch_size = "prompts per step (each with its K responses)" },
  loss = loss,
  train = run,
}

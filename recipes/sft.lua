-- recipes/sft.lua — supervised fine-tuning (InstructGPT's SFT step, Ouyang
-- et al. 2022, Sec. 3.5): the token-mean negative log-likelihood of the
-- completion tokens (the whole text when there is no prompt),
--   L = -Σ_t m_t log πθ(y_t | x, y_<t) / Σ_t m_t
--   engine recipes/sft.lua [--data=FILE.jsonl] [--lr=1e-3]
local E = require("engine")
local P = require("engine.preference")
local lm = require("engine.lm")
local train = require("engine.train")

-- batch: token_logps (R,T) of the scored tokens and their mask (R,T)
local function loss(b, cfg)
  local n = b.mask:sum()
  local L = -(b.token_logps * b.mask):sum() / E.maximum(n, 1)
  return L, { nll_loss = L:item() }
end

local function run(cfg)
  E.set_threads(cfg.threads)
  E.manual_seed(cfg.seed)
  local model = assert(E.models.load(cfg.model))
  local tok = assert(E.tokenizer.load(cfg.model))
  local opts = { max_length = cfg.max_length, max_prompt_length = cfg.max_prompt_length }
  local items = E.data.tokenize_sft(E.data.read_jsonl(cfg.data, { format = "sft" }), tok, opts)
  local function batch_loss(batch)
    local lp, mask = lm.token_logps(model, batch)
    local L, m = loss({ token_logps = lp, mask = mask }, cfg)
    return L, m, mask:sum():item()
  end
  local evaluate
  if cfg.eval_data ~= "" then
    local eval_items = E.data.tokenize_sft(E.data.read_jsonl(cfg.eval_data, { format = "sft" }), tok, opts)
    local eval_loader = E.data.Loader(eval_items, { batch_size = cfg.batch_size, shuffle = false, group_by_length = false })
    evaluate = function()
      local sum, n = 0, 0
      for _ = 1, eval_loader:num_batches() do
        local L, _, tokens = batch_loss(eval_loader:next())
        sum, n = sum + L:item() * tokens, n + tokens
      end
      return { loss = sum / math.max(n, 1) }
    end
  end
  return train.fit {
    cfg = cfg, model = model, loader = E.data.Loader(items, { batch_size = cfg.batch_size, seed = cfg.seed }),
    optimizer = E.optim.AdamW(P.trainable(model, cfg), { lr = cfg.lr, weight_decay = cfg.weight_decay }),
    schedule = E.optim.schedule { kind = "cosine", warmup_steps = math.min(cfg.warmup_steps, cfg.max_steps),
      total_steps = cfg.max_steps, lr = cfg.lr, min_lr = cfg.lr * 0.1 },
    loss = batch_loss, evaluate = evaluate,
    final = function(dir) model:save(dir); tok:save(dir) end,
  }
end

return {
  name = "sft",
  description = "supervised fine-tuning on demonstrations (InstructGPT step 1)",
  defaults = P.defaults { data = P.default_data .. "/sft_train.jsonl", eval_data = P.default_data .. "/sft_eval.jsonl",
    lr = 1e-3, out = "runs/sft", max_steps = 100, report = false },
  docs = P.docs { data = "demonstrations (JSONL: text, prompt/completion or messages)",
    eval_data = "held-out demonstrations ('' for none)" },
  loss = loss,
  train = run,
}

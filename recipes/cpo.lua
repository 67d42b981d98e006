-- recipes/cpo.lua — Contrastive Preference Optimization (Xu et al. 2024, Eq. 6):
--   L = -log σ( β (S_w - S_l) ) + λ · NLL,   NLL = -ΣS_w / Σ|y_w|
-- λ defaults to 2 (TRL's cpo_alpha is 1): on sums S the weight 1 - σ(β(S_w - S_l))
-- is largest where the chosen is the longer completion, and at λ = 1 the
-- default task's policy learned to never stop (no EOS in greedy completions)
-- and to misspell; λ = 2 keeps the NLL's anchor (judge 1.267 -> 1.403).
--   engine recipes/cpo.lua [--beta=0.1] [--lambda=2.0]
local E = require("engine")
local P = require("engine.preference")

local function loss(b, cfg)
  local pref = -E.logsigmoid(cfg.beta * (b.policy_chosen_logps - b.policy_rejected_logps)):mean()
  local nll = P.chosen_nll(b)
  local m = P.reward_metrics(b, cfg.beta * b.policy_chosen_logps, cfg.beta * b.policy_rejected_logps)
  m.nll_loss = nll:item()
  return pref + cfg.lambda * nll, m
end

return {
  name = "cpo",
  description = "Contrastive Preference Optimization (Xu et al. 2024)",
  defaults = P.defaults { beta = 0.1, lambda = 2.0, out = "runs/cpo" },
  docs = P.docs { beta = "β: scale of the log-likelihood difference", lambda = "λ: weight of the NLL term" },
  loss = loss,
  train = function(cfg) return P.train(cfg, loss, { reference = false }) end,
}

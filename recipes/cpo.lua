-- recipes/cpo.lua — Contrastive Preference Optimization (Xu et al. 2024, Eq. 6):
--   L = -log σ( β (S_w - S_l) ) + λ · NLL,   NLL = -ΣS_w / Σ|y_w|
--   engine recipes/cpo.lua [--beta=0.1] [--lambda=1.0]
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
  defaults = P.defaults { beta = 0.1, lambda = 1.0, out = "runs/cpo" },
  docs = P.docs { beta = "β: scale of the log-likelihood difference", lambda = "λ: weight of the NLL term" },
  loss = loss,
  train = function(cfg) return P.train(cfg, loss, { reference = false }) end,
}

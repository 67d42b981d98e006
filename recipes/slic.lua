-- recipes/slic.lua — SLiC-HF, the calibration loss with regularisation
-- (Zhao et al. 2023, Eq. 1):  L = max(0, δ - S_w + S_l) + λ · NLL
--   engine recipes/slic.lua [--delta=1.0] [--lambda=0.1]
local E = require("engine")
local P = require("engine.preference")

local function loss(b, cfg)
  local cal = E.relu(cfg.delta - b.policy_chosen_logps + b.policy_rejected_logps):mean()
  local nll = P.chosen_nll(b)
  local m = P.reward_metrics(b, b.policy_chosen_logps, b.policy_rejected_logps)
  m.nll_loss = nll:item()
  return cal + cfg.lambda * nll, m
end

return {
  name = "slic",
  description = "SLiC-HF calibration loss (Zhao et al. 2023)",
  defaults = P.defaults { delta = 1.0, lambda = 0.1, out = "runs/slic" },
  docs = P.docs { delta = "δ: the margin between chosen and rejected log-likelihoods",
    lambda = "λ: weight of the NLL term" },
  loss = loss,
  train = function(cfg) return P.train(cfg, loss, { reference = false }) end,
}

-- recipes/slic.lua — SLiC-HF, the calibration loss with regularisation
-- (Zhao et al. 2023, Eq. 1):  L = max(0, δ - S_w + S_l) + λ · NLL
-- S are sums over a completion's tokens, so δ is in nats per sequence: with
-- δ = 1 only pairs whose chosen is the longer completion are active (on the
-- default task they are 11.6 tokens longer on average), which teaches the
-- policy never to stop. δ = 20 keeps most pairs active with no length skew.
-- The paper's regulariser is a sequence log-likelihood; NLL here is a token
-- mean, so λ = 40 is a weight of about 0.5 per sequence of ~80 tokens.
--   engine recipes/slic.lua [--delta=20] [--lambda=40]
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
  defaults = P.defaults { delta = 20.0, lambda = 40.0, out = "runs/slic" },
  docs = P.docs { delta = "δ: the margin between chosen and rejected log-likelihoods (sums, nats)",
    lambda = "λ: weight of the NLL term (a token mean)" },
  loss = loss,
  train = function(cfg) return P.train(cfg, loss, { reference = false }) end,
}

-- recipes/orpo.lua — Odds Ratio Preference Optimization (Hong et al. 2024, Eq. 6-7):
--   log odds(y) = A - log(1 - e^A),  A = S/|y| (the mean token log-prob)
--   L = NLL - λ log σ( log odds(y_w) - log odds(y_l) )
-- log(1 - e^A) is computed without cancellation: near 0 (A > -log 2) as
-- A/2 + log 2 + log(-tanh(A/2)) - ½ log(1 - tanh²(A/2)), since
-- 1 - e^A = -2 e^{A/2} sinh(A/2); below that as log(1 - e^A) directly.
--   engine recipes/orpo.lua [--lambda=0.1]
local E = require("engine")
local P = require("engine.preference")

-- log(1 - e^A) for A < 0; each branch sees only inputs in its own range,
-- so the branch not taken has a finite gradient (0 after where)
local LOG2 = math.log(2)
local function log1m_exp(A)
  local a = E.clamp(A, -LOG2, -1e-30) * 0.5
  local t = E.tanh(a)
  local near = a + LOG2 + E.log(-t) - 0.5 * E.log(1 - t * t)
  local far = E.log(1 - E.exp(E.minimum(A, -LOG2)))
  return E.where(E.relu(A + LOG2), near, far) -- relu(A + log 2) > 0 iff A > -log 2
end

local function loss(b, cfg)
  local A_w = b.policy_chosen_logps / b.chosen_lengths
  local A_l = b.policy_rejected_logps / b.rejected_lengths
  local log_odds = (A_w - A_l) - (log1m_exp(A_w) - log1m_exp(A_l))
  local ratio = -E.logsigmoid(log_odds):mean()
  local nll = P.chosen_nll(b)
  local m = P.reward_metrics(b, cfg.lambda * A_w, cfg.lambda * A_l)
  m.nll_loss = nll:item()
  m.log_odds_ratio = log_odds:detach():mean():item()
  return nll + cfg.lambda * ratio, m
end

return {
  name = "orpo",
  description = "Odds Ratio Preference Optimization (Hong et al. 2024)",
  defaults = P.defaults { lambda = 0.1, out = "runs/orpo" },
  docs = P.docs { lambda = "λ: weight of the odds-ratio term" },
  loss = loss,
  train = function(cfg) return P.train(cfg, loss, { reference = false }) end,
}

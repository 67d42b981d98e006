-- recipes/rdpo.lua — DPO with a length regulariser (R-DPO, Park et al. 2024, Eq. 9):
--   L = -log σ( β h + α (|y_w| - |y_l|) ),   h = (S_w - R_w) - (S_l - R_l)
--   engine recipes/rdpo.lua [--beta=0.1] [--alpha=0.01]
local E = require("engine")
local P = require("engine.preference")

local function loss(b, cfg)
  local r_w = b.policy_chosen_logps - b.reference_chosen_logps
  local r_l = b.policy_rejected_logps - b.reference_rejected_logps
  local L = -E.logsigmoid(cfg.beta * (r_w - r_l) + cfg.alpha * (b.chosen_lengths - b.rejected_lengths))
  return L:mean(), P.reward_metrics(b, cfg.beta * r_w, cfg.beta * r_l)
end

return {
  name = "rdpo",
  description = "DPO with a length regulariser (Park et al. 2024)",
  defaults = P.defaults { beta = 0.1, alpha = 0.01, out = "runs/rdpo" },
  docs = P.docs { beta = "β: strength of the implicit KL constraint",
    alpha = "α: weight of the length difference |y_w| - |y_l|" },
  loss = loss,
  train = function(cfg) return P.train(cfg, loss, { reference = true }) end,
}

-- recipes/dpo.lua — Direct Preference Optimization (Rafailov et al. 2023, Eq. 7):
--   L = -E log σ( β log πθ(y_w|x)/π_ref(y_w|x) - β log πθ(y_l|x)/π_ref(y_l|x) )
-- with h = (S_w - R_w) - (S_l - R_l) (S policy, R reference sums of log-probs):
--   sigmoid  -(1-ε) log σ(βh) - ε log σ(-βh)          (ε > 0: conservative DPO)
--   hinge    max(0, 1 - βh)                          (SLiC-style, Zhao et al. 2023)
--   robust   (-(1-ε) log σ(βh) + ε log σ(-βh)) / (1-2ε) (Chowdhury et al. 2024)
--   engine recipes/dpo.lua [--beta=0.1] [--loss_type=sigmoid] [--label_smoothing=0]
local E = require("engine")
local P = require("engine.preference")

local function loss(b, cfg)
  local beta, eps = cfg.beta, cfg.label_smoothing or 0
  local r_w = b.policy_chosen_logps - b.reference_chosen_logps
  local r_l = b.policy_rejected_logps - b.reference_rejected_logps
  local h = r_w - r_l
  local L
  if cfg.loss_type == "hinge" then
    L = E.relu(1 - beta * h)
  elseif cfg.loss_type == "robust" then
    L = (-(1 - eps) * E.logsigmoid(beta * h) + eps * E.logsigmoid(-beta * h)) / (1 - 2 * eps)
  elseif cfg.loss_type == "sigmoid" or cfg.loss_type == nil then
    L = -(1 - eps) * E.logsigmoid(beta * h) - eps * E.logsigmoid(-beta * h)
  else
    error("dpo: unknown loss_type '" .. tostring(cfg.loss_type) .. "' (sigmoid, hinge or robust)", 0)
  end
  return L:mean(), P.reward_metrics(b, beta * r_w, beta * r_l)
end

return {
  name = "dpo",
  description = "Direct Preference Optimization (Rafailov et al. 2023)",
  defaults = P.defaults { beta = 0.1, label_smoothing = 0.0, loss_type = "sigmoid", out = "runs/dpo" },
  docs = P.docs {
    beta = "β: strength of the implicit KL constraint to the reference",
    label_smoothing = "ε: assumed probability that a preference label is flipped (cDPO, robust)",
    loss_type = "sigmoid (DPO), hinge, or robust",
  },
  loss = loss,
  train = function(cfg) return P.train(cfg, loss, { reference = true }) end,
}

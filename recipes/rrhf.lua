-- recipes/rrhf.lua — Rank Responses to align Human Feedback (Yuan et al. 2023, Eq. 2-4)
-- on pairs, with length-normalised scores A = S/|y|:
--   L = max(0, A_l - A_w) + λ · NLL     (NLL of the chosen, the best, response)
-- For K responses ranked i better than j, the ranking term is the sum over all
-- such pairs of max(0, A_j - A_i): rrhf.ranking_loss below.
--   engine recipes/rrhf.lua [--lambda=1.0]
local E = require("engine")
local P = require("engine.preference")

local function loss(b, cfg)
  local A_w = b.policy_chosen_logps / b.chosen_lengths
  local A_l = b.policy_rejected_logps / b.rejected_lengths
  local rank = E.relu(A_l - A_w):mean()
  local nll = P.chosen_nll(b)
  local m = P.reward_metrics(b, A_w, A_l)
  m.nll_loss = nll:item()
  return rank + cfg.lambda * nll, m
end

-- K-wise: scores (B,K) length-normalised log-probs, ranks (B,K) (1 best, ties
-- equal), best_nll the NLL of each prompt's best response (scalar). Per
-- prompt Σ_{rank_i < rank_j} max(0, A_j - A_i), mean over prompts, + λ·best_nll.
local function ranking_loss(scores, ranks, best_nll, cfg)
  local B, K = scores:shape()[1], scores:shape()[2]
  local r = ranks:totable()
  local terms = {}
  for b = 1, B do
    for i = 1, K do
      for j = 1, K do
        if r[b][i] < r[b][j] then
          terms[#terms + 1] = E.relu(scores:narrow(1, b, 1):narrow(2, j, 1) - scores:narrow(1, b, 1):narrow(2, i, 1))
        end
      end
    end
  end
  local total = #terms > 0 and E.cat(terms, 1):sum() or scores:sum() * 0
  return total / B + cfg.lambda * best_nll
end

return {
  name = "rrhf",
  description = "RRHF ranking loss (Yuan et al. 2023)",
  defaults = P.defaults { lambda = 1.0, out = "runs/rrhf" },
  docs = P.docs { lambda = "λ: weight of the NLL of the best response" },
  loss = loss,
  ranking_loss = ranking_loss,
  train = function(cfg) return P.train(cfg, loss, { reference = false }) end,
}

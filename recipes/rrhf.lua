-- recipes/rrhf.lua — Rank Responses to align Human Feedback (Yuan et al. 2023, Eq. 2-4)
-- with the paper's length-normalised scores A = S/|y|. For K responses of a
-- prompt, ranked i better than j when rank_i < rank_j:
--   L = Σ_{rank_i < rank_j} max(0, A_j - A_i) + λ · NLL(best response)
-- K-wise data (a rankings file) trains through engine.rankings, all K
-- responses in one forward; on pairs (K = 2) the loss is
--   L = max(0, A_l - A_w) + λ · NLL,   NLL = -ΣS_w / Σ|y_w|
-- The default trains on the bundled K = 4 rankings and measures accuracy on
-- held-out pairs (each prompt's best and worst of the same 4 samples). λ: the
-- paper's fine-tuning term is a sum over tokens (λ ≈ |y| ≈ 80 in this token
-- mean), its code's a mean (λ ≈ 1); λ = 10 sits between. At λ = 1 the policy
-- stopped emitting EOS: low-ranked samples are more often cut off at the
-- sampling limit (37% of rank 4, 22% of rank 1), and the hinge pushes down
-- their every token, the EOS after the cut included.
--   engine recipes/rrhf.lua [--lambda=10] [--lr=2e-4] [--data=rankings_or_pairs.jsonl]
local E = require("engine")
local P = require("engine.preference")
local R = require("engine.rankings")

-- pairs: the batch of engine.preference
local function loss(b, cfg)
  local A_w = b.policy_chosen_logps / b.chosen_lengths
  local A_l = b.policy_rejected_logps / b.rejected_lengths
  local rank = E.relu(A_l - A_w):mean()
  local nll = P.chosen_nll(b)
  local m = P.reward_metrics(b, A_w, A_l)
  m.nll_loss = nll:item()
  return rank + cfg.lambda * nll, m
end

-- K-wise: scores A (B,K), ranks (B,K) tensor (1 best, ties equal), best_nll
-- the NLL of each prompt's best response (scalar). Per prompt
-- Σ_{rank_i < rank_j} max(0, A_j - A_i), mean over prompts, + λ·best_nll.
local function ranking_loss(scores, ranks, best_nll, cfg)
  local B, K = scores:shape()[1], scores:shape()[2]
  local r = ranks:to(scores:dtype())
  -- better[b,i,j] = 1 when rank_i < rank_j;  hinge[b,i,j] = max(0, A_j - A_i)
  local better = E.where(E.relu(r:reshape({ B, 1, K }) - r:reshape({ B, K, 1 })), 1, 0):to(scores:dtype())
  local hinge = E.relu(scores:reshape({ B, 1, K }) - scores:reshape({ B, K, 1 }))
  return (hinge * better):sum() / B + cfg.lambda * best_nll
end

-- K-wise: the batch of engine.rankings (logps, lengths, ranks, best, worst)
local function kwise_loss(b, cfg)
  local A = b.logps / b.lengths
  local nll = R.best_nll(b)
  local m = R.metrics(b, A)
  m.nll_loss = nll:item()
  return ranking_loss(A, b.ranks, nll, cfg), m
end

return {
  name = "rrhf",
  description = "RRHF ranking loss (Yuan et al. 2023)",
  defaults = P.defaults { lambda = 10.0, lr = 2e-4, out = "runs/rrhf",
    data = P.default_data .. "/rankings_train.jsonl", eval_data = P.default_data .. "/pairs_eval.jsonl" },
  docs = P.docs { lambda = "λ: weight of the NLL of the best response",
    data = "training rankings (JSONL: prompt, responses, ranks) or pairs (prompt, chosen, rejected)",
    eval_data = "held-out rankings or pairs ('' for none)", batch_size = "prompts per step (each with its K responses)" },
  loss = loss,
  ranking_loss = ranking_loss,
  kwise_loss = kwise_loss,
  train = function(cfg)
    local function kwise(path) return path ~= "" and R.format(path) == "rankings" end
    if kwise(cfg.data) or kwise(cfg.eval_data) then return R.train(cfg, kwise_loss) end
    return P.train(cfg, loss, { reference = false })
  end,
}

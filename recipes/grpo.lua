-- recipes/grpo.lua — Group Relative Policy Optimization (Shao et al. 2024,
-- DeepSeekMath Eq. 3), critic-free: G responses per prompt, each scored,
--   A_i  = (r_i - mean(r_group)) / (std(r_group) + 1e-4)   on every token of response i
--   L    = mean_i 1/|y_i| Σ_t [ max(-A_i ρ_t, -A_i clip(ρ_t, 1-ε, 1+ε)) + β D_t ]
--   D_t  = π_ref/π - log(π_ref/π) - 1   (an unbiased estimate of KL(π || π_ref))
--   engine recipes/grpo.lua [--group_size=4] [--kl_coef=0.04] (kl_coef 0: no KL term)
local E = require("engine")
local rl = require("engine.rl")
local RT = require("engine.rl_train")

local function loss(b, cfg)
  local n = b.mask:sum():item()
  local pg_tok, won = rl.clipped_pg(b.logprobs, b.old_logprobs, b.advantages, cfg.cliprange)
  local log_ratio = b.ref_logprobs:detach() - b.logprobs
  local kl_tok = E.exp(log_ratio) - log_ratio - 1
  local per_seq = ((pg_tok + cfg.kl_coef * kl_tok) * b.mask):sum(2) / E.maximum(b.mask:sum(2), 1)
  local m = rl.policy_metrics(b.logprobs, b.old_logprobs, won, b.mask, n)
  m.pg_loss = rl.masked_mean(pg_tok, b.mask, n):item()
  m["policy/kl_ref"] = rl.masked_mean(kl_tok, b.mask, n):item()
  return per_seq:mean(), m
end

local function advantages(roll, cfg)
  local G = cfg.group_size
  local A = rl.grpo_advantages(roll.scores:reshape({ roll.B // G, G })):reshape({ roll.B, 1 })
  roll.advantages = A * roll.resp_mask
end

return {
  name = "grpo",
  description = "Group Relative Policy Optimization, critic-free (Shao et al. 2024)",
  defaults = RT.defaults { group_size = 4, kl_coef = 0.04, cliprange = 0.2, ppo_epochs = 2, out = "runs/grpo" },
  callables = { reward = true },
  docs = RT.docs { group_size = "G: responses sampled per prompt", cliprange = "ε: the ratio's clip range",
    kl_coef = "β: weight of the KL(π || π_ref) term in the loss (0: none)" },
  loss = loss, advantages = rl.grpo_advantages,
  train = function(cfg)
    return RT.train(cfg, { group_size = cfg.group_size, advantages = advantages, loss = loss })
  end,
}
